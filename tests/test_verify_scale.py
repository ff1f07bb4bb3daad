"""verify at scale (journal/verify.py) and the hash it checks (journal/chain.py).

`chain.link` was made faster; every hash stored before must still check, so the new one
must give the same hex as the one it replaced for every entry, whatever its values. And
verify split across processes must report what one process reports, in the same order.
"""

from __future__ import annotations

import json
import random
import uuid
from datetime import UTC, datetime, timedelta, timezone
from functools import partial
from hashlib import sha256
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from tests.helpers import Api, funded_org
from tests.scenarios import journal, reserve
from tokenadmin.database import Database
from tokenadmin.journal import chain
from tokenadmin.journal import verify as verify_module
from tokenadmin.journal.schemas import CHANGES
from tokenadmin.journal.service import append, verify

POSTGRESQL_ONLY = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


def _link_as_it_was(previous: str | None, entry: dict[str, Any]) -> str:
    """chain.link before it was made faster, verbatim in what it hashes."""
    created_at: datetime = entry["created_at"]
    if created_at.tzinfo is not UTC:
        created_at = created_at.astimezone(UTC)

    def text_of(value: uuid.UUID | None) -> str | None:
        return None if value is None else str(value)

    content = [
        previous or "",
        str(entry["org_id"]),
        text_of(entry["user_id"]),
        text_of(entry["purchase_id"]),
        text_of(entry["reservation_id"]),
        created_at.isoformat(timespec="microseconds"),
        entry["actor"],
        entry["action"],
        entry["kind"],
        entry["amount"],
        entry["reason"],
        entry["capacity_delta"],
        entry["allocated_delta"],
        entry["allowance_delta"],
        entry["used_delta"],
        entry["reserved_delta"],
        entry["capacity_after"],
        entry["allocated_after"],
        entry["allowance_after"],
        entry["used_after"],
        entry["reserved_after"],
        entry["details"],
    ]
    dumps = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode
    return sha256(dumps(content).encode()).hexdigest()


ZONES = [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))]
DETAILS: list[Any] = [
    None,
    {},
    {"model": "gpt-4o"},
    {"before": 0, "after": 2**53, "batch": str(uuid.uuid4()), "version": 7},
    {"zeta": 1, "alpha": [1, 2, {"b": None, "a": True}], "mid": False},
    {"naïve": "Ünïcödé ✓ 中文 🚀", "quote": 'say "hi"\\', "control": "tab\there\nnewline"},
    {"big": 10**30, "negative": -(2**63), "float": 1.5, "tiny": 1e-7, "huge": 1e16},
    {"nested": {"deeper": {"deepest": ["x", "y"]}}, "empty": [], "obj": {}},
    {"\u2028": "line separator", "emoji key 😀": "v", "nul-free": "\u00e9"},
]
TEXTS = [None, "", "key:bench", "user:ana@example.com", "Ünïcödé ✓ 🚀", 'q"uote\\', "a\nb\tc"]


def _random_entry(rng: random.Random) -> dict[str, Any]:
    def maybe_uuid() -> uuid.UUID | None:
        return uuid.UUID(int=rng.getrandbits(128)) if rng.random() < 0.5 else None

    def amount() -> int | None:
        return rng.choice([None, 0, 1, -1, 2**53, -(2**53), 10**25, rng.randrange(-1000, 1000)])

    created = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(
        seconds=rng.randrange(0, 10**8), microseconds=rng.choice([0, 1, 999_999, 123_456])
    )
    return {
        "org_id": uuid.UUID(int=rng.getrandbits(128)),
        "user_id": maybe_uuid(),
        "purchase_id": maybe_uuid(),
        "reservation_id": maybe_uuid(),
        "created_at": created.astimezone(rng.choice(ZONES)),
        "actor": rng.choice([t for t in TEXTS if t is not None]),
        "action": rng.choice(["usage", "allowance_changed", "user_created"]),
        "kind": rng.choice([None, "inference", "training"]),
        "amount": rng.choice([0, 1, 2**53, 10**20]),
        "reason": rng.choice(TEXTS),
        "capacity_delta": rng.choice([0, 5, -5, 2**62]),
        "allocated_delta": rng.choice([0, 7, -7]),
        "allowance_delta": rng.choice([0, 9, -9]),
        "used_delta": rng.choice([0, 1, -1]),
        "reserved_delta": rng.choice([0, 3, -3]),
        "capacity_after": amount(),
        "allocated_after": amount(),
        "allowance_after": amount(),
        "used_after": amount(),
        "reserved_after": amount(),
        "details": rng.choice(DETAILS),
    }


