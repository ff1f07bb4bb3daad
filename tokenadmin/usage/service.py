"""Metering: usage, reservations, commits, releases and expiries, exact under concurrency.

`meter` holds the rules: it takes any number of operations and applies them in one
transaction, each accepted or refused on its own: its outcome is a typed result
(`Used`, `Held`) or the refusal (a TokenAdminError). It locks what it touches in one
order (organization advisory lock shared, then users by id, then reservations, then the
rows of organizations whose capacity binds), so concurrent requests on any number of
processes can never let used + reserved exceed an allowance, nor (SPEC rule 3) an
organization's period usage exceed its capacity. `run` meters a group through the one
idempotent-write path (`idempotency.write_group`); its caller says how outcomes are
answered. Most groups of an organization's key are decided as sets by usage/engine.py,
by these same rules in a few statements; it hands everything else to `meter`.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import partial
from typing import Any, Literal, cast

from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin import metrics
from tokenadmin.act import Act
from tokenadmin.api_key import service as api_key_service
from tokenadmin.catalog import service as catalog
from tokenadmin.clock import Clock
from tokenadmin.database import Database, Retry, lock_organization
from tokenadmin.errors import (
    Conflict,
    InsufficientTokens,
    InvalidRequest,
    NotFound,
    ReservationClosed,
    ReservationExpired,
    TokenAdminError,
    Unauthenticated,
)
from tokenadmin.events import service as events
from tokenadmin.idempotency import service as idempotency
from tokenadmin.journal import service as journal
from tokenadmin.journal.service import Entry, record
from tokenadmin.models import Organization, Reservation, User
from tokenadmin.organization import repository as organization_repository
from tokenadmin.organization.service import (
    current_period,
    lock_for_change,
    maintenance_due,
)
from tokenadmin.tokens import MAX_AMOUNT, Kind
from tokenadmin.usage import engine, repository
from tokenadmin.user.periods import start_current_period

ACTIVITY_RESOLUTION = timedelta(minutes=1)
Action = Literal["usage", "reserve", "commit", "release", "expire"]


@dataclass
class Operation:
    """One metering operation, as the API, the CLI or the sweeper asks for it."""

    action: Action
    user: str | None = None
    kind: Kind | None = None
    tokens: int | None = None
    reservation_id: uuid.UUID | None = None
    ttl_seconds: int | None = None
    details: dict[str, Any] | None = None
    idempotency_key: str | None = None
    _keyed: idempotency.Keyed | None = field(default=None, init=False, repr=False, compare=False)

    def keyed(self) -> idempotency.Keyed | None:
        """Its key and the fingerprint of what it asks, if sent with a key. Made once: the
        coalescer makes it before the operation waits for its transaction, so the
        transaction, which holds its users' row locks, does not spend its time on it."""
        if self.idempotency_key is None:
            return None
        if self._keyed is None:
            print_ = idempotency.fingerprint(
                self.action,
                self.user,
                self.kind,
                self.tokens,
                self.reservation_id,
                self.ttl_seconds,
                self.details,
            )
            self._keyed = idempotency.Keyed(self.idempotency_key, print_)
        return self._keyed


@dataclass(frozen=True, slots=True)
class Balance:
    """A user's balance of one kind right after an operation."""

    allowance: int
    used: int
    reserved: int
    remaining: int  # what the user may still use: min(user remaining, organization remaining)


@dataclass(frozen=True, slots=True)
class Metered:
    """What an accepted operation did: whose tokens, how many, and the balance after it."""

    user_id: uuid.UUID
    email: str
    kind: Kind
    tokens: int
    balance: Balance


@dataclass(frozen=True, slots=True)
class Used(Metered):
    """Usage accepted."""

    entry: Entry  # its id is known once the transaction's journal is written


@dataclass(frozen=True, slots=True)
class Held(Metered):
    """A reservation as an operation left it: made (`open`), committed, released or expired."""

    id: uuid.UUID
    status: str
    committed: int | None
    expires_at: datetime
    entry: Entry | None


Outcome = idempotency.Outcome[Metered]


@dataclass(frozen=True)
class Caller:
    actor: str
    org_id: uuid.UUID | None
    idempotency_scope: str
    key_id: uuid.UUID | None = None  # confirmed not revoked in the metering transaction


