"""Changing Max Tokens and Max Train Tokens of many users at once: all rows or none."""

from __future__ import annotations

from typing import Any

from tests.helpers import Api, funded_org
from tests.scenarios import entries_since, error_of, get_user, last_entry_id, utc
from tokenadmin.clock import FakeClock
from tokenadmin.database import Database
from tokenadmin.journal.service import verify


async def _two_users(api: Api, **policy: Any) -> tuple[str, dict[str, Any], dict[str, Any]]:
    org = await funded_org(api, inference=2_000_000, training=500_000, **policy)
    ana = await api.user(org, "ana@example.com")
    bo = await api.user(org, "bo@example.com")
    return org, ana, bo


async def test_a_batch_of_two_users_and_both_columns_is_applied_together(api: Api) -> None:
    org, ana, bo = await _two_users(api)
    mark = await last_entry_id(api, org)

    response = await api.allowances(
        org,
        {"user": ana["id"], "max_tokens": 300_000, "max_train_tokens": 40_000},
        {"user": "bo@example.com", "max_tokens": 400_000, "max_train_tokens": 60_000},
        reason="Q2 plan",
        expect=200,
    )

    preview = response.json()
    assert (preview["applied"], preview["dry_run"], preview["accepted"]) == (True, False, True)
    assert preview["refused"] == []
    assert sorted(
        (c["email"], c["field"], c["before"], c["after"]) for c in preview["changes"]
    ) == [
        ("ana@example.com", "max_tokens", 200_000, 300_000),
        ("ana@example.com", "max_train_tokens", 0, 40_000),
        ("bo@example.com", "max_tokens", 200_000, 400_000),
        ("bo@example.com", "max_train_tokens", 0, 60_000),
    ]
    stored_ana, stored_bo = await get_user(api, ana["id"]), await get_user(api, bo["id"])
    assert (stored_ana["max_tokens"], stored_ana["max_train_tokens"]) == (300_000, 40_000)
    assert (stored_bo["max_tokens"], stored_bo["max_train_tokens"]) == (400_000, 60_000)
    assert (stored_ana["version"], stored_bo["version"]) == (2, 2)
    balance = await api.balance(org)
    assert balance["inference"]["allocated"] == 700_000
    assert balance["training"]["allocated"] == 100_000
    assert preview["balance_after"]["inference"]["balance"] == 1_300_000
    assert preview["balance_after"]["training"]["balance"] == 400_000

    entries = await entries_since(api, org, mark)
    assert sorted((e["user_id"], e["kind"], e["allowance_delta"]) for e in entries) == sorted(
        [
            (ana["id"], "inference", 100_000),
            (ana["id"], "training", 40_000),
            (bo["id"], "inference", 200_000),
            (bo["id"], "training", 60_000),
        ]
    )
    assert {(e["action"], e["reason"]) for e in entries} == {("allowance_changed", "Q2 plan")}
    last = {e["kind"]: e["allocated_after"] for e in entries}
    assert last == {"inference": 700_000, "training": 100_000}


async def test_one_refused_row_refuses_the_whole_batch_and_every_refused_row_is_listed(
    api: Api,
) -> None:
    org, ana, bo = await _two_users(api, min_inference=100_000)
    cy = await api.user(org, "cy@example.com", max_tokens=200_000)
    await api.use(cy["id"], 150_000, expect=200)
    mark = await last_entry_id(api, org)

    response = await api.allowances(
        org,
        {"user": ana["id"], "max_tokens": 500_000, "max_train_tokens": 10_000},
        {"user": bo["id"], "max_tokens": 50_000},
        {"user": cy["id"], "max_tokens": 120_000},
    )

    details = error_of(response, 422, "allowance_change_refused")
    assert [(r["index"], r["email"], r["code"]) for r in details["refused"]] == [
        (1, "bo@example.com", "below_minimum"),
        (2, "cy@example.com", "below_used"),
    ]
    assert all(r["message"] for r in details["refused"])
    assert "2 more" not in response.json()["error"]["message"]
    assert "1 more" in response.json()["error"]["message"]
    stored = await get_user(api, ana["id"])
    assert (stored["max_tokens"], stored["max_train_tokens"], stored["version"]) == (100_000, 0, 1)
    assert (await api.balance(org))["inference"]["allocated"] == 400_000
    assert await last_entry_id(api, org) == mark


