"""The benchmarks' data: a seeded organization with its API key, the balances the
exactness checks read, and `tokenadmin verify`."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar, cast

from sqlalchemy import Table, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.act import Act
from tokenadmin.api_key import service as api_key_service
from tokenadmin.bulk import EMAIL_DOMAIN, seed_users
from tokenadmin.database import Database
from tokenadmin.journal import chain
from tokenadmin.models import JournalEntry, User
from tokenadmin.organization import service as organization_service
from tokenadmin.rows import update_many

KEY_NAME = "bench"  # the journal's actor is "key:bench", as the API writes it
SPREAD_MAX_TOKENS = 10_000_000  # never refused in a run
HOT_MAX_TOKENS = 1_000_000_000_000
BINDING_MAX_TOKENS = 3 * HOT_MAX_TOKENS  # above the balance the seeding leaves: rule 3 binds
T = TypeVar("T")


@dataclass(frozen=True)
class Seeded:
    url: str
    org_id: uuid.UUID
    key: str  # an API key of the organization with the `usage` scope
    minimum: int  # the organization's minimum Max Tokens


@dataclass(frozen=True)
class Balances:
    """What the seeded users of one prefix have used and reserved, and their open
    reservations."""

    used: int
    reserved: int
    open_reservations: int


def _act() -> Act:
    return Act("bench", datetime.now(UTC))


async def _with_database(url: str, work: Callable[[Database], Awaitable[T]]) -> T:
    db = Database(url, pool_size=2)
    try:
        return await work(db)
    finally:
        await db.dispose()


def create_key(url: str, org_id: uuid.UUID, scopes: list[str], name: str = KEY_NAME) -> str:
    """A new API key of the organization; the key itself."""

    async def key(session: AsyncSession) -> str:
        _, secret = await api_key_service.create(
            session, _act(), org_id=org_id, name=name, scopes=scopes
        )
        return secret

    return asyncio.run(_with_database(url, lambda db: db.write(key)))


def create_organization(url: str, name: str, capacity: int) -> Seeded:
    """An organization that bought `capacity` inference tokens, with a `usage` key."""

    async def organization(session: AsyncSession) -> tuple[uuid.UUID, int]:
        act = _act()
        org = await organization_service.create(session, act, name=name)
        await organization_service.record_purchase(
            session,
            act,
            org,
            inference_amount=capacity,
            training_amount=0,
            purchased_on=None,
            expires_at=None,
            payer="bench",
            note=f"capacity for the benchmark ({name})",
        )
        return org.id, org.min_inference

    org_id, minimum = asyncio.run(_with_database(url, lambda db: db.write(organization)))
    return Seeded(url, org_id, create_key(url, org_id, ["usage"]), minimum)


def add_users(url: str, org_id: uuid.UUID, count: int, *, max_tokens: int, prefix: str) -> None:
    """`count` more users with this prefix (`bulk.seed_users`: numbered after earlier ones)."""

    async def work(db: Database) -> None:
        await seed_users(db, org_id, count, max_tokens=max_tokens, prefix=prefix, act=_act())

    asyncio.run(_with_database(url, work))


def make_binding(url: str, org_id: uuid.UUID) -> None:
    """Overallocation on and one user more, whose allowance takes the organization's
    allocated inference tokens above its capacity: from now on rule 3 binds, and every
    metering transaction must also fit the organization's usage of the period."""

    async def work(db: Database) -> None:
        async def overallocate(session: AsyncSession) -> None:
            act = _act()
            org = await organization_service.lock_for_change(session, act, org_id)
            await organization_service.update_policy(session, act, org, {"overallocation": True})

        await db.write(overallocate)
        await seed_users(db, org_id, 1, max_tokens=BINDING_MAX_TOKENS, prefix="bind", act=_act())

    asyncio.run(_with_database(url, work))


def seed_metering(url: str, users: int) -> Seeded:
    """The metering benchmark's organization: `users` spread users and one hot user."""
    capacity = users * SPREAD_MAX_TOKENS + 2 * HOT_MAX_TOKENS
    seeded = create_organization(url, "Bench Metering", capacity)
    add_users(url, seeded.org_id, users, max_tokens=SPREAD_MAX_TOKENS, prefix="user")
    add_users(url, seeded.org_id, 1, max_tokens=HOT_MAX_TOKENS, prefix="hot")
    return seeded


def balances(url: str, prefix: str) -> Balances:
    """Used and reserved tokens of the seeded users with this prefix, and their open
    reservations."""
    pattern = {"p": f"{prefix}%@{EMAIL_DOMAIN}"}

    async def work(session: AsyncSession) -> Balances:
        row = (
            await session.execute(
                text(
                    "SELECT coalesce(sum(inference_used), 0), coalesce(sum(inference_reserved), 0)"
                    " FROM users WHERE email LIKE :p"
                ),
                pattern,
            )
        ).one()
        open_count = await session.scalar(
            text(
                "SELECT count(*) FROM reservations r JOIN users u ON u.id = r.user_id"
                " WHERE r.status = 'open' AND u.email LIKE :p"
            ),
            pattern,
        )
        return Balances(int(row[0]), int(row[1]), int(open_count or 0))

    return asyncio.run(_with_database(url, lambda db: db.read(work)))


