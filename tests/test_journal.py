"""The journal: reading it (filters, pages) and proving the balances with `verify`."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from tests.helpers import Api, funded_org
from tests.scenarios import error_of, journal, org_api, utc
from tokenadmin.act import Act
from tokenadmin.clock import FakeClock
from tokenadmin.database import Database
from tokenadmin.journal import chain
from tokenadmin.journal import service as journal_service
from tokenadmin.journal.service import verify
from tokenadmin.models import JournalEntry
from tokenadmin.organization import service as organization_service


async def _busy_org(api: Api) -> tuple[str, dict[str, Any], dict[str, Any]]:
    org = await funded_org(api)
    ana = await api.user(org, "ana@example.com", max_train_tokens=20_000)
    bo = await api.user(org, "bo@example.com")
    await api.use(ana["id"], 1_000, expect=200)
    await api.use(ana["id"], 2_000, "training", expect=200)
    await api.use(bo["id"], 3_000, expect=200)
    return org, ana, bo


async def test_the_journal_filters_by_user(api: Api) -> None:
    org, ana, bo = await _busy_org(api)
    entries = await journal(api, org, user=ana["id"])
    assert {e["user_id"] for e in entries} == {ana["id"]}
    assert [(e["action"], e["kind"], e["amount"]) for e in entries] == [
        ("user_created", "inference", 200_000),
        ("user_created", "training", 20_000),
        ("usage", "inference", 1_000),
        ("usage", "training", 2_000),
    ]
    assert [e["amount"] for e in await journal(api, org, user=bo["id"], action="usage")] == [3_000]


async def test_the_journal_user_filter_takes_an_id_or_an_email_as_metering_does(api: Api) -> None:
    org, ana, _bo = await _busy_org(api)
    other = await funded_org(api)
    stranger = await api.user(other, "stranger@example.com")

    by_id = await journal(api, org, user=ana["id"])
    assert await journal(api, org, user="ana@example.com") == by_id
    assert await journal(api, org, user=" ANA@Example.com") == by_id

    path = f"/v1/organizations/{org}/journal"
    for unknown in ("nobody@example.com", stranger["id"], stranger["email"], str(uuid.uuid4())):
        details = error_of(
            await api.call("GET", path, params={"user": unknown}), 404, "user_not_found"
        )
        assert details == {}
    error_of(await api.use("nobody@example.com", 1), 404, "user_not_found")  # as metering does


async def test_the_journal_filters_by_kind_and_action(api: Api) -> None:
    org, ana, bo = await _busy_org(api)
    training = await journal(api, org, kind="training")
    assert {e["kind"] for e in training} == {"training"}
    assert [e["action"] for e in training] == [
        "purchase",
        "user_created",
        "user_created",
        "usage",
    ]
    usage = await journal(api, org, action="usage")
    assert [(e["user_id"], e["amount"]) for e in usage] == [
        (ana["id"], 1_000),
        (ana["id"], 2_000),
        (bo["id"], 3_000),
    ]
    assert await journal(api, org, action="no_such_action") == []
    error_of(
        await api.call("GET", f"/v1/organizations/{org}/journal", params={"kind": "gold"}),
        422,
        "invalid_request",
    )


async def test_the_journal_filters_by_actor(api: Api) -> None:
    org, ana, _ = await _busy_org(api)
    service = await org_api(api, org, "usage")
    await service.use(ana["id"], 5, expect=200)
    entries = await journal(api, org, actor="key:key-usage")
    assert [(e["action"], e["amount"]) for e in entries] == [("usage", 5)]


async def test_the_actor_filter_reads_wildcards_and_the_escape_character_literally(
    api: Api,
) -> None:
    """An actor holds a key's name, which may hold % and _: the filter finds them as
    characters, on both databases, not as LIKE's wildcards (nor / or \\ as its escape)."""
    org, ana, _ = await _busy_org(api)
    names = ["meter%team", "meter_team", "meterXteam", "meter/team", "meter\\team"]
    for amount, name in enumerate(names, start=1):
        key = await api.post(
            f"/v1/organizations/{org}/api-keys", {"name": name, "scopes": ["usage"]}, expect=201
        )
        await api.as_key(key["key"]).use(ana["id"], amount, expect=200)

    async def found(actor: str) -> list[str]:
        return [e["actor"] for e in await journal(api, org, actor=actor)]

    assert await found("%") == ["key:meter%team"]
    assert await found("%team") == ["key:meter%team"]
    assert await found("_") == ["key:meter_team"]
    assert await found("r_t") == ["key:meter_team"]
    assert await found("/") == ["key:meter/team"]
    assert await found("\\") == ["key:meter\\team"]
    assert await found("meter") == [f"key:{name}" for name in names]
    assert await found("key:meter_team") == ["key:meter_team"]
    assert await found("METER%TEAM") == ["key:meter%team"]  # in any case, on both databases