def test_link_gives_the_hash_it_always_gave_for_every_kind_of_entry() -> None:
    rng = random.Random(14)
    previous: str | None = None
    for _ in range(3_000):
        entry = _random_entry(rng)
        expected = _link_as_it_was(previous, entry)
        assert chain.link(previous, entry) == expected, entry
        assert chain.link_encoded(previous, entry, chain.details_json(entry["details"])) == (
            expected
        )
        previous = expected if rng.random() < 0.8 else None


def test_link_of_every_details_given_spells_them_as_json_did() -> None:
    entry = _random_entry(random.Random(1))
    for details in DETAILS:
        entry["details"] = details
        assert chain.link("ab" * 32, entry) == _link_as_it_was("ab" * 32, entry)
        assert json.loads(chain.details_json(details)) == details


def test_link_refuses_what_json_refuses() -> None:
    entry = _random_entry(random.Random(2))
    entry["details"] = {"when": datetime.now(UTC)}
    with pytest.raises(TypeError):
        chain.link(None, entry)


# --- verify split across processes ------------------------------------------------------


async def _tamper(db: Database, sql: str, **params: Any) -> None:
    async def work(session: AsyncSession) -> None:
        if db.dialect == "postgresql":
            await session.execute(text("SET LOCAL session_replication_role = replica"))
        await session.execute(text(sql), params)

    await db.write(work)


def _stored_id(db: Database, id_: str) -> str:
    """A uuid as the database stores it (SQLite: 32 hex digits), for bare SQL."""
    return uuid.UUID(id_).hex if db.dialect == "sqlite" else id_


async def _some_history(api: Api) -> tuple[str, list[dict[str, Any]]]:
    org = await funded_org(api, inference=10_000_000, training=1_000_000)
    users = [await api.user(org, f"v{i}@example.com") for i in range(8)]
    for index, user in enumerate(users):
        await api.use(user["id"], 100 + index, expect=200)
        await api.use(user["id"], 1, expect=200)
    await api.allowances(
        org, *({"user": u["id"], "max_tokens": 300_000} for u in users), expect=200
    )
    return org, users


@pytest.mark.tampers
async def test_verify_in_processes_reports_what_one_process_reports(api: Api, db: Database) -> None:
    org, users = await _some_history(api)
    split = await db.read(partial(verify, workers=3), snapshot=True)
    assert split.clean, split.differences
    alone = await db.read(partial(verify, workers=1), snapshot=True)
    assert (split.entries, split.users, split.organizations) == (
        alone.entries,
        alone.users,
        alone.organizations,
    )
    assert split.entries == len(await journal(api, org))

    # Damage of every kind, in several users' chains and in the organization's.
    entries = await journal(api, org)
    usage = [e for e in entries if e["action"] == "usage"]
    await _tamper(db, "UPDATE journal_entries SET actor = 'x' WHERE id = :id", id=usage[0]["id"])
    await _tamper(db, "UPDATE journal_entries SET used_delta = 7 WHERE id = :id", id=usage[3]["id"])
    await _tamper(db, "DELETE FROM journal_entries WHERE id = :id", id=usage[5]["id"])
    await _tamper(
        db, "UPDATE users SET inference_used = 0 WHERE id = :id", id=_stored_id(db, users[6]["id"])
    )
    await _tamper(db, "UPDATE organizations SET allocated_inference = allocated_inference + 1")
    purchase = [e for e in entries if e["user_id"] is None][-1]
    await _tamper(db, "DELETE FROM journal_entries WHERE id = :id", id=purchase["id"])

    alone = await db.read(partial(verify, workers=1), snapshot=True)
    split = await db.read(partial(verify, workers=3), snapshot=True)
    assert len(alone.differences) >= 6, alone.differences
    assert split.differences == alone.differences
    assert (split.entries, split.users) == (alone.entries, alone.users)