class MaintenanceDue(Retry):
    """Organizations whose period or expiries must be brought up to date first: done in a
    transaction of their own (`maintain`), then the metering runs again."""

    def __init__(self, act: Act, org_ids: Sequence[uuid.UUID]) -> None:
        super().__init__(
            "organizations need maintenance first", partial(maintain, act=act, org_ids=org_ids)
        )
        self.org_ids = list(org_ids)


def _parse_user_ref(ref: str) -> uuid.UUID | str:
    if "@" in ref:
        return ref.lower()
    try:
        return uuid.UUID(ref)
    except ValueError:
        return ref


@dataclass
class _Batch:
    session: AsyncSession
    act: Act
    caller: Caller
    users: dict[uuid.UUID, User] = field(default_factory=dict)
    by_ref: dict[uuid.UUID | str, User] = field(default_factory=dict)  # by id and by email
    orgs: dict[uuid.UUID, Organization] = field(default_factory=dict)
    reservations: dict[uuid.UUID, Reservation] = field(default_factory=dict)
    org_room: dict[tuple[uuid.UUID, Kind], int] = field(default_factory=dict)
    starts: dict[uuid.UUID, datetime] = field(default_factory=dict)
    rates: dict[tuple[uuid.UUID, str | None], catalog.Rate] = field(default_factory=dict)


async def meter(
    session: AsyncSession,
    act: Act,
    caller: Caller,
    operations: Sequence[Operation],
    *,
    default_ttl: int,
) -> list[Outcome]:
    """Apply operations in order in this transaction; one outcome per operation."""
    batch = _Batch(session, act, caller)
    await _load(batch, operations)
    used_before = events.used_now(batch.users.values(), batch.starts)
    outcomes: list[Outcome] = []
    for operation in operations:
        try:
            outcomes.append(await _apply(batch, operation, default_ttl))
        except TokenAdminError as error:
            outcomes.append(error)
        metrics.metered(session, operation.action, *_counted(batch, operation, outcomes[-1]))
    # Under the users' row locks: one transaction sees each crossing of a threshold.
    await events.thresholds(
        session, act, batch.orgs, batch.users.values(), batch.starts, used_before
    )
    await repository.save_counters(session, batch.users.values())
    await journal.write_pending(session)
    return outcomes


def _counted(
    batch: _Batch, op: Operation, outcome: Outcome
) -> tuple[uuid.UUID | None, str | None, int | None, TokenAdminError | None]:
    """Whose and what an outcome is, for the usage counters of /metrics: organization, kind,
    tokens, and the refusal if refused."""
    if isinstance(outcome, Metered):
        user = batch.users[outcome.user_id]
        return user.org_id, outcome.kind.value, outcome.tokens, None
    reservation = batch.reservations.get(op.reservation_id) if op.reservation_id else None
    if reservation is not None:
        return reservation.org_id, reservation.kind, op.tokens or reservation.amount, outcome
    named = batch.by_ref.get(_parse_user_ref(op.user)) if op.user else None
    org_id = named.org_id if named is not None else batch.caller.org_id
    return org_id, op.kind.value if op.kind else None, op.tokens, outcome


async def _load(batch: _Batch, operations: Sequence[Operation]) -> None:
    """Find, lock and bring into the batch everything the operations touch."""
    session = batch.session
    reservation_ids = sorted({op.reservation_id for op in operations if op.reservation_id})
    reservations = await repository.reservations(session, reservation_ids, lock=False)
    refs = [_parse_user_ref(op.user) for op in operations if op.user]
    user_ids = [r for r in refs if isinstance(r, uuid.UUID)]
    emails = [r for r in refs if isinstance(r, str)]
    caller_org = batch.caller.org_id
    if caller_org is not None:
        # An organization's key: its organization is known, so the users are found and
        # locked in one statement, after the organization's lock as always.
        orgs = await _lock_organizations(batch, [caller_org])
        user_ids += [r.user_id for r in reservations if r.org_id == caller_org]
        users = await repository.lock_users(session, caller_org, ids=user_ids, emails=emails)
    else:
        named = await repository.users_for_refs(session, ids=user_ids, emails=emails)
        org_ids = sorted({org_id for _, org_id in named} | {r.org_id for r in reservations})
        orgs = await _lock_organizations(batch, org_ids)
        lock_ids = [user_id for user_id, org_id in named if org_id in batch.orgs]
        lock_ids += [r.user_id for r in reservations if r.org_id in batch.orgs]
        users = await repository.lock_users(session, None, ids=lock_ids, emails=[])
    batch.users = {u.id: u for u in users}
    for user in users:
        batch.by_ref[user.id] = batch.by_ref[user.email] = user
    batch.reservations = {
        r.id: r
        for r in await repository.reservations(session, reservation_ids, lock=True)
        if r.org_id in batch.orgs
    }
    await _bind_capacity(batch, orgs)