async def test_the_journal_filters_by_time(api: Api, clock: FakeClock) -> None:
    org = await funded_org(api)
    ana = await api.user(org)
    clock.set(utc("2026-03-16 09:00"))
    await api.use(ana["id"], 1, expect=200)
    clock.set(utc("2026-03-17 09:00"))
    await api.use(ana["id"], 2, expect=200)
    clock.set(utc("2026-03-18 09:00"))
    await api.use(ana["id"], 3, expect=200)

    def amounts(entries: list[dict[str, Any]]) -> list[int]:
        return [e["amount"] for e in entries if e["action"] == "usage"]

    assert amounts(await journal(api, org, since="2026-03-17T09:00:00Z")) == [2, 3]
    assert amounts(await journal(api, org, until="2026-03-17T09:00:00Z")) == [1]
    window = await journal(
        api, org, since="2026-03-16T11:00:00+01:00", until="2026-03-18T00:00:00Z"
    )
    assert amounts(window) == [2]
    assert [e["created_at"] for e in window] == ["2026-03-17T09:00:00Z"]


async def test_a_time_filter_without_an_offset_is_not_a_server_error(
    api: Api, app: FastAPI
) -> None:
    org = await funded_org(api)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://tokenadmin.test") as client:
        response = await client.get(
            f"/v1/organizations/{org}/journal",
            params={"since": "2026-03-15T00:00:00"},
            headers=api.headers(),
        )
    assert response.status_code in (200, 422), response.text
    if response.status_code == 422:
        error_of(response, 422, "invalid_request")


async def _pages(api: Api, org: str, limit: int) -> AsyncIterator[dict[str, Any]]:
    params: dict[str, Any] = {"limit": limit}
    while True:
        page = await api.get(f"/v1/organizations/{org}/journal", params=params)
        yield page
        if page["next_before_id"] is None:
            return
        params["before_id"] = page["next_before_id"]


async def test_the_journal_pages_newest_first_with_before_id(api: Api) -> None:
    org = await funded_org(api)
    ana = await api.user(org)
    for tokens in range(1, 8):
        await api.use(ana["id"], tokens, expect=200)
    everything = await journal(api, org)
    assert len(everything) == 12

    pages = [page async for page in _pages(api, org, 5)]

    assert [len(p["entries"]) for p in pages] == [5, 5, 2]
    ids = [e["id"] for p in pages for e in p["entries"]]
    assert ids == sorted((e["id"] for e in everything), reverse=True)
    assert pages[0]["entries"][0]["amount"] == 7
    assert pages[0]["next_before_id"] == pages[0]["entries"][-1]["id"]
    usage_pages = await api.get(
        f"/v1/organizations/{org}/journal",
        params={"action": "usage", "limit": 3, "before_id": ids[2]},
    )
    assert [e["amount"] for e in usage_pages["entries"]] == [4, 3, 2]


async def test_the_journal_offers_no_way_to_change_entries(api: Api) -> None:
    org, _, _ = await _busy_org(api)
    path = f"/v1/organizations/{org}/journal"
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        error_of(await api.call(method, path, json={}), 405, "method_not_allowed")
    error_of(await api.call("DELETE", f"{path}/1"), 404, "not_found")


async def test_the_journal_needs_the_read_scope(api: Api) -> None:
    org, _, _ = await _busy_org(api)
    reader = await org_api(api, org, "read")
    assert len((await reader.get(f"/v1/organizations/{org}/journal"))["entries"]) > 0
    service = await org_api(api, org, "usage")
    error_of(await service.call("GET", f"/v1/organizations/{org}/journal"), 403, "forbidden")


# --- verify ----------------------------------------------------------------------------------


async def _execute(db: Database, sql: str, **params: Any) -> None:
    """Change stored rows behind the service's back, as someone with the database's owner
    rights could (on PostgreSQL the journal's append-only trigger is switched off for it)."""

    async def work(session: AsyncSession) -> None:
        if db.dialect == "postgresql":
            await session.execute(text("SET LOCAL session_replication_role = replica"))
        await session.execute(text(sql), params)

    await db.write(work)


async def test_verify_is_clean_after_every_kind_of_change(
    api: Api, db: Database, clock: FakeClock
) -> None:
    org, ana, bo = await _busy_org(api)
    await api.purchase(org, 100_000, expires_at="2026-03-20T00:00:00Z")
    await api.allowances(org, {"user": bo["id"], "max_tokens": 300_000}, expect=200)
    held = await api.post(
        "/v1/reservations", {"user": ana["id"], "kind": "inference", "tokens": 9}, expect=201
    )
    await api.post(f"/v1/reservations/{held['id']}/commit", {"tokens": 4}, expect=200)
    await api.post(f"/v1/users/{bo['id']}/deactivate", expect=200)
    clock.set(utc("2026-04-02 00:00"))
    await api.use(ana["id"], 10, expect=200)

    report = await db.read(verify)

    assert report.clean, report.differences
    assert report.entries == len(await journal(api, org))
    actions = {e["action"] for e in await journal(api, org)}
    assert {"purchase_expired", "period_started", "period_reset", "commit"} <= actions


