"""Many users at once, for load tests, benchmarks and demos.

`seed_users` writes what `user.service.create` would write for each user (the user row and
one `user_created` journal entry per kind with an allowance, with the same deltas and
balances-after), but in bulk INSERTs of a few thousand rows, so 100,000 users take seconds
instead of minutes. Everything happens in one transaction holding the organization's
exclusive lock, and `tokenadmin verify` is clean afterwards.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from uuid6 import uuid7

from tokenadmin.act import Act
from tokenadmin.allowance import service as allowance_service
from tokenadmin.amounts import check_amount
from tokenadmin.clock import SystemClock
from tokenadmin.database import Database
from tokenadmin.errors import InvalidRequest
from tokenadmin.journal import chain
from tokenadmin.models import Organization, User
from tokenadmin.organization.service import current_period, lock_for_change
from tokenadmin.tokens import DEFAULT_MINIMUM, Kind, fmt

EMAIL_DOMAIN = "bulk.example"
MAX_COUNT = 1_000_000
CHUNK = 2_000
PREFIX = re.compile(r"[a-z][a-z0-9.-]{0,39}")
FIRST_NAMES = (
    "Ana", "Ben", "Clara", "David", "Emma", "Felix", "Grace", "Hannah", "Ivan", "Jana",
    "Kenji", "Lea", "Mateo", "Noah", "Olivia", "Priya", "Quinn", "Ravi", "Sophie", "Tom",
    "Uma", "Viktor", "Wei", "Xenia", "Yuki", "Zoe",
)  # fmt: skip
LAST_NAMES = (
    "Okafor", "Schneider", "García", "Tanaka", "Müller", "Sharma", "Hoffmann", "Brown",
    "Novak", "Rossi", "Kowalski", "Nguyen", "Dubois", "Jensen", "Silva", "Cohen", "Larsen",
)  # fmt: skip


def seeded_name(index: int) -> str:
    """ "Clara Tanaka 000123": the number makes it unique, the names make searches vary."""
    first = FIRST_NAMES[index % len(FIRST_NAMES)]
    last = LAST_NAMES[(index // len(FIRST_NAMES)) % len(LAST_NAMES)]
    return f"{first} {last} {index:06d}"


def seeded_email(prefix: str, index: int) -> str:
    return f"{prefix}{index:06d}@{EMAIL_DOMAIN}"


async def seed_users(
    db: Database,
    org_id: uuid.UUID,
    count: int,
    *,
    max_tokens: int = DEFAULT_MINIMUM[Kind.inference],
    max_train_tokens: int = DEFAULT_MINIMUM[Kind.training],
    prefix: str = "user",
    act: Act | None = None,
) -> None:
    """Create `count` active members of one organization, numbered after any earlier ones
    with the same prefix, each with these allowances taken from the balance (rule 4)."""
    if not 1 <= count <= MAX_COUNT:
        raise InvalidRequest(f"The count must be 1 to {fmt(MAX_COUNT)}.")
    if not PREFIX.fullmatch(prefix):
        raise InvalidRequest(
            "The prefix is a lowercase letter, then up to 39 letters, digits, dots or dashes."
        )
    check_amount(max_tokens, field="max_tokens")
    check_amount(max_train_tokens, field="max_train_tokens")
    act = act or Act("bulk", SystemClock().now())
    allowances = {Kind.inference: max_tokens, Kind.training: max_train_tokens}

    async def work(session: AsyncSession) -> None:
        org = await lock_for_change(session, act, org_id)
        allowance_service.check_many_new_users(org, allowances, count)
        first = await _next_index(session, prefix)
        rows = _Rows(org, act, prefix, allowances, postgres=db.dialect == "postgresql")
        for chunk_start in range(first, first + count, CHUNK):
            indexes = range(chunk_start, min(chunk_start + CHUNK, first + count))
            users = [rows.user(i) for i in indexes]
            entries, heads = rows.entries(users)
            # journal_head, the last column: the hash of the user's newest entry.
            users = [(*user[:-1], head) for user, head in zip(users, heads, strict=True)]
            await insert_rows(session, "users", USER_COLUMNS, users)
            await insert_rows(session, "journal_entries", ENTRY_COLUMNS, entries)
        for kind in Kind:
            org.add_allocated(kind, rows.allocated[kind] - org.allocated(kind))
        org.updated_at = act.now

    await db.write(work)
    if db.dialect == "postgresql":
        # The planner's statistics would otherwise describe the table before the load until
        # autovacuum catches up, and it would pick plans for a few users (a scan, say,
        # instead of the trigram index of a search).
        async with db.engine.connect() as connection:
            await connection.execute(text("ANALYZE users, journal_entries"))
            await connection.commit()


async def _next_index(session: AsyncSession, prefix: str) -> int:
    """One past the highest number already used with this prefix (emails are unique)."""
    pattern = prefix + "%@" + EMAIL_DOMAIN  # the prefix has no LIKE wildcards
    shape = re.compile(rf"{re.escape(prefix)}(\d+)@{re.escape(EMAIL_DOMAIN)}")
    highest = -1
    # lower(email), as stored: the trigram index's expression on PostgreSQL (migration 0015)
    found = select(User.email).where(func.lower(User.email).like(pattern))
    for email in await session.scalars(found):
        match = shape.fullmatch(email)
        if match:
            highest = max(highest, int(match.group(1)))
    return highest + 1


USER_COLUMNS = (
    "id", "org_id", "email", "name", "role", "status", "max_tokens", "max_train_tokens",
    "inference_used", "training_used", "inference_reserved", "training_reserved",
    "period_start", "version", "password_hash", "created_at", "updated_at", "last_activity_at",
    "journal_head",
)  # fmt: skip
ENTRY_COLUMNS = (
    "org_id", "user_id", "created_at", "actor", "action", "kind", "amount",
    "capacity_delta", "allocated_delta", "allowance_delta", "used_delta", "reserved_delta",
    "capacity_after", "allocated_after", "allowance_after", "used_after", "reserved_after",
    "details", "prev_hash", "hash",
)  # fmt: skip


class _Rows:
    """Rows as the database driver takes them, bypassing the ORM's per-value processing
    (which would be most of the time): the values the column types would store."""

    def __init__(
        self,
        org: Organization,
        act: Act,
        prefix: str,
        allowances: dict[Kind, int],
        *,
        postgres: bool,
    ) -> None:
        self.postgres = postgres
        self.prefix = prefix
        self.allowances = allowances
        self.actor = act.actor
        self.org = org
        self.at = act.now
        self.org_id = self.uuid(org.id)
        self.now = self.time(act.now)
        self.period_start = self.time(current_period(org, act.now))
        self.capacity = {kind: org.capacity(kind) for kind in Kind}
        self.allocated = {kind: org.allocated(kind) for kind in Kind}

    def uuid(self, value: uuid.UUID) -> Any:
        return value if self.postgres else value.hex  # SQLite: Uuid is CHAR(32)

    def time(self, value: datetime) -> Any:
        value = value.astimezone(UTC)
        # SQLite: UTCDateTime stores naive UTC in SQLAlchemy's DATETIME text format.
        return value if self.postgres else value.strftime("%Y-%m-%d %H:%M:%S.%f")

    def user(self, index: int) -> tuple[Any, ...]:
        inference, training = self.allowances[Kind.inference], self.allowances[Kind.training]
        row = {
            "id": self.uuid(uuid7()),  # time-ordered, as the model's default: fast inserts
            "org_id": self.org_id,
            "email": seeded_email(self.prefix, index),
            "name": seeded_name(index),
            "role": "member",
            "status": "active",
            "max_tokens": inference,
            "max_train_tokens": training,
            "inference_used": 0,
            "training_used": 0,
            "inference_reserved": 0,
            "training_reserved": 0,
            "period_start": self.period_start,
            "version": 1,
            "password_hash": None,
            "created_at": self.now,
            "updated_at": self.now,
            "last_activity_at": None,
            "journal_head": None,  # set once its entries are made
        }
        return tuple(row[column] for column in USER_COLUMNS)

    def entries(self, users: list[tuple[Any, ...]]) -> tuple[list[tuple[Any, ...]], list[str]]:
        """What `journal.service.record` writes when `allowance.service.apply` creates
        these users one after the other (the organization's allocated total runs on), and
        the head of each user's hash chain."""
        kinds = [kind for kind in Kind if self.allowances[kind]]
        rows: list[tuple[Any, ...]] = []
        heads: list[str] = []
        for user in users:
            user_id = user[0] if self.postgres else uuid.UUID(user[0])
            base: dict[str, Any] = {
                "org_id": self.org.id,
                "user_id": user_id,
                "purchase_id": None,
                "reservation_id": None,
                "created_at": self.at,
                "actor": self.actor,
                "action": "user_created",
                "kind": None,
                "amount": 0,
                "reason": None,
                "capacity_delta": 0,
                "allocated_delta": 0,
                "allowance_delta": 0,
                "used_delta": 0,
                "reserved_delta": 0,
                "capacity_after": None,
                "allocated_after": None,
                "allowance_after": None,
                "used_after": None,
                "reserved_after": None,
                "details": None,
            }
            entries = []
            for kind in kinds:
                allowance = self.allowances[kind]
                self.allocated[kind] += allowance
                entries.append(
                    base
                    | {
                        "kind": kind.value,
                        "amount": allowance,
                        "allocated_delta": allowance,
                        "allowance_delta": allowance,
                        "capacity_after": self.capacity[kind],
                        "allocated_after": self.allocated[kind],
                        "allowance_after": allowance,
                        "used_after": 0,
                        "reserved_after": 0,
                        "details": {"before": 0, "after": allowance},
                    }
                )
            # No allowance at all (both minimums are 0): still a record of the creation.
            previous = None
            for entry in entries or [base]:
                entry["prev_hash"] = previous
                entry["hash"] = previous = chain.link(previous, entry)
                rows.append(self.stored(entry))
            assert previous is not None
            heads.append(previous)
        return rows, heads

    def stored(self, entry: dict[str, Any]) -> tuple[Any, ...]:
        """An entry as the driver takes it."""
        details = entry["details"]
        converted = entry | {
            "org_id": self.org_id,
            "user_id": self.uuid(entry["user_id"]),
            "created_at": self.now,
            "details": None if details is None else json.dumps(details),
        }
        return tuple(converted[column] for column in ENTRY_COLUMNS)


async def insert_rows(
    session: AsyncSession, table: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]]
) -> None:
    """Rows already in the driver's form (see `_Rows`): COPY on PostgreSQL, one executemany
    on SQLite."""
    connection = await session.connection()
    if connection.dialect.name == "postgresql":
        raw = await connection.get_raw_connection()
        await raw.driver_connection.copy_records_to_table(  # type: ignore[union-attr]
            table, records=rows, columns=columns
        )
        return
    placeholders = ", ".join("?" * len(columns))
    await connection.exec_driver_sql(
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({placeholders})", rows
    )
