from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    case,
    false,
    func,
    literal_column,
    or_,
    select,
    table,
    type_coerce,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from tokenadmin.models import AllowanceOrder, User
from tokenadmin.schemas import storable


async def get(
    session: AsyncSession,
    user_id: uuid.UUID,
    *,
    lock: bool = False,
    org_id: uuid.UUID | None = None,
) -> User | None:
    """The user, if any; with `org_id`, only a user of that organization (the statement then
    names one organization, see docs/SCALING.md)."""
    statement = select(User).where(User.id == user_id).execution_options(populate_existing=True)
    if org_id is not None:
        statement = statement.where(User.org_id == org_id)
    if lock:
        statement = statement.with_for_update()
    return await session.scalar(statement)


async def by_email(session: AsyncSession, email: str) -> User | None:
    if not storable(email):
        return None  # no one's: PostgreSQL can't even compare it
    return await session.scalar(select(User).where(User.email == email.lower()))


async def find_in_org(
    session: AsyncSession,
    org_id: uuid.UUID | None,
    *,
    ids: Sequence[uuid.UUID] = (),
    emails: Sequence[str] = (),
    lock: bool = False,
) -> list[User]:
    """Users of one organization (None: of any) named by id or email, in id order (the
    lock order)."""
    emails = [e for e in emails if storable(e)]
    found: list[User] = []
    for start in range(0, max(len(ids), len(emails), 1), 5000):
        id_chunk, email_chunk = ids[start : start + 5000], emails[start : start + 5000]
        if not id_chunk and not email_chunk:
            break
        condition = or_(User.id.in_(id_chunk), User.email.in_(email_chunk))
        if org_id is not None:
            condition = and_(User.org_id == org_id, condition)
        statement = (
            select(User)
            .where(condition)
            .order_by(User.id)
            .execution_options(populate_existing=True)
        )
        if lock:
            statement = statement.with_for_update()
        found.extend((await session.scalars(statement)).all())
    return sorted({u.id: u for u in found}.values(), key=lambda u: u.id)


async def find_by_refs(
    session: AsyncSession, org_id: uuid.UUID | None, refs: Iterable[str]
) -> dict[str, User]:
    """The users of one organization (None: of any) named by `refs`, each an id or an email
    in any case (blanks around it ignored), by the reference as given; a reference that
    names no one is left out."""
    wanted: dict[str, uuid.UUID | str] = {}
    for ref in refs:
        try:
            wanted[ref] = uuid.UUID(ref.strip())
        except ValueError:
            wanted[ref] = ref.strip().lower()
    ids = [key for key in wanted.values() if isinstance(key, uuid.UUID)]
    emails = [key for key in wanted.values() if isinstance(key, str)]
    found: dict[uuid.UUID | str, User] = {}
    for user in await find_in_org(session, org_id, ids=ids, emails=emails):
        found[user.id] = found[user.email] = user
    return {ref: found[key] for ref, key in wanted.items() if key in found}


SORTABLE: dict[str, InstrumentedAttribute[Any]] = {
    "name": User.name,
    "email": User.email,
    "role": User.role,
    "status": User.status,
    "max_tokens": User.max_tokens,
    "max_train_tokens": User.max_train_tokens,
    "last_activity_at": User.last_activity_at,
    "created_at": User.created_at,
}
NULLABLE = {"last_activity_at"}


@dataclass
class UserQuery:
    org_id: uuid.UUID
    period_start: datetime
    search: str | None = None
    status: str | None = None
    role: str | None = None
    near_limit: float | None = None
    sort: str = "name"
    descending: bool = False
    limit: int = 50
    offset: int = 0


def used_column(kind: str, period_start: datetime) -> ColumnElement[int]:
    column = User.inference_used if kind == "inference" else User.training_used
    return case((User.period_start == period_start, column), else_=0)


def _filtered(query: UserQuery, dialect: str) -> Select[User]:
    org_id: ColumnElement[uuid.UUID] | InstrumentedAttribute[uuid.UUID] = User.org_id
    if query.search and dialect == "sqlite" and _trigrams(query.search):
        # Unary + (SQLite's way to rule out an index for a term): otherwise SQLite may walk
        # an (org_id, ...) index in the sort order testing every user against the search
        # matches, where the matches alone are the short way.
        org_id = type_coerce(literal_column("+users.org_id"), User.org_id.type)
    statement = select(User).where(org_id == query.org_id)
    if query.search:
        statement = statement.where(search_condition(query.search, dialect))
    if query.status:
        statement = statement.where(User.status == query.status)
    if query.role:
        statement = statement.where(User.role == query.role)
    if query.near_limit is not None:
        # Near the limit: used + reserved has reached this share of the allowance.
        share = query.near_limit
        statement = statement.where(
            or_(
                and_(
                    User.max_tokens > 0,
                    used_column("inference", query.period_start) + User.inference_reserved
                    >= User.max_tokens * share,
                ),
                and_(
                    User.max_train_tokens > 0,
                    used_column("training", query.period_start) + User.training_reserved
                    >= User.max_train_tokens * share,
                ),
            )
        )
    return statement


def _trigrams(text: str) -> bool:
    """Whether a search is long enough for the trigram indexes (3 characters or more)."""
    return len(text.lower()) >= 3