async def _lock_organizations(batch: _Batch, org_ids: Sequence[uuid.UUID]) -> list[Organization]:
    """Take the organizations' metering locks (shared) and load them, up to date."""
    for org_id in org_ids:
        await lock_organization(batch.session, org_id, shared=True)
    orgs = await repository.organizations(batch.session, org_ids)
    due = [o.id for o in orgs if maintenance_due(o, batch.act.now)]
    if due:
        raise MaintenanceDue(batch.act, due)
    batch.orgs = {o.id: o for o in orgs}
    batch.starts = {o.id: current_period(o, batch.act.now) for o in orgs}
    return orgs


async def _bind_capacity(batch: _Batch, orgs: Sequence[Organization]) -> None:
    session = batch.session
    binding = sorted(o.id for o in orgs if o.binds())
    if binding:
        # Rule 3 binds: usage of these organizations is serialized on their row, which
        # keeps their running totals (`Organization.counted_usage`): summed over the users
        # once, by the first transaction to find them missing, then added to by each
        # (`journal.record`).
        for org in await repository.organizations(session, binding, lock=True):
            batch.orgs[org.id] = org
            start = batch.starts[org.id]
            usage = org.counted_usage(start)
            if usage is None:
                usage = await organization_repository.period_usage(session, org.id, start)
                org.count_usage(usage)
            for kind in Kind:
                if org.over_allocated(kind):
                    used, reserved = usage[kind]
                    batch.org_room[(org.id, kind)] = org.capacity(kind) - used - reserved


def _find_user(batch: _Batch, ref: str) -> User:
    user = batch.by_ref.get(_parse_user_ref(ref))
    if user is not None:
        return user
    raise NotFound(f"No user '{ref}' in this organization.", code="user_not_found")


def available(batch: _Batch, user: User, kind: Kind) -> int:
    """What the user may still use: min(user remaining, organization remaining)."""
    remaining = user.remaining(kind, batch.starts[user.org_id])
    room = batch.org_room.get((user.org_id, kind))
    return remaining if room is None else max(0, min(remaining, room))


def _take(batch: _Batch, user: User, kind: Kind, tokens: int) -> None:
    key = (user.org_id, kind)
    if key in batch.org_room:
        batch.org_room[key] -= tokens


async def _apply(batch: _Batch, op: Operation, default_ttl: int) -> Metered:
    if op.action in ("usage", "reserve"):
        assert op.user is not None
        assert op.kind is not None
        user = _find_user(batch, op.user)
        if op.tokens is None:
            op = await _charged(batch, user, op)
        assert op.tokens is not None
        assert op.kind is not None
        return await _debit(batch, op, user, op.kind, op.tokens, default_ttl)
    assert op.reservation_id is not None
    reservation = batch.reservations.get(op.reservation_id)
    if reservation is None:
        raise NotFound("Reservation not found.", code="reservation_not_found")
    return await _close(batch, op, reservation)


async def _charged(batch: _Batch, user: User, op: Operation) -> Operation:
    """The operation with its tokens charged by the model's rates (the catalog's, read in
    this transaction): ceil(prompt x prompt rate + completion x completion rate). Its
    journal entry keeps the model, the raw counts and the rates."""
    details = op.details or {}
    model = details.get("model")
    key = (user.org_id, model)
    rate = batch.rates.get(key)
    if rate is None:
        rate = catalog.DEFAULT_RATE
        if model is not None:
            rate = await catalog.rate_for(batch.session, user.org_id, model)
        batch.rates[key] = rate
    tokens = rate.charge(details["prompt_tokens"], details["completion_tokens"])
    if not 1 <= tokens <= MAX_AMOUNT:
        raise InvalidRequest(
            f"These counts are charged {tokens:,} tokens at the rates of"
            f" {model or 'no model'}; usage is 1 to 2^53 tokens.",
            code="invalid_amount",
            details={"field": "tokens", "charged": tokens},
        )
    return replace(op, tokens=tokens, details={**details, **rate.as_details()})


