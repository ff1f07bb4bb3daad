"""Reverting a save: a saved allowance batch undone in one atomic inverse change."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI

from tests.client_support import async_client
from tests.helpers import Api, funded_org
from tests.scenarios import entries_since, error_of, get_user, last_entry_id
from tokenadmin.clock import FakeClock


def batches_path(org: str) -> str:
    return f"/v1/organizations/{org}/allowance-batches"


def revert_path(org: str, batch: str) -> str:
    return f"{batches_path(org)}/{batch}/revert"


async def saved(api: Api, org: str, *rows: dict[str, Any], reason: str | None = None) -> str:
    """Save rows as one batch; its id, as the batch list gives it."""
    await api.allowances(org, *rows, reason=reason, expect=200)
    page = await api.get(batches_path(org), params={"limit": 1})
    batch: str = page["batches"][0]["id"]
    return batch


async def _org(api: Api) -> tuple[str, dict[str, Any], dict[str, Any]]:
    org = await funded_org(api, inference=2_000_000, training=500_000)
    ana = await api.user(org, "ana@example.com")
    bo = await api.user(org, "bo@example.com")
    return org, ana, bo


async def test_reverting_a_two_row_batch_restores_both_in_one_change_that_names_the_batch(
    api: Api, clock: FakeClock
) -> None:
    org, ana, bo = await _org(api)
    batch = await saved(
        api,
        org,
        {"user": ana["id"], "max_tokens": 300_000, "max_train_tokens": 40_000},
        {"user": bo["email"], "max_tokens": 500_000},
        reason="Q2 plan",
    )
    listed = (await api.get(batches_path(org)))["batches"][0]
    assert (listed["id"], listed["rows"], listed["users"], listed["reason"]) == (
        batch,
        3,
        2,
        "Q2 plan",
    )
    assert listed["delta"] == {"inference": 400_000, "training": 40_000}
    assert not listed["reverted"]
    clock.advance(minutes=5)
    mark = await last_entry_id(api, org)

    preview = await api.post(revert_path(org, batch), {"dry_run": True}, expect=200)
    assert (preview["applied"], preview["revertable"], preview["refused"]) == (False, 3, 0)
    assert sorted((r["email"], r["field"], r["now"], r["back_to"]) for r in preview["rows"]) == [
        ("ana@example.com", "max_tokens", 300_000, 200_000),
        ("ana@example.com", "max_train_tokens", 40_000, 0),
        ("bo@example.com", "max_tokens", 500_000, 200_000),
    ]
    assert preview["balance_after"]["inference"]["allocated"] == 400_000
    assert await entries_since(api, org, mark) == []  # a dry run writes nothing

    applied = await api.post(
        revert_path(org, batch), {"preview_token": preview["preview_token"]}, expect=200
    )
    assert applied["applied"]
    assert applied["revert_batch"]
    stored_ana, stored_bo = await get_user(api, ana["id"]), await get_user(api, bo["id"])
    assert (stored_ana["max_tokens"], stored_ana["max_train_tokens"]) == (200_000, 0)
    assert stored_bo["max_tokens"] == 200_000
    entries = await entries_since(api, org, mark)
    assert len(entries) == 3
    assert {e["details"]["reverts"] for e in entries} == {batch}
    assert {e["details"]["batch"] for e in entries} == {applied["revert_batch"]}
    assert {e["reason"] for e in entries} == {applied["reason"]}
    assert applied["reason"].startswith("Revert of the save of ")

    newest, reverted = (await api.get(batches_path(org)))["batches"][:2]
    assert (newest["id"], newest["reverts"]) == (applied["revert_batch"], batch)
    assert (reverted["id"], reverted["reverted"]) == (batch, True)
    assert reverted["reverted_by"] == applied["revert_batch"]

    again = await api.call("POST", revert_path(org, batch), json={"dry_run": True})
    assert error_of(again, 409, "already_reverted")["reverted_by"] == applied["revert_batch"]


async def test_a_row_used_since_is_explained_and_the_rest_is_reverted(api: Api) -> None:
    org, ana, bo = await _org(api)
    batch = await saved(
        api,
        org,
        {"user": ana["id"], "max_tokens": 900_000},
        {"user": bo["id"], "max_tokens": 400_000},
    )
    await api.use(ana["id"], 250_000, expect=200)

    preview = await api.post(revert_path(org, batch), {"dry_run": True}, expect=200)
    refused = [r for r in preview["rows"] if not r["revertable"]]
    assert [(r["email"], [x["code"] for x in r["reasons"]]) for r in refused] == [
        ("ana@example.com", ["below_used"])
    ]
    assert "250,000" in refused[0]["reasons"][0]["message"]
    applied = await api.post(revert_path(org, batch), {}, expect=200)
    assert (applied["revertable"], applied["refused"]) == (1, 1)
    assert (await get_user(api, ana["id"]))["max_tokens"] == 900_000
    assert (await get_user(api, bo["id"]))["max_tokens"] == 200_000


async def test_a_row_another_admin_changed_since_says_who_and_when(
    api: Api, clock: FakeClock
) -> None:
    org, ana, bo = await _org(api)
    batch = await saved(
        api,
        org,
        {"user": ana["id"], "max_tokens": 300_000},
        {"user": bo["id"], "max_tokens": 300_000},
    )
    ravi = api.as_key(await api.key(org, "admin"))
    clock.advance(minutes=7)
    await ravi.allowances(org, {"user": ana["id"], "max_tokens": 600_000}, expect=200)

    preview = await api.post(revert_path(org, batch), {"dry_run": True}, expect=200)
    row = next(r for r in preview["rows"] if r["email"] == "ana@example.com")
    reason = row["reasons"][0]
    assert (row["revertable"], reason["code"], row["now"]) == (False, "changed_since", 600_000)
    change = reason["changes_since"][-1]
    assert (change["from"], change["to"]) == (300_000, 600_000)
    assert "key-admin" in change["by"]
    assert "key-admin" in reason["message"]
    assert "from 300,000 to 600,000" in reason["message"]
    await api.post(revert_path(org, batch), {}, expect=200)
    assert (await get_user(api, ana["id"]))["max_tokens"] == 600_000
    assert (await get_user(api, bo["id"]))["max_tokens"] == 200_000


async def test_a_batch_with_nothing_left_to_revert_is_refused_with_every_reason(api: Api) -> None:
    org, ana, _bo = await _org(api)
    batch = await saved(api, org, {"user": ana["id"], "max_tokens": 300_000})
    await api.allowances(org, {"user": ana["id"], "max_tokens": 350_000}, expect=200)
    mark = await last_entry_id(api, org)

    response = await api.call("POST", revert_path(org, batch), json={})
    rows = error_of(response, 409, "nothing_to_revert")["rows"]
    assert [[x["code"] for x in r["reasons"]] for r in rows] == [["changed_since"]]
    assert await entries_since(api, org, mark) == []


async def test_unknown_batches_another_organizations_and_stale_previews_are_refused(
    api: Api,
) -> None:
    org, ana, _ = await _org(api)
    batch = await saved(api, org, {"user": ana["id"], "max_tokens": 300_000})
    other = await funded_org(api)
    other_admin = api.as_key(await api.key(other, "admin"))
    mark = await last_entry_id(api, org)

    unknown = await api.call(
        "POST", revert_path(org, "0190a000-0000-7000-8000-000000000000"), json={}
    )
    error_of(unknown, 404, "batch_not_found")
    # Another organization's admin: not through its own organization, nor through A's.
    error_of(
        await other_admin.call("POST", revert_path(other, batch), json={}), 404, "batch_not_found"
    )
    assert (await other_admin.call("POST", revert_path(org, batch), json={})).status_code in (
        403,
        404,
    )
    assert (await other_admin.call("GET", batches_path(org))).status_code in (403, 404)
    assert (await other_admin.get(batches_path(other)))["batches"] == []

    preview = await api.post(revert_path(org, batch), {"dry_run": True}, expect=200)
    await api.use(ana["id"], 10, expect=200)  # used, not changed: the same preview still holds
    await api.allowances(org, {"user": ana["id"], "max_train_tokens": 5}, expect=200)
    stale = await api.call(
        "POST", revert_path(org, batch), json={"preview_token": preview["preview_token"]}
    )
    error_of(stale, 409, "preview_stale")
    error_of(
        await api.call("POST", revert_path(org, "not-a-batch"), json={}), 422, "invalid_request"
    )
    assert [e["action"] for e in await entries_since(api, org, mark)] == [
        "usage",
        "allowance_changed",
    ]


async def test_a_revert_sent_twice_with_one_idempotency_key_is_applied_once(api: Api) -> None:
    org, ana, _ = await _org(api)
    batch = await saved(api, org, {"user": ana["id"], "max_tokens": 300_000})
    first = await api.call(
        "POST", revert_path(org, batch), json={}, idempotency_key="undo-1", expect=200
    )
    again = await api.call(
        "POST", revert_path(org, batch), json={}, idempotency_key="undo-1", expect=200
    )
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    other_body = await api.call(
        "POST", revert_path(org, batch), json={"dry_run": True}, idempotency_key="undo-1"
    )
    error_of(other_body, 422, "idempotency_key_reused")
    assert (await get_user(api, ana["id"]))["max_tokens"] == 200_000


async def test_the_client_lists_batches_and_reverts_one(app: FastAPI, operator_key: str) -> None:
    async with async_client(app, operator_key) as tokens:
        org = await tokens.create_organization("Acme")
        await tokens.record_purchase(org.id, inference_amount=1_000_000)
        ana = await tokens.create_user(org.id, "ana@example.com", "Ana")
        saved_change = await tokens.change_allowances(
            org.id, [{"user": ana.email, "max_tokens": 300_000}]
        )
        page = await tokens.list_allowance_batches(org.id, limit=1)
        batch = page.batches[0]
        assert saved_change.batch == batch.id  # the change's answer names it too
        assert (batch.rows, batch.delta["inference"], batch.reverted) == (1, 100_000, False)
        preview = await tokens.revert_allowance_batch(org.id, batch.id, dry_run=True)
        assert [(r.now, r.back_to) for r in preview.rows] == [(300_000, 200_000)]
        done = await tokens.revert_allowance_batch(
            org.id, batch.id, preview_token=preview.preview_token
        )
        assert done.applied
        assert (await tokens.get_user(ana.id)).max_tokens == 200_000
        assert (await tokens.list_allowance_batches(org.id)).batches[1].reverted


async def test_a_row_the_balance_no_longer_covers_is_explained_and_the_rest_is_reverted(
    api: Api,
) -> None:
    org = await funded_org(api, inference=1_000_000)
    ana = await api.user(org, "ana@example.com", max_tokens=500_000)
    bo = await api.user(org, "bo@example.com", max_tokens=300_000)
    batch = await saved(
        api,
        org,
        {"user": ana["id"], "max_tokens": 200_000},
        {"user": bo["id"], "max_tokens": 200_000},
    )
    await api.user(org, "cy@example.com", max_tokens=500_000)  # the balance is now 100,000

    preview = await api.post(revert_path(org, batch), {"dry_run": True}, expect=200)
    rows = {r["email"]: r for r in preview["rows"]}
    assert [x["code"] for x in rows["ana@example.com"]["reasons"]] == ["exceeds_balance"]
    assert rows["bo@example.com"]["revertable"]
    assert preview["balance_after"]["inference"]["balance"] == 0
    await api.post(revert_path(org, batch), {}, expect=200)
    assert (await get_user(api, ana["id"]))["max_tokens"] == 200_000
    assert (await get_user(api, bo["id"]))["max_tokens"] == 300_000


async def test_two_reverts_of_one_save_at_once_apply_it_once(api: Api) -> None:
    org, ana, bo = await _org(api)
    batch = await saved(
        api,
        org,
        {"user": ana["id"], "max_tokens": 300_000},
        {"user": bo["id"], "max_tokens": 300_000},
    )
    mark = await last_entry_id(api, org)

    answers = await asyncio.gather(
        *(api.call("POST", revert_path(org, batch), json={}) for _ in range(2))
    )

    assert sorted(a.status_code for a in answers) == [200, 409]
    error_of(next(a for a in answers if a.status_code == 409), 409, "already_reverted")
    assert len(await entries_since(api, org, mark)) == 2
    assert (await api.balance(org))["inference"]["allocated"] == 400_000
