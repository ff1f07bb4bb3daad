"""`tokenadmin distribute`: the same service as the API, previewed or applied at once."""

from __future__ import annotations

from tests.cli.conftest import Tokenadmin
from tokenadmin.tokens import MAX_AMOUNT


def _org_of_two(tokenadmin: Tokenadmin) -> str:
    """10M inference and 1M training tokens; two users of 200,000 Max Tokens each."""
    org = tokenadmin.org()
    tokenadmin.user(org, "ana@example.com")
    tokenadmin.user(org, "ben@example.com")
    return org


def _allowances(tokenadmin: Tokenadmin, email: str) -> tuple[int, int]:
    user = tokenadmin.json("user", "show", email)
    return user["max_tokens"], user["max_train_tokens"]


def test_a_preview_of_both_kinds_saves_nothing_and_prints_its_token(
    tokenadmin: Tokenadmin,
) -> None:
    org = _org_of_two(tokenadmin)
    result = tokenadmin(
        "distribute", "--org", org, "--inference", "equal", "--inference-max", "1M",
        "--training", "percent", "--training-percent", "10",
    )  # fmt: skip
    assert "Preview: nothing was saved." in result.stdout
    assert "1,000,000" in result.stdout
    assert "50,000" in result.stdout
    assert _allowances(tokenadmin, "ana@example.com") == (200_000, 0)

    preview = tokenadmin.json(
        "distribute", "--org", org, "--inference", "equal", "--inference-max", "1M",
        "--training", "percent", "--training-percent", "10", "--preview",
    )  # fmt: skip
    assert (preview["applied"], preview["accepted"], preview["users"]) == (False, True, 2)
    assert preview["kinds"]["inference"]["per_user"] == 1_000_000
    assert preview["kinds"]["training"]["per_user"] == 50_000  # 10% of 1M, split in two
    assert preview["preview_token"] in result.stdout


def test_apply_with_the_previews_token_applies_both_kinds_to_the_chosen_users(
    tokenadmin: Tokenadmin,
) -> None:
    org = _org_of_two(tokenadmin)
    tokenadmin.user(org, "cy@example.com")
    options = (
        "--org", org, "--inference", "fixed", "--inference-amount", "50K",
        "--training", "fixed", "--training-amount", "1K", "--training-min", "2K",
        "--users", "ana@example.com,ben@example.com", "--reason", "Q3",
    )  # fmt: skip
    token = tokenadmin.json("distribute", *options)["preview_token"]

    applied = tokenadmin.json("distribute", *options, "--apply", "--token", token)

    assert applied["applied"]
    assert applied["preview_token"] == token
    assert _allowances(tokenadmin, "ana@example.com") == (250_000, 2_000)
    assert _allowances(tokenadmin, "ben@example.com") == (250_000, 2_000)
    assert _allowances(tokenadmin, "cy@example.com") == (200_000, 0)
    entries = tokenadmin.json("journal", "list", "--org", org, "--action", "allowance_changed")
    assert {e["reason"] for e in entries} == {
        "Distribution (inference: fixed, training: fixed): Q3"
    }


def test_apply_without_a_token_previews_and_applies_in_one_step(tokenadmin: Tokenadmin) -> None:
    org = _org_of_two(tokenadmin)
    result = tokenadmin("distribute", "--org", org, "--all", "--training", "equal", "--apply")
    assert "Applied to 2 users in one step." in result.stdout
    assert _allowances(tokenadmin, "ben@example.com") == (200_000, 500_000)


def test_a_stale_token_is_refused_and_nothing_is_saved(tokenadmin: Tokenadmin) -> None:
    org = _org_of_two(tokenadmin)
    options = ("--org", org, "--inference", "fixed", "--inference-amount", "1K")
    token = tokenadmin.json("distribute", *options)["preview_token"]
    tokenadmin(
        "allowance", "set", "--org", org, "--user", "ben@example.com", "--max-tokens", "300K"
    )

    result = tokenadmin("distribute", *options, "--apply", "--token", token, expect=2)

    assert result.stderr.startswith("error: preview_stale: ")
    assert "Preview again" in result.stderr
    assert _allowances(tokenadmin, "ana@example.com") == (200_000, 0)


def test_a_refused_row_refuses_the_whole_distribution(tokenadmin: Tokenadmin) -> None:
    org = _org_of_two(tokenadmin)
    options = ("--org", org, "--training", "fixed", "--training-amount", "600K")
    preview = tokenadmin("distribute", *options, expect=2)
    assert preview.stderr.startswith("error: allowance_change_refused: Would refuse: ")
    applied = tokenadmin("distribute", *options, "--apply", expect=2)
    assert applied.stderr.startswith("error: allowance_change_refused: Nothing was saved")
    assert "exceeds_balance" in applied.stderr
    assert _allowances(tokenadmin, "ben@example.com") == (200_000, 0)


def test_a_distribution_past_2_to_the_53_is_refused(tokenadmin: Tokenadmin) -> None:
    org = tokenadmin.org()
    tokenadmin("org", "update", org, "--overallocation")
    tokenadmin.user(org, "big@example.com")
    big = str(MAX_AMOUNT - 500)
    tokenadmin("allowance", "set", "--org", org, "--user", "big@example.com", "--max-tokens", big)
    result = tokenadmin(
        "distribute", "--org", org, "--inference", "fixed", "--inference-amount", "1000",
        "--users", "big@example.com", "--apply", expect=2,
    )  # fmt: skip
    assert "amount_too_large" in result.stderr
    assert _allowances(tokenadmin, "big@example.com") == (MAX_AMOUNT - 500, 0)


def test_bad_options_are_refused_before_anything_is_read(tokenadmin: Tokenadmin) -> None:
    org = _org_of_two(tokenadmin)
    for options, says in (
        ((), "give inference, training or both"),
        (("--inference", "fixed"), "needs an amount"),
        (("--inference", "percent", "--inference-percent", "101"), "100"),
        (("--inference-amount", "5"), "--inference METHOD"),
        (("--inference", "equal", "--users", "a@example.com", "--all"), "not both"),
        (("--inference", "equal", "--token", "ab"), "--token goes with --apply"),
        (("--inference", "fixed", "--inference-amount", "1.5"), "whole tokens"),
    ):
        result = tokenadmin("distribute", "--org", org, *options, expect=2)
        assert says in result.stderr, (options, result.stderr)