async def _debit(
    batch: _Batch, op: Operation, user: User, kind: Kind, tokens: int, default_ttl: int
) -> Metered:
    org = batch.orgs[user.org_id]
    if not user.active:
        raise Conflict(
            f"{user.email} is deactivated and can't use tokens.", code="user_deactivated"
        )
    start_current_period(batch.session, batch.act, org, user, batch.starts[org.id])
    if tokens > available(batch, user, kind) and user.reserved(kind):
        await _expire_overdue(batch, user)
    left = available(batch, user, kind)
    if tokens > left:
        raise _insufficient(batch, user, kind, tokens, left)
    _take(batch, user, kind, tokens)
    _touch(batch, user)
    reservation = None
    if op.action == "reserve":
        ttl = op.ttl_seconds or default_ttl
        reservation = Reservation(
            id=uuid.uuid4(),
            org_id=org.id,
            user_id=user.id,
            kind=kind.value,
            amount=tokens,
            status="open",
            expires_at=batch.act.now + timedelta(seconds=ttl),
            created_at=batch.act.now,
            details=op.details,
        )
        batch.session.add(reservation)
        batch.reservations[reservation.id] = reservation
    entry = record(
        batch.session,
        batch.act,
        org,
        op.action,
        kind=kind,
        user=user,
        amount=tokens,
        used=tokens if reservation is None else 0,
        reserved=0 if reservation is None else tokens,
        reservation_id=None if reservation is None else reservation.id,
        details=op.details,
    )
    if reservation is None:
        return Used(user.id, user.email, kind, tokens, _balance(batch, user, kind), entry)
    return _held(batch, reservation, user, entry)


def _touch(batch: _Batch, user: User) -> None:
    """Note the user's activity, to the minute: the column is indexed (the user table sorts
    by it), so writing it on every request would turn each counter update on PostgreSQL
    from an in-place (HOT) update into one that rewrites every index of the row."""
    last = user.last_activity_at
    if last is None or batch.act.now - last >= ACTIVITY_RESOLUTION or batch.act.now < last:
        user.last_activity_at = batch.act.now


def _insufficient(
    batch: _Batch, user: User, kind: Kind, tokens: int, left: int, *, reserved: int = 0
) -> InsufficientTokens:
    """`left` counts what this request may use, its own reservation (`reserved`) included."""
    room = batch.org_room.get((user.org_id, kind))
    user_remaining = user.remaining(kind, batch.starts[user.org_id])
    by_organization = room is not None and room < user_remaining
    return insufficient(user.id, user.email, kind, tokens, left, by_organization, reserved)


def insufficient(
    user_id: uuid.UUID,
    email: str,
    kind: Kind,
    tokens: int,
    left: int,
    by_organization: bool,
    reserved: int = 0,
) -> InsufficientTokens:
    """The refusal of usage that does not fit: `left` is what it may use, limited by the
    organization's capacity (rule 3) or by the user's allowance (the engine's too)."""
    who = "the organization" if by_organization else email
    return InsufficientTokens(
        f"{tokens:,} {kind} tokens requested but {who} has only {left:,} left this period.",
        details={
            "user_id": str(user_id),
            "kind": kind.value,
            "requested": tokens,
            "remaining": left,
            "limited_by": "organization" if by_organization else "user",
            **({"reserved": reserved} if reserved else {}),
        },
    )


def _balance(batch: _Batch, user: User, kind: Kind) -> Balance:
    return Balance(
        user.allowance(kind), user.used(kind), user.reserved(kind), available(batch, user, kind)
    )


def _held(batch: _Batch, reservation: Reservation, user: User, entry: Entry | None) -> Held:
    kind = Kind(reservation.kind)
    return Held(
        user.id,
        user.email,
        kind,
        reservation.amount,
        _balance(batch, user, kind),
        id=reservation.id,
        status=reservation.status,
        committed=reservation.committed_amount,
        expires_at=reservation.expires_at,
        entry=entry,
    )


