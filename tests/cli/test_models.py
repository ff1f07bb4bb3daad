"""`tokenadmin models`: platform and organization rates (exact decimals), model access and
upstreams (keys from standard input, never printed); `tokenadmin personal-key`: a user's
own keys, the secret printed once."""

from __future__ import annotations

import json

from tests.cli.conftest import Tokenadmin


def test_rates_access_and_upstream_from_the_command_line(tokenadmin: Tokenadmin) -> None:
    org = tokenadmin.org()
    saved = tokenadmin.json(
        "models", "set", "gpt-small", "--prompt-rate", "0.5", "--completion-rate", "1.50",
        "--upstream-base-url", "https://llm.example/v1", "--upstream-api-key-stdin",
        input="sk-platform-secret\n",
    )  # fmt: skip
    assert (saved["prompt_rate"], saved["completion_rate"]) == ("0.5", "1.5")
    assert saved["upstream_api_key_set"] is True
    tokenadmin("models", "set", "gpt-large", "--prompt-rate", "2", "--completion-rate", "6")
    listed = tokenadmin("models", "list")
    assert "gpt-small" in listed.stdout
    assert "sk-platform-secret" not in listed.stdout
    assert [m["name"] for m in tokenadmin.json("models", "list")] == ["gpt-large", "gpt-small"]

    own = tokenadmin.json(
        "models", "set", "gpt-large", "--org", "Acme", "--prompt-rate", "1.25",
        "--completion-rate", "3", "--max-output-tokens", "4K",
    )  # fmt: skip
    assert own["org_id"] == org
    assert own["max_output_tokens"] == 4_000
    access = tokenadmin.json("models", "access", "--org", "Acme", "--allow", "gpt-large")
    assert access["allowed_models"] == ["gpt-large"]
    upstream = tokenadmin.json(
        "models", "upstream", "--org", org, "--base-url", "https://ours.example/v1",
        "--api-key-stdin", input="sk-org\n",
    )  # fmt: skip
    assert upstream == {"base_url": "https://ours.example/v1", "api_key_set": True}

    merged = tokenadmin.json("models", "list", "--org", "Acme")
    models = {m["name"]: m for m in merged["models"]}
    assert (models["gpt-large"]["source"], models["gpt-large"]["prompt_rate"]) == (
        "organization",
        "1.25",
    )
    assert models["gpt-small"]["allowed"] is False
    assert merged["upstream"]["api_key_set"] is True
    shown = tokenadmin("models", "list", "--org", "Acme")
    assert "Allowed: gpt-large." in shown.stdout
    assert "sk-org" not in shown.stdout

    tokenadmin("models", "delete", "gpt-large", "--org", "Acme")
    assert tokenadmin.json("models", "access", "--org", "Acme", "--all")["allowed_models"] is None
    cleared = tokenadmin.json("models", "upstream", "--org", "Acme", "--clear")
    assert cleared == {"base_url": None, "api_key_set": False}
    models = {m["name"]: m for m in tokenadmin.json("models", "list", "--org", "Acme")["models"]}
    assert models["gpt-large"]["source"] == "platform"
    assert all(m["allowed"] for m in models.values())


def test_bad_rates_names_and_options_exit_2_with_their_codes(tokenadmin: Tokenadmin) -> None:
    tokenadmin.org()
    for rate in ("-1", "0.1234567", "lots", "1e3", "2000000"):
        refused = tokenadmin(
            "models", "set", "m", "--prompt-rate", rate, "--completion-rate", "1", "--json",
            expect=2,
        )  # fmt: skip
        assert json.loads(refused.stdout)["error"]["code"] == "invalid_rate", rate
    bad_name = tokenadmin("models", "set", "a b", "--prompt-rate", "1", "--completion-rate", "1",
                          expect=2)  # fmt: skip
    assert "invalid_model_name" in bad_name.stderr
    assert "model_not_found" in tokenadmin("models", "delete", "m", expect=2).stderr
    assert "invalid_request" in tokenadmin("models", "access", "--org", "Acme", expect=2).stderr
    both = tokenadmin("models", "upstream", "--org", "Acme", "--clear", "--base-url", "https://x",
                      expect=2)  # fmt: skip
    assert "invalid_request" in both.stderr
    empty = tokenadmin("models", "upstream", "--org", "Acme", "--base-url", "https://x.example",
                       "--api-key-stdin", input="\n", expect=2)  # fmt: skip
    assert "invalid_request" in empty.stderr
    assert tokenadmin.json("models", "list") == []


def test_personal_keys_are_created_once_listed_and_revoked(tokenadmin: Tokenadmin) -> None:
    org = tokenadmin.org()
    tokenadmin.user(org, "ana@example.com")
    created = tokenadmin("personal-key", "create", "--user", "ana@example.com", "--name", "laptop")
    secret = created.stdout.strip()
    assert secret.startswith("ta_")
    assert "shown only this once" in created.stderr
    listed = tokenadmin.json("personal-key", "list", "--user", "ana@example.com")
    assert [k["name"] for k in listed] == ["laptop"]
    assert secret not in json.dumps(listed)
    revoked = tokenadmin.json(
        "personal-key", "revoke", listed[0]["id"], "--user", "ana@example.com"
    )
    assert revoked["revoked_at"] is not None
    assert (
        "invalid_request"
        in tokenadmin(
            "personal-key", "revoke", "nope", "--user", "ana@example.com", expect=2
        ).stderr
    )
    assert (
        "user_not_found"
        in tokenadmin(
            "personal-key", "create", "--user", "zed@example.com", "--name", "x", expect=2
        ).stderr
    )