async def test_verify_splits_a_big_journal_across_processes_by_itself(
    api: Api, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _some_history(api)
    split_into: list[int] = []
    bounds = verify_module._bounds

    async def recorded(session: AsyncSession, workers: int) -> list[Any]:
        split_into.append(workers)
        return await bounds(session, workers)

    monkeypatch.setattr(verify_module, "PARALLEL_FROM", 10)
    monkeypatch.setattr(verify_module, "_bounds", recorded)
    seen: list[int] = []
    report = await db.read(partial(verify, progress=seen.append), snapshot=True)
    assert report.clean, report.differences
    assert split_into == [verify_module.WORKERS]
    assert seen
    assert seen[-1] == report.entries


@pytest.mark.tampers
async def test_verify_in_processes_beside_writes_reports_no_false_difference_nor_misses_one(
    api: Api, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The workers read after the caller's snapshot was taken (SQLite: in snapshots of their
    own, taken later), while the service writes in every way verify checks: new entries
    of checked users, an open reservation, allowances moving an organization's allocated,
    a purchase in an organization's chain, a new user, a new organization. verify reports
    the damage made before it, and only that."""
    org, users = await _some_history(api)
    entries = await journal(api, org)
    first = next(e for e in entries if e["action"] == "usage" and e["user_id"] == users[0]["id"])
    await _tamper(db, "UPDATE journal_entries SET actor = 'x' WHERE id = :id", id=first["id"])
    await _tamper(
        db, "UPDATE users SET inference_used = 0 WHERE id = :id", id=_stored_id(db, users[1]["id"])
    )
    damage = (await db.read(partial(verify, workers=1), snapshot=True)).differences
    assert len(damage) >= 2, damage

    bounds = verify_module._bounds
    written: list[str] = []

    async def after_the_snapshot(session: AsyncSession, workers: int) -> list[Any]:
        await api.use(users[2]["id"], 5, expect=200)
        await reserve(api, users[3]["id"], 50)
        await api.allowances(org, {"user": users[4]["id"], "max_tokens": 400_000}, expect=200)
        await api.purchase(org, 1_000, 0)
        newcomer = await api.user(org, "late@example.com")
        await api.use(newcomer["id"], 3, expect=200)
        other = await funded_org(api)
        await api.use((await api.user(other, "elsewhere@example.com"))["id"], 2, expect=200)
        written.append(other)
        return await bounds(session, workers)

    monkeypatch.setattr(verify_module, "_bounds", after_the_snapshot)
    split = await db.read(partial(verify, workers=2), snapshot=True)
    assert written
    assert split.differences == damage
    monkeypatch.undo()
    assert (await db.read(partial(verify, workers=1), snapshot=True)).differences == damage


@POSTGRESQL_ONLY
async def test_verify_in_processes_connects_with_the_query_of_the_url(
    api: Api, database_url: str
) -> None:
    """The workers connect as the service does: the URL's query (here `ssl`, which asyncpg
    takes as an argument and PostgreSQL would refuse as a setting) reaches them too."""
    await _some_history(api)
    with_query = Database(f"{database_url}?ssl=disable")
    try:
        alone = await with_query.read(partial(verify, workers=1), snapshot=True)
        split = await with_query.read(partial(verify, workers=2), snapshot=True)
    finally:
        await with_query.dispose()
    assert split.clean, split.differences
    assert (split.entries, split.users) == (alone.entries, alone.users)


# --- verify's own spelling of the hashed text, against chain.link -----------------------

# What a database stores: no NUL (neither text nor jsonb takes it), no lone surrogate (not
# UTF-8), integers of BIGINT.
_TEXT = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=12)
_BIGINT = st.integers(-(2**63), 2**63 - 1)
_ODD_TEXT = st.one_of(
    _TEXT, st.sampled_from(["\\N", "\\", "a\tb\nc\r", '"quoted"', "\u2028\x1f\x7f", "é中🚀"])
)
_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**30), 10**30) | _ODD_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_ODD_TEXT, inner, max_size=3),
    max_leaves=8,
)
_DETAILS = st.none() | st.dictionaries(_ODD_TEXT, _VALUE, max_size=4)  # as entries have them
_CREATED = st.builds(
    lambda moment, micro, zone: moment.replace(microsecond=micro, tzinfo=UTC).astimezone(zone),
    st.datetimes(datetime(2000, 1, 1), datetime(2099, 12, 31)),
    st.sampled_from([0, 1, 10, 120_000, 999_999]),
    st.sampled_from(ZONES),
)


def _odd_entries(org_id: uuid.UUID, user_ids: list[uuid.UUID]) -> list[dict[str, Any]]:
    """Entries of every odd value, from hypothesis (deterministic), as `append` takes them."""
    entry = st.fixed_dictionaries(
        {
            "org_id": st.just(org_id),
            "user_id": st.sampled_from([None, *user_ids]),
            "purchase_id": st.none() | st.uuids(),
            "reservation_id": st.none() | st.uuids(),
            "created_at": _CREATED,
            "actor": _ODD_TEXT,
            "action": _ODD_TEXT,
            "kind": st.sampled_from([None, "inference", "training"]),
            "amount": _BIGINT,
            "reason": st.none() | _ODD_TEXT,
            **{name: _BIGINT for name in CHANGES if name.endswith("_delta")},
            **{name: st.none() | _BIGINT for name in CHANGES if name.endswith("_after")},
            "details": _DETAILS,
        }
    )
    entries: list[dict[str, Any]] = []

    @settings(max_examples=300, database=None, derandomize=True, deadline=None)
    @given(entry)
    def collect(made: dict[str, Any]) -> None:
        entries.append(made)

    collect()
    return entries


async def _chain_findings(db: Database, workers: int) -> tuple[int, list[str]]:
    report = await db.read(partial(verify, workers=workers), snapshot=True)
    chained = [
        difference
        for difference in report.differences
        if "changed since it was written" in difference or "does not continue" in difference
    ]
    return report.entries, chained


@pytest.mark.tampers  # the balances after of these entries are made up: only chains check
async def test_verify_checks_every_odd_value_as_chain_link_hashed_it(
    api: Api, db: Database
) -> None:
    org = await funded_org(api, inference=10_000_000, training=1_000_000)
    users = [uuid.UUID((await api.user(org, f"odd{i}@example.com"))["id"]) for i in range(3)]
    rows = _odd_entries(uuid.UUID(org), users)
    await db.write(lambda session: session.run_sync(lambda sync: append(sync, rows)))
    entries, chained = await _chain_findings(db, workers=1)
    assert entries >= len(rows)
    assert chained == []  # verify's text of each entry hashes as chain.link's did
    assert await _chain_findings(db, workers=2) == (entries, [])

    # And a change of any one of them shows.
    changed = rows[7]["id"]
    await _tamper(db, "UPDATE journal_entries SET actor = actor || 'x' WHERE id = :id", id=changed)
    assert (await _chain_findings(db, workers=1))[1] == [
        f"entry {changed}: changed since it was written (it no longer matches its hash)"
    ]