async def _close(batch: _Batch, op: Operation, reservation: Reservation) -> Held:
    user = batch.users[reservation.user_id]
    org = batch.orgs[reservation.org_id]
    kind = Kind(reservation.kind)
    start_current_period(batch.session, batch.act, org, user, batch.starts[org.id])
    if reservation.status == "expired" and op.action == "commit":
        raise _expired(reservation)
    if reservation.status != "open":
        raise ReservationClosed(
            f"This reservation is already {reservation.status}.",
            details={"id": str(reservation.id), "status": reservation.status},
        )
    overdue = reservation.expires_at <= batch.act.now
    if op.action == "expire" or (op.action == "commit" and overdue):
        entry = _expire(batch, org, user, reservation)
        if op.action == "commit":
            raise _expired(reservation)
        return _held(batch, reservation, user, entry)
    held = reservation.amount
    if op.action == "release":
        _take(batch, user, kind, -held)
        entry = give_back(batch.session, batch.act, org, user, reservation, "released")
        return _held(batch, reservation, user, entry)
    actual = op.tokens if op.tokens is not None else held
    extra = actual - held
    if extra > 0:
        left = available(batch, user, kind)
        if extra > left:
            raise _insufficient(batch, user, kind, actual, held + left, reserved=held)
    _take(batch, user, kind, extra)
    _touch(batch, user)
    entry = record(
        batch.session,
        batch.act,
        org,
        "commit",
        kind=kind,
        user=user,
        amount=actual,
        used=actual,
        reserved=-held,
        reservation_id=reservation.id,
        details={"reserved": held, **(op.details or {})},
    )
    reservation.status = "committed"
    reservation.committed_amount = actual
    reservation.closed_at = batch.act.now
    return _held(batch, reservation, user, entry)


def _expired(reservation: Reservation) -> ReservationExpired:
    return ReservationExpired(
        "This reservation expired before it was committed; its tokens were released.",
        details={"id": str(reservation.id), "expires_at": reservation.expires_at.isoformat()},
    )


def _expire(batch: _Batch, org: Organization, user: User, reservation: Reservation) -> Entry:
    _take(batch, user, Kind(reservation.kind), -reservation.amount)
    return give_back(batch.session, batch.act, org, user, reservation, "expired")


def give_back(
    session: AsyncSession,
    act: Act,
    org: Organization,
    user: User,
    reservation: Reservation,
    status: Literal["released", "expired"],
    *,
    reason: str | None = None,
) -> Entry:
    """Close an open reservation without using it: what it held goes back to the user, in
    the journal as a release or an expiry."""
    entry = record(
        session,
        act,
        org,
        "release" if status == "released" else "reservation_expired",
        kind=Kind(reservation.kind),
        user=user,
        amount=reservation.amount,
        reserved=-reservation.amount,
        reason=reason,
        reservation_id=reservation.id,
    )
    reservation.status = status
    reservation.closed_at = act.now
    return entry


async def _expire_overdue(batch: _Batch, user: User) -> None:
    """Release a user's reservations whose time ran out, before refusing them for lack of room."""
    ids = await repository.user_open_reservation_ids(batch.session, user.id, batch.act.now)
    if not ids:
        return
    for reservation in await repository.reservations(batch.session, ids, lock=True):
        if reservation.status == "open":
            _expire(batch, batch.orgs[user.org_id], user, reservation)


SKIPPING = 2
"""How many transactions of a batch skip the users other transactions have locked (`run`);
the next one waits for them."""


async def run(
    db: Database,
    clock: Clock,
    caller: Caller,
    operations: Sequence[Operation],
    *,
    answer: idempotency.Render[Metered],
    default_ttl: int,
    idempotency_ttl: timedelta,
    skip_locked: bool = False,
) -> list[idempotency.Answer]:
    """Meter in one transaction through the one idempotent-write path, each operation
    answered by `answer` (its caller's choice of status and body, kept for replays).
    Organizations due for upkeep are brought up to date first (`MaintenanceDue`). The
    groups `engine.takes` are metered as sets (usage/engine.py), by the same rules.

    With `skip_locked` (a batch, whose events are each accepted or refused on its own and
    each carry a key), the engine leaves the operations of users another transaction has
    locked to a next transaction, rather than holding the rest's locks while it waits for
    them: up to `SKIPPING` transactions skip, the next waits. A user's operations stay
    together, in their order. Each transaction commits before the next begins; should one
    fail, those before it stay applied, and the batch sent again replays them."""
    requests = [operation.keyed() for operation in operations]
    if not engine.takes(caller, operations):
        return await db.write(
            partial(_meter, clock, caller, operations, requests, answer, default_ttl,
                    idempotency_ttl)
        )  # fmt: skip
    answers: list[idempotency.Answer | None] = [None] * len(operations)
    todo = list(range(len(operations)))
    for transaction in range(SKIPPING + 1):
        chosen = [operations[index] for index in todo]
        keyed = [requests[index] for index in todo]
        skip = skip_locked and transaction < SKIPPING
        as_a_set = partial(
            _meter_as_a_set, clock, caller, chosen, keyed, answer, default_ttl,
            idempotency_ttl, skip,
        )  # fmt: skip
        given = await db.write(as_a_set)
        for index, one in zip(todo, given, strict=True):
            answers[index] = one
        todo = [index for index, one in zip(todo, given, strict=True) if one is None]
        if not todo:
            break
    assert not todo  # the last transaction waits for its users: it answers every one
    return cast(list[idempotency.Answer], answers)


