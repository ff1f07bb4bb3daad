"""The model catalog through the API: the platform's default rates (operators), an
organization's own rates over them, which models it may use and its upstream (its
administrators and operators), exact decimal rates, and write-only upstream keys."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import Api, funded_org
from tests.scenarios import error_of, journal, org_api

MODELS = "/v1/models"


def _models(org_id: str) -> str:
    return f"/v1/organizations/{org_id}/models"


async def _put(api: Api, path: str, body: dict[str, Any], expect: int = 200) -> Any:
    return (await api.call("PUT", path, json=body, expect=expect)).json()


async def _platform(api: Api) -> None:
    """Two platform models: gpt-small (0.5 / 1.5, with its own upstream) and gpt-large."""
    await _put(
        api,
        f"{MODELS}/gpt-small",
        {
            "prompt_rate": "0.5",
            "completion_rate": "1.5",
            "upstream_base_url": "https://llm.example/v1",
            "upstream_api_key": "sk-secret-small",
        },
    )
    await _put(api, f"{MODELS}/gpt-large", {"prompt_rate": 2, "completion_rate": "6.25"})


def _by_name(listed: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in listed["models"]}


async def test_operators_keep_platform_rates_exactly_and_never_show_the_upstream_key(
    api: Api,
) -> None:
    await _platform(api)
    listed = await api.get(MODELS)
    assert [m["name"] for m in listed] == ["gpt-large", "gpt-small"]
    small = listed[1]
    assert (small["prompt_rate"], small["completion_rate"]) == ("0.5", "1.5")
    assert small["upstream_base_url"] == "https://llm.example/v1"
    assert small["upstream_api_key_set"] is True
    assert small["org_id"] is None
    assert (listed[0]["prompt_rate"], listed[0]["completion_rate"]) == ("2", "6.25")
    assert listed[0]["upstream_api_key_set"] is False
    assert "sk-secret" not in str(listed)

    # Left out, the stored key stays; null clears it.
    kept = await _put(
        api,
        f"{MODELS}/gpt-small",
        {
            "prompt_rate": "0.25",
            "completion_rate": 1,
            "upstream_base_url": "https://llm.example/v1",
        },
    )
    assert kept["upstream_api_key_set"] is True
    assert kept["prompt_rate"] == "0.25"
    cleared = await _put(
        api,
        f"{MODELS}/gpt-small",
        {
            "prompt_rate": "0.25",
            "completion_rate": 1,
            "upstream_api_key": None,
            "upstream_base_url": "https://llm.example/v1",
        },
    )
    assert cleared["upstream_api_key_set"] is False

    removed = (await api.call("DELETE", f"{MODELS}/gpt-large", expect=200)).json()
    assert removed["name"] == "gpt-large"
    assert [m["name"] for m in await api.get(MODELS)] == ["gpt-small"]
    error_of(await api.call("DELETE", f"{MODELS}/gpt-large"), 404, "model_not_found")


@pytest.mark.parametrize(
    ("rate", "fragment"),
    [
        (0.1, "send it as text"),
        (-1, "negative"),
        ("-0.5", "negative"),
        ("1.1234567", "decimal places"),
        ("abc", "not a rate"),
        ("1e3", "not a rate"),
        (True, "true or false"),
        (2_000_000, "largest rate"),
        ("NaN", "not a rate"),
        (None, "a rate is a number"),
    ],
)
async def test_rates_that_are_not_exact_small_decimals_are_refused_as_invalid_rate(
    api: Api, rate: Any, fragment: str
) -> None:
    response = await api.call(
        "PUT", f"{MODELS}/m", json={"prompt_rate": rate, "completion_rate": "1"}
    )
    details = error_of(response, 422, "invalid_rate")
    assert details["errors"][0]["field"] == "prompt_rate"
    assert fragment in response.json()["error"]["message"]
    assert await api.get(MODELS) == []


async def test_exact_rates_in_text_integers_and_exact_fractions_are_accepted(api: Api) -> None:
    for rate, shown in (("0.000001", "0.000001"), (0.5, "0.5"), ("3.10", "3.1"), (0, "0")):
        saved = await _put(api, f"{MODELS}/m", {"prompt_rate": rate, "completion_rate": rate})
        assert (saved["prompt_rate"], saved["completion_rate"]) == (shown, shown)


async def test_an_organization_overrides_rates_chooses_models_and_sets_its_upstream(
    api: Api,
) -> None:
    await _platform(api)
    org_id = await funded_org(api)
    admin = await org_api(api, org_id, "admin")

    merged = await admin.get(_models(org_id))
    assert merged["allowed_models"] is None
    assert merged["upstream"] == {"base_url": None, "api_key_set": False}
    models = _by_name(merged)
    assert models["gpt-small"] == {
        "name": "gpt-small",
        "prompt_rate": "0.5",
        "completion_rate": "1.5",
        "source": "platform",
        "allowed": True,
        "max_output_tokens": None,
        "upstream_configured": True,
    }
    assert models["gpt-large"]["upstream_configured"] is False

    own = await _put(
        admin,
        f"{_models(org_id)}/gpt-large",
        {"prompt_rate": "1.75", "completion_rate": "3", "max_output_tokens": 4096},
    )
    assert own["org_id"] == org_id
    await _put(admin, f"/v1/organizations/{org_id}/model-access", {"allowed": ["gpt-large"]})
    upstream = await _put(
        admin,
        f"/v1/organizations/{org_id}/upstream",
        {"base_url": "https://ours.example/v1", "api_key": "sk-org-secret"},
    )
    assert upstream == {"base_url": "https://ours.example/v1", "api_key_set": True}

    merged = await admin.get(_models(org_id))
    models = _by_name(merged)
    assert merged["allowed_models"] == ["gpt-large"]
    assert merged["upstream"] == {"base_url": "https://ours.example/v1", "api_key_set": True}
    large = models["gpt-large"]
    assert (large["prompt_rate"], large["completion_rate"], large["source"]) == (
        "1.75",
        "3",
        "organization",
    )
    assert large["max_output_tokens"] == 4096
    assert large["upstream_configured"] is True  # the organization's upstream
    assert models["gpt-small"]["allowed"] is False
    assert "sk-org-secret" not in str(merged)

    # The base URL alone changes it; the key stays until cleared.
    kept = await _put(
        admin, f"/v1/organizations/{org_id}/upstream", {"base_url": "https://two.example/v1"}
    )
    assert kept == {"base_url": "https://two.example/v1", "api_key_set": True}
    none = await _put(admin, f"/v1/organizations/{org_id}/upstream", {"base_url": None})
    assert none == {"base_url": None, "api_key_set": False}

    # Every change is journaled, without the keys.
    actions = [e["action"] for e in await journal(api, org_id)]
    assert {"model_set", "model_access_changed", "upstream_changed"} <= set(actions)
    assert "sk-org-secret" not in str(await journal(api, org_id))

    await _put(admin, f"/v1/organizations/{org_id}/model-access", {"allowed": None})
    await admin.call("DELETE", f"{_models(org_id)}/gpt-large", expect=200)
    models = _by_name(await admin.get(_models(org_id)))
    assert models["gpt-large"]["source"] == "platform"
    assert models["gpt-large"]["prompt_rate"] == "2"
    assert all(m["allowed"] for m in models.values())


async def test_who_may_read_and_change_an_organizations_models(api: Api) -> None:
    await _platform(api)
    org_id = await funded_org(api)
    other_id = await funded_org(api)
    member = await api.user(org_id, "mia@example.com")
    created = await api.post(f"/v1/users/{member['id']}/api-keys", {"name": "laptop"}, expect=201)
    own_key = api.as_key(created["key"])
    reader = await org_api(api, org_id, "read")
    stranger = await org_api(api, other_id, "admin")
    rate = {"prompt_rate": "1", "completion_rate": "1"}

    # Anyone of the organization reads its models (a member with their own key too).
    for caller in (own_key, reader, api):
        assert len((await caller.get(_models(org_id)))["models"]) == 2
    error_of(await stranger.call("GET", _models(org_id)), 404, "not_found")
    # Only its administrators and operators change them.
    for caller in (own_key, reader):
        error_of(await caller.call("PUT", f"{_models(org_id)}/x", json=rate), 403, "forbidden")
        error_of(
            await caller.call(
                "PUT", f"/v1/organizations/{org_id}/model-access", json={"allowed": []}
            ),
            403,
            "forbidden",
        )
    error_of(await stranger.call("PUT", f"{_models(org_id)}/x", json=rate), 404, "not_found")
    error_of(
        await stranger.call("PUT", f"/v1/organizations/{org_id}/upstream", json={"base_url": None}),
        404,
        "not_found",
    )
    # The platform's defaults are the operators'.
    admin = await org_api(api, org_id, "admin")
    error_of(await admin.call("GET", MODELS), 403, "forbidden")
    error_of(await admin.call("PUT", f"{MODELS}/x", json=rate), 403, "forbidden")
    error_of(await admin.call("DELETE", f"{MODELS}/gpt-small"), 403, "forbidden")
    assert len(await api.get(MODELS)) == 2
    assert _by_name(await api.get(_models(other_id)))["gpt-small"]["source"] == "platform"


async def test_bad_names_urls_and_access_lists_are_refused_with_their_codes(api: Api) -> None:
    org_id = await funded_org(api)
    rate = {"prompt_rate": "1", "completion_rate": "1"}
    error_of(await api.call("PUT", f"{MODELS}/-bad name", json=rate), 422, "invalid_model_name")
    error_of(
        await api.call(
            "PUT", f"{MODELS}/ok", json={**rate, "upstream_base_url": "ftp://x.example"}
        ),
        422,
        "invalid_request",
    )
    error_of(
        await api.call("PUT", f"{MODELS}/ok", json={**rate, "surprise": 1}), 422, "invalid_request"
    )
    error_of(
        await api.call(
            "PUT", f"/v1/organizations/{org_id}/model-access", json={"allowed": ["a b"]}
        ),
        422,
        "invalid_model_name",
    )
    error_of(
        await api.call("PUT", f"/v1/organizations/{org_id}/model-access", json={}),
        422,
        "invalid_request",
    )
    # Slashes belong to model names.
    saved = await _put(api, f"{MODELS}/meta-llama/Llama-3-8B", rate)
    assert saved["name"] == "meta-llama/Llama-3-8B"
    await api.call("DELETE", f"{MODELS}/meta-llama/Llama-3-8B", expect=200)


async def test_an_idempotent_retry_of_a_rate_change_answers_the_same(api: Api) -> None:
    org_id = await funded_org(api)
    body = {"prompt_rate": "0.5", "completion_rate": "1"}
    first = await api.call(
        "PUT", f"{_models(org_id)}/m", json=body, idempotency_key="k1", expect=200
    )
    again = await api.call(
        "PUT", f"{_models(org_id)}/m", json=body, idempotency_key="k1", expect=200
    )
    assert again.headers.get("idempotent-replayed") == "true"
    assert again.json() == first.json()
    changes = [e for e in await journal(api, org_id) if e["action"] == "model_set"]
    assert len(changes) == 1
