"""`tokenadmin policy` and `tokenadmin boost`: set a preset, preview, run, read the log;
give, list and end a boost; refusals with their codes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tests.cli.conftest import Tokenadmin


def test_policy_set_previews_runs_and_logs_the_moves(tokenadmin: Tokenadmin) -> None:
    org = tokenadmin.org()
    ana = tokenadmin.user(org, "ana@example.com", "--max-tokens", "1M")
    tokenadmin("usage", "record", "--user", ana["email"], "--tokens", "900K")

    shown = tokenadmin.json("policy", "show", "--org", org)
    assert (shown["inference"]["enabled"], shown["inference"]["preset"]) == (False, "standard")

    dry = tokenadmin.json(
        "policy", "set", "--org", org, "--kind", "inference", "--preset", "standard",
        "--enable", "--dry-run",
    )  # fmt: skip
    assert dry["applied"] is False
    assert [(m["email"], m["before"], m["after"]) for m in dry["preview"]["moves"]] == [
        ("ana@example.com", 1_000_000, 1_250_000)
    ]
    assert tokenadmin.json("policy", "show", "--org", org)["inference"]["saved"] is False

    saved = tokenadmin(
        "policy", "set", "--org", org, "--kind", "inference", "--preset", "standard",
        "--enable", "--bump", "100K",
    )  # fmt: skip
    assert "Saved." in saved.stdout
    assert "1,100,000" in tokenadmin("policy", "preview", "--org", org).stdout

    ran = tokenadmin.json("policy", "run", "--org", org)
    assert [(m["rule"], m["after"]) for m in ran["moves"]] == [("increase", 1_100_000)]
    log = tokenadmin("policy", "log", "--org", org)
    assert "auto-increase" in log.stdout
    assert "ana@example.com" in log.stdout

    refused = tokenadmin(
        "policy", "set", "--org", org, "--kind", "inference", "--floor", "3M", "--ceiling", "2M",
        expect=2,
    )  # fmt: skip
    assert refused.stderr.startswith("error: floor_above_ceiling: ")
    bad = tokenadmin(
        "policy", "set", "--org", org, "--kind", "inference", "--ceiling", "0", expect=2
    )
    assert bad.stderr.startswith("error: invalid_amount: ")


def test_boost_add_list_and_end(tokenadmin: Tokenadmin) -> None:
    org = tokenadmin.org()
    ana = tokenadmin.user(org, "ana@example.com")
    boost = tokenadmin.json(
        "boost", "add", ana["email"], "--org", org, "--kind", "inference", "--amount", "300K",
        "--until", "2099-01-01", expect=2,
    )  # fmt: skip
    past = tokenadmin(
        "boost", "add", ana["email"], "--org", org, "--kind", "inference", "--amount", "300K",
        "--until", "2020-01-01",
        expect=2,
    )  # fmt: skip
    assert past.stderr.startswith("error: boost_end_in_past: ")
    zero = tokenadmin(
        "boost", "add", ana["email"], "--org", org, "--kind", "inference", "--amount", "0",
        "--until", "2020-01-01", expect=2,
    )  # fmt: skip
    assert zero.stderr.startswith("error: invalid_amount: ")

    until = (datetime.now(UTC) + timedelta(days=3)).date().isoformat()
    boost = tokenadmin.json(
        "boost", "add", ana["email"], "--org", org, "--kind", "inference", "--amount", "300K",
        "--until", until, "--reason", "launch",
    )  # fmt: skip
    assert (boost["state"], boost["amount"]) == ("active", 300_000)
    assert tokenadmin.json("user", "show", ana["id"])["max_tokens"] == 500_000
    assert boost["id"] in tokenadmin("boost", "list", "--org", org).stdout

    ended = tokenadmin.json("boost", "end", boost["id"], "--org", org)
    assert (ended["state"], ended["taken_back"]) == ("ended", 300_000)
    assert tokenadmin.json("user", "show", ana["id"])["max_tokens"] == 200_000
    again = tokenadmin("boost", "end", boost["id"], "--org", org, expect=2)
    assert again.stderr.startswith("error: boost_already_ended: ")
    listed = tokenadmin.json("boost", "list", "--org", org, "--state", "any")
    assert [b["state"] for b in listed["boosts"]] == ["ended"]