async def _meter_as_a_set(
    clock: Clock,
    caller: Caller,
    operations: Sequence[Operation],
    requests: Sequence[idempotency.Keyed | None],
    answer: idempotency.Render[Metered],
    default_ttl: int,
    idempotency_ttl: timedelta,
    skip_locked: bool,
    session: AsyncSession,
) -> list[idempotency.Answer | None]:
    """`run`'s transaction through the engine (usage/engine.py), `_meter` if it can't."""
    return await engine.meter_group(
        session,
        act=Act(caller.actor, clock.now()),
        caller=caller,
        operations=operations,
        requests=requests,
        answer=answer,
        default_ttl=default_ttl,
        idempotency_ttl=idempotency_ttl,
        fallback=partial(
            _meter, clock, caller, operations, requests, answer, default_ttl, idempotency_ttl
        ),
        skip_locked=skip_locked,
    )


async def _meter(
    clock: Clock,
    caller: Caller,
    operations: Sequence[Operation],
    requests: Sequence[idempotency.Keyed | None],
    answer: idempotency.Render[Metered],
    default_ttl: int,
    idempotency_ttl: timedelta,
    session: AsyncSession,
) -> list[idempotency.Answer]:
    """`run`'s transaction through `meter` (the ORM path)."""
    act = Act(caller.actor, clock.now())
    if caller.key_id is not None and not await api_key_service.is_live(session, caller.key_id):
        revoked = Unauthenticated("The API key is not valid or was revoked.")
        return [idempotency.refused(revoked)] * len(operations)

    async def apply(todo: list[int]) -> list[Outcome]:
        chosen = [operations[index] for index in todo]
        return await meter(session, act, caller, chosen, default_ttl=default_ttl)

    return await idempotency.write_group(
        session,
        caller.idempotency_scope,
        requests,
        apply,
        answer,
        now=act.now,
        ttl=idempotency_ttl,
    )


async def maintain(session: AsyncSession, act: Act, org_ids: Sequence[uuid.UUID]) -> None:
    for org_id in sorted(org_ids):
        await lock_for_change(session, act, org_id)


@dataclass(frozen=True)
class KindAvailability:
    allowance: int
    used: int
    reserved: int
    remaining: int
    organization_remaining: int | None

    @property
    def available(self) -> int:
        if self.organization_remaining is None:
            return self.remaining
        return max(0, min(self.remaining, self.organization_remaining))


async def availability(
    session: AsyncSession, org: Organization, user: User, now: datetime
) -> dict[Kind, KindAvailability]:
    """What a user may still use of each kind: min(user remaining, organization remaining)."""
    start = current_period(org, now)
    binding = [kind for kind in Kind if org.over_allocated(kind)]
    usage: dict[Kind, tuple[int, int]] = {}
    if binding:
        usage = org.counted_usage(start) or await organization_repository.period_usage(
            session, org.id, start
        )
    result = {}
    for kind in Kind:
        organization_remaining = None
        if kind in binding:
            used, reserved = usage[kind]
            organization_remaining = org.capacity(kind) - used - reserved
        result[kind] = KindAvailability(
            allowance=user.allowance(kind) if user.active else 0,
            used=user.used_in(kind, start),
            reserved=user.reserved(kind),
            remaining=user.remaining(kind, start) if user.active else 0,
            organization_remaining=organization_remaining,
        )
    return result