async def test_a_dry_run_previews_the_balance_and_refusals_and_changes_nothing(
    api: Api,
) -> None:
    org, ana, bo = await _two_users(api)
    mark = await last_entry_id(api, org)

    preview = (
        await api.allowances(
            org,
            {"user": ana["id"], "max_tokens": 1_000_000},
            {"user": bo["id"], "max_train_tokens": 20_000},
            dry_run=True,
            expect=200,
        )
    ).json()

    assert (preview["applied"], preview["dry_run"], preview["accepted"]) == (False, True, True)
    assert preview["balance_after"]["inference"] == {
        "capacity": 2_000_000,
        "allocated": 1_200_000,
        "balance": 800_000,
    }
    assert preview["balance_after"]["training"]["allocated"] == 20_000
    assert len(preview["changes"]) == 2
    assert (await get_user(api, ana["id"]))["max_tokens"] == 200_000
    assert (await api.balance(org))["inference"]["allocated"] == 400_000
    assert await last_entry_id(api, org) == mark

    refused = (
        await api.allowances(
            org, {"user": ana["id"], "max_tokens": 2_000_000}, dry_run=True, expect=200
        )
    ).json()
    assert refused["accepted"] is False
    assert [(r["code"], r["shortfall"]) for r in refused["refused"]] == [
        ("exceeds_balance", 200_000)
    ]
    assert await last_entry_id(api, org) == mark


async def test_a_stale_expected_version_is_refused_with_the_current_values(api: Api) -> None:
    org, ana, bo = await _two_users(api)
    await api.patch(f"/v1/users/{ana['id']}", {"max_tokens": 250_000}, expect=200)
    mark = await last_entry_id(api, org)

    response = await api.allowances(
        org,
        {"user": ana["id"], "max_tokens": 300_000, "expected_version": 1},
        {"user": bo["id"], "max_tokens": 300_000, "expected_version": 1},
    )

    details = error_of(response, 409, "version_conflict")
    [row] = details["refused"]
    assert row["email"] == "ana@example.com"
    assert {k: row["current"][k] for k in ("version", "max_tokens", "max_train_tokens")} == {
        "version": 2,
        "max_tokens": 250_000,
        "max_train_tokens": 0,
    }
    assert (await get_user(api, bo["id"]))["max_tokens"] == 200_000
    assert await last_entry_id(api, org) == mark

    await api.allowances(
        org, {"user": ana["id"], "max_tokens": 300_000, "expected_version": 2}, expect=200
    )
    assert (await get_user(api, ana["id"]))["max_tokens"] == 300_000


async def test_the_second_of_two_concurrent_edits_of_one_user_is_refused(api: Api) -> None:
    org = await funded_org(api)
    ana = await api.user(org, "ana@example.com")
    loaded = await get_user(api, ana["id"])

    await api.patch(
        f"/v1/users/{ana['id']}",
        {"max_tokens": 300_000, "expected_version": loaded["version"]},
        expect=200,
    )
    response = await api.call(
        "PATCH",
        f"/v1/users/{ana['id']}",
        json={"max_tokens": 250_000, "expected_version": loaded["version"]},
    )

    details = error_of(response, 409, "version_conflict")
    assert details["current"]["max_tokens"] == 300_000
    assert details["current"]["version"] == loaded["version"] + 1
    assert (await get_user(api, ana["id"]))["max_tokens"] == 300_000


async def test_unknown_and_repeated_users_are_refused_each_with_its_row(api: Api) -> None:
    org, ana, _ = await _two_users(api)
    other = await funded_org(api)
    stranger = await api.user(other, "stranger@example.com")
    mark = await last_entry_id(api, org)

    response = await api.allowances(
        org,
        {"user": ana["id"], "max_tokens": 300_000},
        {"user": "nobody@example.com", "max_tokens": 300_000},
        {"user": "ANA@example.com", "max_train_tokens": 1_000},
        {"user": stranger["id"], "max_tokens": 300_000},
    )

    details = error_of(response, 422, "allowance_change_refused")
    assert [(r["index"], r["code"]) for r in details["refused"]] == [
        (1, "user_not_found"),
        (2, "duplicate_user"),
        (3, "user_not_found"),
    ]
    assert (await get_user(api, ana["id"]))["max_tokens"] == 200_000
    assert (await get_user(api, stranger["id"]))["max_tokens"] == 200_000
    assert await last_entry_id(api, org) == mark


async def test_users_are_named_by_email_in_any_case(api: Api) -> None:
    org, ana, _ = await _two_users(api)
    await api.allowances(org, {"user": "Ana@Example.COM", "max_tokens": 210_000}, expect=200)
    assert (await get_user(api, ana["id"]))["max_tokens"] == 210_000