def search_condition(text: str, dialect: str) -> ColumnElement[bool]:
    """A case-insensitive substring of the name or the email (emails are stored lowercase),
    in a shape the database can answer from an index (migration 0003).

    PostgreSQL's trigram GIN indexes (on lower(name) and lower(email)) serve
    `LIKE '%text%'` directly. SQLite first narrows to the matches of its FTS5 trigram table
    and then applies the same LIKE, so the results are exactly the LIKE's on both. Below 3
    characters no trigram index can help: a plain substring test then, which no planner
    mistakes for an indexable LIKE.
    """
    if not storable(text):
        # No name or email holds NUL or an unpaired surrogate; PostgreSQL can't compare
        # them, and SQLite's full-text search reads NUL as the end of its query.
        return false()
    lowered = text.lower()
    if not _trigrams(lowered):
        position = func.instr if dialect == "sqlite" else func.strpos
        return or_(position(User.email, lowered) > 0, position(func.lower(User.name), lowered) > 0)
    escaped = lowered.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    pattern = f"%{escaped}%"
    condition = or_(
        # lower(email): the trigram index's expression (migration 0015), so that no
        # equality on email can be answered from it; emails are stored lowercase.
        func.lower(User.email).like(pattern, escape="\\"),
        func.lower(User.name).like(pattern, escape="\\"),
    )
    if dialect == "sqlite":
        phrase = '"' + lowered.replace('"', '""') + '"'
        matches: Select[tuple[Any]] = (
            select(literal_column("rowid"))
            .select_from(table("user_search"))
            .where(literal_column("user_search").op("MATCH")(phrase))
        )
        condition = and_(literal_column("users.rowid").in_(matches), condition)
    return condition


ALLOWANCE_ORDER: dict[str, InstrumentedAttribute[int]] = {
    "max_tokens": AllowanceOrder.max_tokens,
    "max_train_tokens": AllowanceOrder.max_train_tokens,
}
"""The sorts read from AllowanceOrder's indexes (migration 0016): no index of `users` holds
an allowance, so that an allowance change updates users in place."""


def _ordering(
    query: UserQuery,
    order: ColumnElement[Any] | InstrumentedAttribute[Any] | None = None,
    tie: InstrumentedAttribute[uuid.UUID] = User.id,
) -> list[ColumnElement[Any]]:
    if order is None and query.sort in ("inference_used", "training_used"):
        order = used_column(query.sort.split("_")[0], query.period_start)
    elif order is None:
        order = SORTABLE[query.sort]
    if query.sort in NULLABLE:
        # Never active sorts as least recent, on every database.
        direction = order.desc().nulls_last() if query.descending else order.asc().nulls_first()
    else:
        # No NULLs: no NULLS clause, so PostgreSQL can read the order from an index.
        direction = order.desc() if query.descending else order.asc()
    # Ties go by id in the same direction, so an index (org_id, column, id) read forwards
    # or backwards gives the whole order.
    return [direction, tie.desc() if query.descending else tie.asc()]


async def search(session: AsyncSession, query: UserQuery) -> tuple[Sequence[User], int]:
    dialect = session.get_bind().dialect.name
    statement = _filtered(query, dialect)
    ordering = _ordering(query)
    # The page's ids first (from an index, for a deep page too), then only their rows.
    ids, ids_order = statement.with_only_columns(User.id), ordering
    if query.sort in ALLOWANCE_ORDER:
        # The same order, from AllowanceOrder's index: its allowances are the users' own.
        ids = ids.join(AllowanceOrder, AllowanceOrder.user_id == User.id).where(
            AllowanceOrder.org_id == query.org_id
        )
        ids_order = _ordering(query, ALLOWANCE_ORDER[query.sort], AllowanceOrder.user_id)
    page_ids = ids.order_by(*ids_order).limit(query.limit).offset(query.offset).subquery()
    page = select(User).join(page_ids, User.id == page_ids.c.id).order_by(*ordering)
    users = (await session.scalars(page)).all()
    if query.offset == 0 and len(users) < query.limit:
        total = len(users)  # the whole result is on this page: nothing to count
    else:
        counted = statement.with_only_columns(func.count()).order_by(None)
        total = int(await session.scalar(counted) or 0)
    return users, total


async def count_in_org(session: AsyncSession, org_id: uuid.UUID) -> int:
    total = await session.scalar(select(func.count()).where(User.org_id == org_id))
    return int(total or 0)


def table_rows(org_id: uuid.UUID, period_start: datetime) -> Select[*tuple[Any, ...]]:
    """The user table as plain columns (no ORM objects), by email: for exports."""
    return (
        select(
            User.email,
            User.name,
            User.role,
            User.status,
            User.max_tokens,
            User.max_train_tokens,
            used_column("inference", period_start),
            used_column("training", period_start),
            User.last_activity_at,
        )
        .where(User.org_id == org_id)
        .order_by(User.email)
    )


async def emails_in_use(session: AsyncSession, emails: Sequence[str]) -> set[str]:
    """Which of these emails belong to a user of any organization."""
    found: set[str] = set()
    for start in range(0, len(emails), 5000):
        chunk = emails[start : start + 5000]
        found.update(await session.scalars(select(User.email).where(User.email.in_(chunk))))
    return found