@pytest.mark.tampers
async def test_verify_detects_a_tampered_allowance(api: Api, db: Database) -> None:
    await _busy_org(api)

    await _execute(
        db, "UPDATE users SET max_tokens = 999999 WHERE email = :email", email="ana@example.com"
    )
    report = await db.read(verify)

    assert not report.clean
    assert any(
        "ana@example.com" in d and "allowance" in d and "stored 999,999, expected 200,000" in d
        for d in report.differences
    ), report.differences
    assert any("allocated vs allowances" in d for d in report.differences), report.differences


@pytest.mark.tampers
async def test_verify_detects_a_tampered_usage_counter(api: Api, db: Database) -> None:
    await _busy_org(api)
    await _execute(
        db, "UPDATE users SET inference_used = 0 WHERE email = :email", email="bo@example.com"
    )
    report = await db.read(verify)
    assert any(
        "bo@example.com" in d and "used: stored 0, expected 3,000" in d for d in report.differences
    ), report.differences


@pytest.mark.tampers
async def test_verify_detects_a_tampered_capacity(api: Api, db: Database) -> None:
    await _busy_org(api)
    await _execute(db, "UPDATE organizations SET capacity_inference = capacity_inference + 1")
    report = await db.read(verify)
    assert any("capacity: stored 1,000,001, expected 1,000,000" in d for d in report.differences)
    assert any("capacity vs purchases" in d for d in report.differences)


@pytest.mark.tampers
async def test_verify_detects_a_tampered_journal_entry(api: Api, db: Database) -> None:
    org, _, _ = await _busy_org(api)
    [entry] = await journal(api, org, action="usage", kind="training")
    await _execute(db, "UPDATE journal_entries SET used_delta = 1 WHERE id = :id", id=entry["id"])
    report = await db.read(verify)
    assert any(f"entry {entry['id']}: used_after 2000 != replay 1" in d for d in report.differences)
    assert any("used: stored 2,000, expected 1" in d for d in report.differences)


# --- the hash chains --------------------------------------------------------------------------