async def test_an_over_allocated_organization_can_lower_allowances_but_not_raise_them(
    api: Api, clock: FakeClock
) -> None:
    org = (await api.organization())["id"]
    await api.purchase(org, 500_000)
    await api.purchase(org, 500_000, expires_at="2026-03-20T00:00:00Z")
    ana = await api.user(org, max_tokens=500_000)
    bo = await api.user(org, max_tokens=400_000)
    clock.set(utc("2026-03-21 00:00"))
    balance = await api.balance(org)
    assert (balance["inference"]["capacity"], balance["inference"]["shortfall"]) == (
        500_000,
        400_000,
    )

    raised = await api.allowances(
        org,
        {"user": ana["id"], "max_tokens": 300_000},
        {"user": bo["id"], "max_tokens": 450_000},
    )
    details = error_of(raised, 422, "allowance_change_refused")
    assert [(r["index"], r["code"]) for r in details["refused"]] == [(1, "exceeds_balance")]
    assert (await get_user(api, ana["id"]))["max_tokens"] == 500_000

    await api.allowances(org, {"user": ana["id"], "max_tokens": 300_000}, expect=200)
    balance = await api.balance(org)
    assert balance["inference"]["allocated"] == 700_000
    assert balance["inference"]["shortfall"] == 200_000
    error_of(
        await api.call("PATCH", f"/v1/users/{bo['id']}", json={"max_tokens": 400_001}),
        422,
        "exceeds_balance",
    )


async def test_lowering_and_raising_together_is_allowed_when_the_result_fits(api: Api) -> None:
    org = await funded_org(api, inference=600_000)
    ana = await api.user(org, max_tokens=400_000)
    bo = await api.user(org, max_tokens=200_000)
    await api.allowances(
        org,
        {"user": ana["id"], "max_tokens": 200_000},
        {"user": bo["id"], "max_tokens": 400_000},
        expect=200,
    )
    assert (await get_user(api, bo["id"]))["max_tokens"] == 400_000
    assert (await api.balance(org))["inference"]["balance"] == 0


async def test_with_overallocation_on_allowances_may_exceed_the_capacity(api: Api) -> None:
    org = await funded_org(api, inference=500_000, overallocation=True)
    ana = await api.user(org)

    await api.allowances(org, {"user": ana["id"], "max_tokens": 800_000}, expect=200)

    balance = await api.balance(org)
    assert balance["inference"]["allocated"] == 800_000
    assert balance["inference"]["balance"] == -300_000
    assert balance["inference"]["shortfall"] == 300_000
    assert balance["over_allocated"] is True


async def test_rows_that_change_nothing_write_nothing(api: Api) -> None:
    org, ana, _ = await _two_users(api)
    mark = await last_entry_id(api, org)
    preview = (
        await api.allowances(
            org, {"user": ana["id"], "max_tokens": 200_000, "max_train_tokens": 0}, expect=200
        )
    ).json()
    assert preview["changes"] == []
    assert await last_entry_id(api, org) == mark
    assert (await get_user(api, ana["id"]))["version"] == 1


async def test_a_deactivated_user_gets_no_allowance_from_a_batch(api: Api) -> None:
    org, ana, _ = await _two_users(api)
    await api.post(f"/v1/users/{ana['id']}/deactivate", expect=200)
    response = await api.allowances(org, {"user": ana["id"], "max_tokens": 300_000})
    details = error_of(response, 422, "allowance_change_refused")
    assert [r["code"] for r in details["refused"]] == ["user_deactivated"]


async def test_a_batch_needs_rows_and_every_row_needs_a_column(api: Api) -> None:
    org, ana, _ = await _two_users(api)
    error_of(await api.allowances(org), 422, "invalid_request")
    details = error_of(await api.allowances(org, {"user": ana["id"]}), 422, "invalid_request")
    assert details["errors"][0]["field"].startswith("changes.0")


async def test_patching_one_user_changes_both_columns_and_profile_in_one_step(api: Api) -> None:
    org = await funded_org(api)
    ana = await api.user(org, "ana@example.com")
    mark = await last_entry_id(api, org)

    user = await api.patch(
        f"/v1/users/{ana['id']}",
        {"name": "Ana B.", "role": "admin", "max_tokens": 300_000, "max_train_tokens": 5_000},
        expect=200,
    )

    assert (user["name"], user["role"], user["max_tokens"], user["max_train_tokens"]) == (
        "Ana B.",
        "admin",
        300_000,
        5_000,
    )
    assert user["version"] == 2
    actions = sorted(e["action"] for e in await entries_since(api, org, mark))
    assert actions == ["allowance_changed", "allowance_changed", "user_changed"]

    response = await api.call(
        "PATCH", f"/v1/users/{ana['id']}", json={"name": "Nope", "max_tokens": 10}
    )
    error_of(response, 422, "below_minimum")
    assert (await get_user(api, ana["id"]))["name"] == "Ana B."