def settled(url: str, prefix: str, *, quiet: float = 1.0, limit: float = 60.0) -> Balances:
    """The balances once they stop changing (no change for `quiet` seconds, `limit` at
    most): after a run with unanswered requests, the server may still be committing them,
    and they belong to this run, not to the next."""
    last = balances(url, prefix)
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = balances(url, prefix)
        if now == last:
            break
        last = now
    return last


@dataclass(frozen=True)
class Trace:
    """What the database holds of one wrk run (its keys begin with the run's id): the
    idempotency records of its keys by status code, and the journal entries of the
    organization written since `Mark`, by action. A request the server committed but
    whose answer the client never got is in both, once."""

    records: dict[int, int]
    entries: dict[str, int]

    def recorded(self, *statuses: int) -> int:
        return sum(self.records.get(status, 0) for status in statuses)


def journal_mark(url: str) -> int:
    """The journal's last id: `trace` counts the entries after it."""

    async def work(session: AsyncSession) -> int:
        return int(
            await session.scalar(text("SELECT coalesce(max(id), 0) FROM journal_entries")) or 0
        )

    return asyncio.run(_with_database(url, lambda db: db.read(work)))


def trace(url: str, org_id: uuid.UUID, run: str, mark: int) -> Trace:
    """The idempotency records of the run's keys, and the journal entries since `mark`."""

    async def work(session: AsyncSession) -> Trace:
        # The range lets the (scope, key) index find the run's keys (LIKE alone cannot, in a
        # collation other than C) among every key the organization has; LIKE keeps the
        # count to them. In any collation, run + "-digits" sorts between run and run + "z".
        records = await session.execute(
            text(
                "SELECT status_code, count(*) FROM idempotency_records"
                " WHERE scope = :scope AND key >= :run AND key < :past AND key LIKE :keys"
                " GROUP BY status_code"
            ),
            {"scope": f"org:{org_id}", "run": run, "past": f"{run}z", "keys": f"{run}-%"},
        )
        org = org_id if session.get_bind().dialect.name == "postgresql" else org_id.hex
        entries = await session.execute(
            text(
                "SELECT action, count(*) FROM journal_entries"
                " WHERE id > :mark AND org_id = :org GROUP BY action"
            ),
            {"mark": mark, "org": org},
        )
        return Trace(
            {int(status): int(n) for status, n in records},
            {str(action): int(n) for action, n in entries},
        )

    return asyncio.run(_with_database(url, lambda db: db.read(work)))


def seal(url: str) -> int:
    """Chain the journal entries the limits wrote (bare SQL: no hashes) into their users'
    hash chains, as the service would have; how many. The limits leave the hashing out
    (so they are an upper bound of the work), and this runs after each, before the API
    writes after them on the same users."""
    return asyncio.run(_with_database(url, lambda db: db.write(_seal)))


async def _seal(session: AsyncSession) -> int:
    if session.get_bind().dialect.name == "postgresql":
        # The journal is append-only for the service; the benchmark acts as the owner.
        await session.execute(text("SET LOCAL session_replication_role = replica"))
    entries = cast(Table, JournalEntry.__table__)
    columns = [entries.c.id, *(entries.c[name] for name in chain.CONTENT)]
    unsealed = (
        await session.execute(
            select(*columns).where(entries.c.hash.is_(None)).order_by(entries.c.id)
        )
    ).all()
    if not unsealed:
        return 0
    users = cast(Table, User.__table__)
    user_ids = list({row.user_id for row in unsealed})
    heads: dict[chain.Chain, str] = {}
    for start in range(0, len(user_ids), 10_000):
        statement = select(users.c.id, users.c.journal_head).where(
            users.c.id.in_(user_ids[start : start + 10_000])
        )
        heads |= {("user", owner): head for owner, head in await session.execute(statement)}
    updates = []
    for row in unsealed:
        entry = row._mapping
        key = chain.chain_of(entry)
        previous = heads.get(key)
        heads[key] = chain.link(previous, entry)
        updates.append({"id": row.id, "prev_hash": previous, "hash": heads[key]})
    for start in range(0, len(updates), 50_000):
        await session.run_sync(update_many, entries, "id", updates[start : start + 50_000])
    head_rows = [{"id": owner, "journal_head": head} for (_, owner), head in heads.items()]
    await session.run_sync(update_many, users, "id", head_rows)
    return len(updates)


def tokenadmin_command() -> str:
    return str(Path(sys.executable).parent / "tokenadmin")


def verify(url: str) -> tuple[bool, str]:
    """`tokenadmin verify --json` on the database: clean, and what it replayed."""
    command = [tokenadmin_command(), "verify", "--json"]
    env = {**os.environ, "TOKENADMIN_DATABASE_URL": url}
    answer = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    try:
        report = json.loads(answer.stdout)
    except json.JSONDecodeError:
        return False, f"verify exited {answer.returncode}: {answer.stderr[-500:]}"
    summary = (
        f"{report['entries']:,} entries, {report['users']:,} users,"
        f" {len(report['differences'])} differences"
    )
    return bool(report["clean"]), summary