async def test_chains_of_more_users_than_one_query_takes_are_linked(
    api: Api, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A change of many users at once reads their chains' heads a few thousand at a time
    # (PostgreSQL takes at most 32,767 parameters); here, two at a time.
    monkeypatch.setattr(journal_service, "HEADS_PER_QUERY", 2)
    org = await funded_org(api, inference=2_000_000)
    users = [await api.user(org, f"u{i}@example.com") for i in range(5)]
    await api.allowances(
        org, *({"user": u["id"], "max_tokens": 200_001} for u in users), expect=200
    )
    report = await db.read(verify)
    assert report.clean, report.differences


async def _usage_entries(api: Api, org: str, user_id: str) -> list[dict[str, Any]]:
    return await journal(api, org, user=user_id, action="usage")


@pytest.mark.tampers
async def test_verify_names_an_entry_changed_even_when_the_balances_still_add_up(
    api: Api, db: Database
) -> None:
    org, ana, _ = await _busy_org(api)
    [entry, _training] = await _usage_entries(api, org, ana["id"])
    # Only the model name: no balance moves, so only the chain can tell.
    await _execute(
        db,
        "UPDATE journal_entries SET actor = 'key:someone-else' WHERE id = :id",
        id=entry["id"],
    )
    report = await db.read(verify)
    assert report.differences == [
        f"entry {entry['id']}: changed since it was written (it no longer matches its hash)"
    ]


@pytest.mark.tampers
async def test_verify_names_where_an_entry_was_removed(api: Api, db: Database) -> None:
    org, ana, _ = await _busy_org(api)
    first, second = await _usage_entries(api, org, ana["id"])
    await _execute(db, "DELETE FROM journal_entries WHERE id = :id", id=first["id"])
    report = await db.read(verify)
    assert any(
        d.startswith(f"entry {second['id']}: the journal of user {ana['id']}")
        and "removed or inserted" in d
        for d in report.differences
    ), report.differences


@pytest.mark.tampers
async def test_verify_names_an_inserted_entry(api: Api, db: Database) -> None:
    org, ana, _ = await _busy_org(api)
    first, _second = await _usage_entries(api, org, ana["id"])
    # A copy of an entry that moves no balance, hashes and all, added to the journal.
    await _execute(
        db,
        "INSERT INTO journal_entries (id, org_id, user_id, created_at, actor, action, kind,"
        " amount, capacity_delta, allocated_delta, allowance_delta, used_delta,"
        " reserved_delta, prev_hash, hash)"
        " SELECT (SELECT max(id) + 1 FROM journal_entries), org_id, user_id, created_at,"
        " actor, action, kind, amount, 0, 0, 0, 0, 0, prev_hash, hash"
        " FROM journal_entries WHERE id = :id",
        id=first["id"],
    )
    report = await db.read(verify)
    last = (await journal(api, org))[-1]["id"]
    assert any(
        d.startswith(f"entry {last}: the journal of user {ana['id']} does not continue")
        for d in report.differences
    ), report.differences


@pytest.mark.tampers
async def test_verify_sees_entries_removed_from_the_end_of_a_journal(
    api: Api, db: Database
) -> None:
    org, ana, _ = await _busy_org(api)
    entries = await journal(api, org, user=ana["id"])
    # The newest entry of ana's chain, a usage of training tokens, and its balance with it.
    await _execute(db, "DELETE FROM journal_entries WHERE id = :id", id=entries[-1]["id"])
    await _execute(db, "UPDATE users SET training_used = 0 WHERE email = 'ana@example.com'")
    report = await db.read(verify)
    assert any(
        f"the journal of user {ana['id']} ends at entry {entries[-2]['id']}" in d
        for d in report.differences
    ), report.differences


async def _run(db: Database, sql: str) -> None:
    async def work(session: AsyncSession) -> None:
        await session.execute(text(sql))

    await db.write(work)


async def test_on_postgresql_the_service_cannot_change_or_remove_journal_entries(
    pg: Database,
) -> None:
    act = Act("test", utc("2026-03-15 12:00"))
    await pg.write(lambda s: organization_service.create(s, act, name="Ledger"))
    for statement in (
        "UPDATE journal_entries SET amount = amount + 1",
        "DELETE FROM journal_entries",
        "TRUNCATE journal_entries",
    ):
        with pytest.raises(DBAPIError, match="journal entries are never changed or removed"):
            await _run(pg, statement)


def test_every_action_recorded_anywhere_is_listed_in_actions() -> None:
    import re
    from pathlib import Path

    from tokenadmin.journal.service import ACTIONS

    root = Path(__file__).parent.parent / "tokenadmin"
    named: set[str] = set()
    for path in root.rglob("*.py"):
        text = path.read_text()
        named.update(re.findall(r'record\(\s*(?:[\w.]+,\s*){3}"([a-z_]+)"', text))
        named.update(re.findall(r'action="([a-z_]+)"', text))
        named.update(re.findall(r'"([a-z_]+)" if change\.new else', text))
    assert named, "the search for recorded actions found nothing"
    assert named <= set(ACTIONS), named - set(ACTIONS)


def test_every_column_an_entry_says_is_in_its_hash() -> None:
    """chain.link spells its fields out (it runs for every entry verify reads): every
    column of an entry but its id and hashes is in CONTENT, and changing any of them, or
    the hash before it, changes the entry's hash."""
    columns = {column.name for column in JournalEntry.__table__.columns}
    assert set(chain.CONTENT) == columns - {"id", "prev_hash", "hash"}
    entry: dict[str, Any] = {
        "org_id": uuid.uuid4(),
        "user_id": uuid.uuid4(),
        "purchase_id": None,
        "reservation_id": None,
        "created_at": datetime(2026, 3, 15, 12, 0, tzinfo=UTC),
        "actor": "key:meter",
        "action": "usage",
        "kind": "inference",
        "amount": 100,
        "reason": None,
        "capacity_delta": 0,
        "allocated_delta": 0,
        "allowance_delta": 0,
        "used_delta": 100,
        "reserved_delta": 0,
        "capacity_after": 1_000,
        "allocated_after": 500,
        "allowance_after": 200,
        "used_after": 100,
        "reserved_after": 0,
        "details": {"model": "m"},
    }
    changed = {
        "org_id": uuid.uuid4(),
        "user_id": None,
        "purchase_id": uuid.uuid4(),
        "reservation_id": uuid.uuid4(),
        "created_at": datetime(2026, 3, 15, 12, 0, 0, 1, tzinfo=UTC),
        "actor": "key:other",
        "action": "commit",
        "kind": "training",
        "amount": 101,
        "reason": "",
        "details": {"model": "n"},
    }
    original = chain.link("a" * 64, entry)
    assert chain.link("b" * 64, entry) != original
    assert chain.link(None, entry) != original
    for name in chain.CONTENT:
        value = changed[name] if name in changed else (entry[name] or 0) + 1
        assert chain.link("a" * 64, {**entry, name: value}) != original, name