async def test_a_row_that_breaks_two_rules_lists_both_reasons(api: Api) -> None:
    org = await funded_org(api, inference=2_000_000, training=100_000)
    ana = await api.user(org, "ana@example.com")
    mark = await last_entry_id(api, org)

    response = await api.allowances(
        org, {"user": ana["id"], "max_tokens": 100_000, "max_train_tokens": 150_000}
    )

    details = error_of(response, 422, "allowance_change_refused")
    assert [(r["index"], r["code"], r["kind"]) for r in details["refused"]] == [
        (0, "below_minimum", "inference"),
        (0, "exceeds_balance", "training"),
    ]
    assert details["refused"][1]["shortfall"] == 50_000
    stored = await get_user(api, ana["id"])
    assert (stored["max_tokens"], stored["max_train_tokens"]) == (200_000, 0)
    assert await last_entry_id(api, org) == mark


async def test_one_users_change_answers_each_rule_with_its_own_code_listing_every_reason(
    api: Api,
) -> None:
    org = await funded_org(api, inference=2_000_000, training=100_000)
    ana = await api.user(org, "ana@example.com")

    patched = await api.call(
        "PATCH",
        f"/v1/users/{ana['id']}",
        json={"max_tokens": 100_000, "max_train_tokens": 150_000},
    )
    details = error_of(patched, 422, "below_minimum")
    assert (details["kind"], details["minimum"]) == ("inference", 200_000)
    assert [r["code"] for r in details["refused"]] == ["below_minimum", "exceeds_balance"]
    assert "1 more reason" in patched.json()["error"]["message"]

    created = await api.call(
        "POST",
        f"/v1/organizations/{org}/users",
        json={"email": "bo@example.com", "name": "Bo", "max_train_tokens": 150_000},
    )
    details = error_of(created, 422, "exceeds_balance")
    assert (details["kind"], details["shortfall"]) == ("training", 50_000)
    # Bo was never created: nothing in the answer names an id of his.
    assert all("user_id" not in row for row in details["refused"])
    assert [r["email"] for r in details["refused"]] == ["bo@example.com"]
    assert (await api.get(f"/v1/organizations/{org}/users"))["total"] == 1


async def test_only_the_rows_that_cause_a_shortfall_are_refused_in_balance_words(
    api: Api,
) -> None:
    org = await funded_org(api, inference=2_000_000)
    ana, bo, cy, di = [await api.user(org, f"{n}@example.com") for n in ("ana", "bo", "cy", "di")]
    mark = await last_entry_id(api, org)

    # 1,200,000 left for raises of 50,000, 1,800,000 and 100,000 (and a training change):
    # 750,000 over, which Bo's raise alone causes.
    response = await api.allowances(
        org,
        {"user": ana["id"], "max_tokens": 250_000},
        {"user": bo["id"], "max_tokens": 2_000_000},
        {"user": cy["id"], "max_tokens": 300_000},
        {"user": di["id"], "max_tokens": 200_000, "max_train_tokens": 1_000},
    )

    details = error_of(response, 422, "allowance_change_refused")
    [row] = details["refused"]
    after = details["balance_after"]["inference"]
    assert after == {"capacity": 2_000_000, "allocated": 2_750_000, "balance": -750_000}
    assert {k: row[k] for k in ("index", "email", "code", "kind")} == {
        "index": 1,
        "email": "bo@example.com",
        "code": "exceeds_balance",
        "kind": "inference",
    }
    assert (row["requested"], row["before"], row["needed"]) == (2_000_000, 200_000, 1_800_000)
    # Left for it: the balance once every other row is saved; the shortfall is the card's.
    assert (row["left"], row["shortfall"]) == (1_050_000, -after["balance"])
    assert row["message"] == (
        "Only 1,050,000 inference tokens left; Bo's Max Tokens of 2,000,000 needs 1,800,000 more."
    )
    message = response.json()["error"]["message"]
    assert message.startswith("Nothing was saved: The inference balance would be 750,000 short.")
    assert "Only 1,050,000 inference tokens left" in message
    assert await last_entry_id(api, org) == mark

    # The same batch as a preview names the same row, with the same figures.
    preview = (
        await api.allowances(
            org,
            {"user": ana["id"], "max_tokens": 250_000},
            {"user": bo["id"], "max_tokens": 2_000_000},
            {"user": cy["id"], "max_tokens": 300_000},
            dry_run=True,
            expect=200,
        )
    ).json()
    assert [(r["index"], r["left"], r["shortfall"]) for r in preview["refused"]] == [
        (1, 1_050_000, 750_000)
    ]
    assert preview["balance_after"]["inference"]["balance"] == -750_000
    assert preview["batch"] is None

    # Without the culprit the rest is saved, and the answer names its batch.
    saved = (
        await api.allowances(
            org,
            {"user": ana["id"], "max_tokens": 250_000},
            {"user": cy["id"], "max_tokens": 300_000},
            expect=200,
        )
    ).json()
    entries = await entries_since(api, org, mark)
    assert saved["batch"]
    assert {e["details"]["batch"] for e in entries} == {saved["batch"]}


async def test_the_fewest_largest_raises_are_refused_and_lowering_rows_never_are(
    api: Api,
) -> None:
    org = await funded_org(api, inference=1_500_000)
    users = [await api.user(org, f"u{n}@example.com") for n in range(5)]
    u0, u1, u2, u3, u4 = (u["id"] for u in users)
    await api.allowances(org, {"user": u4, "max_tokens": 400_000}, expect=200)
    # Balance 300,000, and 200,000 more from a lowering row: 500,000 left for raises of
    # 300,000, 300,000, 250,000 and 50,000, 400,000 over. Refusing one 300,000 raise is not
    # enough; refusing both is.
    response = await api.allowances(
        org,
        {"user": u0, "max_tokens": 500_000},
        {"user": u1, "max_tokens": 500_000},
        {"user": u2, "max_tokens": 450_000},
        {"user": u3, "max_tokens": 250_000},
        {"user": u4, "max_tokens": 200_000},
    )
    details = error_of(response, 422, "allowance_change_refused")
    assert details["balance_after"]["inference"]["balance"] == -400_000
    assert [(r["index"], r["needed"], r["left"], r["shortfall"]) for r in details["refused"]] == [
        (0, 300_000, 200_000, 400_000),
        (1, 300_000, 200_000, 400_000),
    ]

    # Of two equal raises of which one is enough, the later row is refused.
    response = await api.allowances(
        org, {"user": u0, "max_tokens": 400_000}, {"user": u1, "max_tokens": 400_000}
    )
    details = error_of(response, 422, "allowance_change_refused")
    assert [(r["index"], r["left"], r["shortfall"]) for r in details["refused"]] == [
        (1, 100_000, 100_000)
    ]
    assert details["refused"][0]["message"] == (
        "Only 100,000 inference tokens left; U1's Max Tokens of 400,000 needs 200,000 more."
    )

    # With overallocation on, nothing is refused.
    await api.call("PATCH", f"/v1/organizations/{org}", json={"overallocation": True}, expect=200)
    await api.allowances(
        org,
        {"user": u0, "max_tokens": 500_000},
        {"user": u1, "max_tokens": 500_000},
        expect=200,
    )
    assert (await api.balance(org))["inference"]["balance"] == -300_000


async def test_new_users_count_like_raises_of_the_balance(api: Api) -> None:
    org = await funded_org(api, inference=1_000_000)
    await api.user(org, "ana@example.com", max_tokens=900_000)
    created = await api.call(
        "POST",
        f"/v1/organizations/{org}/users",
        json={"email": "bo@example.com", "name": "Bo Li", "max_tokens": 300_000},
    )
    details = error_of(created, 422, "exceeds_balance")
    assert (details["left"], details["needed"], details["shortfall"]) == (100_000, 300_000, 200_000)
    assert created.json()["error"]["message"] == (
        "Only 100,000 inference tokens left; Bo Li's Max Tokens of 300,000 needs 300,000 more."
    )


async def test_a_change_that_starts_a_users_new_period_chains_after_its_reset(
    api: Api, db: Database, clock: FakeClock
) -> None:
    # The change reads the user's journal head with the user; the reset it records first
    # moves that head, and the change's own entry must chain after the reset.
    org = await funded_org(api, inference=2_000_000)
    ana = await api.user(org, "ana@example.com", max_tokens=300_000)
    await api.use(ana["id"], 100_000, expect=200)
    clock.set(utc("2026-04-02 00:00"))
    mark = await last_entry_id(api, org)

    await api.allowances(org, {"user": "ana@example.com", "max_tokens": 400_000}, expect=200)

    written = [(e["action"], e["user_id"]) for e in await entries_since(api, org, mark)]
    assert written[-2:] == [("period_reset", ana["id"]), ("allowance_changed", ana["id"])]
    report = await db.read(verify)
    assert report.clean, report.differences
