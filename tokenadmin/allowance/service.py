"""Allowances: the one place where "Max Tokens" and "Max Train Tokens" change.

Every change, of one user or of many, both kinds at once, goes through `change`: it names
the users, `plan`s the change (SPEC rules 1, 4, 5 and 8 and the version check, for every
row, refusing nothing silently and listing every reason of every row), and then refuses it
or `apply`s it (all rows, or none when any row is refused). The API, the dashboard, the
CLI, the CSV import and user creation, update and reactivation all call it.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import instance_state, set_committed_value
from uuid6 import uuid7

from tokenadmin.act import Act
from tokenadmin.allowance import repository
from tokenadmin.errors import (
    AllowanceChangeRefused,
    Conflict,
    InvalidRequest,
    NotFound,
    RuleRefused,
    TokenAdminError,
    VersionConflict,
)
from tokenadmin.journal.chain import Chain
from tokenadmin.journal.service import append as journal_append
from tokenadmin.models import JournalEntry, Organization, User
from tokenadmin.organization.service import current_period, lock_for_change
from tokenadmin.rows import gc_paused
from tokenadmin.tokens import ALLOWANCE_FIELD, ALLOWANCE_LABEL, MAX_AMOUNT, Kind, balance, fmt
from tokenadmin.user import repository as user_repository
from tokenadmin.user.periods import start_current_period

__all__ = [
    "AllowanceChangeRefused",
    "ChangeResult",
    "Plan",
    "Request",
    "allowances_of",
    "apply",
    "change",
    "changes_since",
    "changes_since_many",
    "check_version",
    "conflict_since",
    "plan",
    "preview",
    "refusal",
]


@dataclass
class Request:
    """One row of a change: new allowances for an existing or a new user."""

    user: User
    allowances: dict[Kind, int]
    expected_version: int | None = None
    new: bool = False
    since: Since | None = None
    """What changed of the user after `expected_version` (read by `change` when the version
    is stale), so `plan` can merge a change of other fields instead of refusing it."""


@dataclass
class Refusal:
    """Why one row can't be applied: one reason; a row may have several."""

    index: int
    user: User | None
    """None when the row names no user of this organization (`ref` is what it named)."""
    code: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)
    new: bool = False
    """The row would create this user: it has no id to mention yet."""
    ref: str | None = None

    def to_dict(self) -> dict[str, Any]:
        row: dict[str, Any] = {"index": self.index}
        if self.user is None:
            row["user"] = self.ref
        else:
            if not self.new:
                row["user_id"] = str(self.user.id)
            row["email"] = self.user.email
        return {**row, "code": self.code, "message": self.message, **self.details}


@dataclass
class Change:
    user: User
    kind: Kind
    before: int
    after: int
    new: bool = False

    @property
    def delta(self) -> int:
        return self.after - self.before


@dataclass
class KindAfter:
    capacity: int
    allocated: int

    @property
    def balance(self) -> int:
        return balance(self.capacity, self.allocated)


@dataclass
class Plan:
    changes: list[Change]
    refused: list[Refusal]
    after: dict[Kind, KindAfter]

    @property
    def accepted(self) -> bool:
        return not self.refused


Raise = tuple[int, Request, Change]
"""A row that raises an allowance of one kind: its position, request and change."""


def plan(org: Organization, requests: list[Request], act: Act) -> Plan:
    """Check every row against every rule; nothing is written.

    Every reason of every row is listed: a row whose Max Tokens is under the minimum may
    also raise Max Train Tokens past the balance, and is refused for both. A kind refused
    on its own (under the minimum, under what was used, over 2^53) takes no part in the
    balance; a row refused as a whole (a deactivated user, a stale version) takes none.
    """
    start = current_period(org, act.now)
    minimums = {kind: org.minimum(kind) for kind in Kind}
    refused: list[Refusal] = []
    changes: list[Change] = []
    raises: dict[Kind, list[Raise]] = {kind: [] for kind in Kind}
    deltas = dict.fromkeys(Kind, 0)
    for index, request in enumerate(requests):
        user, new = request.user, request.new
        values = _VALUES(user)
        row_refusals = _check_row(org, minimums, index, request, values, start, act.now)
        refused_kinds: set[Any] = set()
        if row_refusals:
            refused.extend(row_refusals)
            refused_kinds = {r.details.get("kind") for r in row_refusals}
            if None in refused_kinds:
                continue  # refused as a whole
        for kind, after in request.allowances.items():
            before = 0 if new else values[_ALLOWANCE[kind]]
            if (after == before and not new) or kind.value in refused_kinds:
                continue
            change = Change(user, kind, before, after, new)
            changes.append(change)
            delta = after - before
            deltas[kind] += delta
            if delta > 0:
                raises[kind].append((index, request, change))

    totals: dict[Kind, KindAfter] = {}
    for kind in Kind:
        delta = deltas[kind]
        totals[kind] = total = KindAfter(org.capacity(kind), org.allocated(kind) + delta)
        # Rows that lower an allowance may always go ahead: they are how an administrator
        # resolves a shortfall. Of the rows that raise this kind, only those that cause a
        # shortfall are refused (`_culprits`); all of them when the total passes 2^53.
        if total.balance < 0 and not org.overallocation:
            culprits = _culprits(raises[kind], -total.balance)
            left = total.balance + sum(change.delta for _, _, change in culprits)
            for index, request, change in culprits:
                refused.append(_over_balance(kind, total, left, index, request, change))
        if total.allocated > MAX_AMOUNT:
            for index, request, change in raises[kind]:
                refused.append(_over_maximum(kind, total, index, request, change))
    refused.sort(key=lambda r: r.index)
    return Plan(changes=changes, refused=refused, after=totals)


def _culprits(raises: list[Raise], shortfall: int) -> list[Raise]:
    """The rows that cause a shortfall of one kind: the fewest raises whose removal brings
    the kind back within its balance, taken largest first (of two equal raises, the later
    row: the one added last). When even removing every raise leaves the kind over (an
    organization over-allocated since a purchase expired), every raise is a culprit."""
    culprits: list[Raise] = []
    for raise_ in sorted(raises, key=lambda r: (-r[2].delta, -r[0])):
        if shortfall <= 0:
            break
        culprits.append(raise_)
        shortfall -= raise_[2].delta
    return culprits


def _who(user: User) -> str:
    return user.name or user.email


def _over_balance(
    kind: Kind, after: KindAfter, left: int, index: int, request: Request, change: Change
) -> Refusal:
    """Rule 1 for a row that causes a shortfall: in the words of the balance an
    administrator looks at. `left` is the balance left for this row once every accepted
    change is made; `shortfall` the batch's, as `balance_after` shows it."""
    user, label = change.user, ALLOWANCE_LABEL[kind]
    if left > 0:
        have = f"Only {fmt(left)} {kind} tokens left"
    elif left == 0:
        have = f"No {kind} tokens left"
    else:
        have = f"No {kind} tokens left (the balance is already {fmt(-left)} short)"
    return Refusal(
        index,
        user,
        "exceeds_balance",
        f"{have}; {_who(user)}'s {label} of {fmt(change.after)} needs {fmt(change.delta)} more.",
        {
            "kind": kind.value,
            "requested": change.after,
            "before": change.before,
            "needed": change.delta,
            "left": left,
            "shortfall": -after.balance,
            "capacity": after.capacity,
            "allocated_after": after.allocated,
        },
        new=request.new,
    )


def _over_maximum(
    kind: Kind, after: KindAfter, index: int, request: Request, change: Change
) -> Refusal:
    """Rule 8 for the organization's total of one kind, for a row that raises it."""
    user, label = change.user, ALLOWANCE_LABEL[kind]
    return Refusal(
        index,
        user,
        "amount_too_large",
        f"{label} for {user.email} would be {fmt(change.after)}; the organization"
        f" would then have allocated {fmt(after.allocated)} {kind} tokens, more than"
        f" the {fmt(MAX_AMOUNT)} (2^53) any amount may be.",
        {
            "kind": kind.value,
            "requested": change.after,
            "allocated_after": after.allocated,
            "maximum": MAX_AMOUNT,
        },
        new=request.new,
    )


def check_many_new_users(org: Organization, allowances: dict[Kind, int], count: int) -> None:
    """Rules 1, 4 and 8 for `count` new users with the same allowances, without a row each
    (bulk seeding): refused as a whole with below_minimum, exceeds_balance or
    amount_too_large."""
    for kind, allowance in allowances.items():
        label = ALLOWANCE_LABEL[kind]
        if allowance < org.minimum(kind):
            raise RuleRefused(
                f"{label} would be {fmt(allowance)}; the minimum is {fmt(org.minimum(kind))}.",
                code="below_minimum",
                details={"kind": kind.value, "requested": allowance, "minimum": org.minimum(kind)},
            )
        allocated_after = org.allocated(kind) + allowance * count
        left = org.capacity(kind) - org.allocated(kind)
        shortfall = allocated_after - org.capacity(kind)
        details = {"kind": kind.value, "requested": allowance * count}
        if allowance and shortfall > 0 and not org.overallocation:
            have = f"Only {fmt(left)} {kind} tokens left" if left > 0 else f"No {kind} tokens left"
            raise RuleRefused(
                f"{have}; {fmt(count)} users with {label} of {fmt(allowance)} need"
                f" {fmt(allowance * count)}, {fmt(shortfall)} more than the balance.",
                code="exceeds_balance",
                details={
                    **details,
                    "before": 0,
                    "needed": allowance * count,
                    "left": left,
                    "shortfall": shortfall,
                    "capacity": org.capacity(kind),
                    "allocated_after": allocated_after,
                },
            )
        if allowance and allocated_after > MAX_AMOUNT:
            raise RuleRefused(
                f"{fmt(count)} users with {label} {fmt(allowance)} would bring the"
                f" organization's allocated {kind} tokens to {fmt(allocated_after)}, more than"
                f" the {fmt(MAX_AMOUNT)} (2^53) any amount may be.",
                code="amount_too_large",
                details={**details, "allocated_after": allocated_after, "maximum": MAX_AMOUNT},
            )


_VALUES = repository.reader(
    "id",
    "status",
    "version",
    "period_start",
    "max_tokens",
    "max_train_tokens",
    "inference_used",
    "training_used",
    "inference_reserved",
    "training_reserved",
)
"""What `plan` and `apply` read of each user, at once; each value by its position."""
_ID, _STATUS, _VERSION, _PERIOD_START = 0, 1, 2, 3
_ALLOWANCE = {Kind.inference: 4, Kind.training: 5}
_USED = {Kind.inference: 6, Kind.training: 7}
_RESERVED = {Kind.inference: 8, Kind.training: 9}


def _check_row(
    org: Organization,
    minimums: Mapping[Kind, int],
    index: int,
    request: Request,
    values: tuple[Any, ...],
    start: Any,
    now: datetime,
) -> list[Refusal]:
    """The rules of one row on its own: every reason, each kind's with its `kind`.
    `minimums`: the organization's, by kind; `values`: the user's, as `_VALUES` reads them."""
    user = request.user
    if not request.new and values[_STATUS] != "active":
        if all(values[_ALLOWANCE[kind]] == value for kind, value in request.allowances.items()):
            return []  # nothing would change (a table saved whole, say): nothing to refuse
        return [
            Refusal(
                index,
                user,
                "user_deactivated",
                f"{user.email} is deactivated; reactivate them to give them an allowance.",
            )
        ]
    stale = None
    if not request.new and request.expected_version not in (None, values[_VERSION]):
        assert request.expected_version is not None
        stale = conflict_since(
            org, user, request.expected_version, _wanted(request), request.since, now
        )
    if stale is not None:
        return [Refusal(index, user, "version_conflict", stale.message, stale.details)]
    refusals = []
    current = values[_PERIOD_START] == start
    for kind, after in request.allowances.items():
        minimum = minimums[kind]
        committed = 0
        if not request.new:
            committed = (values[_USED[kind]] if current else 0) + values[_RESERVED[kind]]
        rule: tuple[str, str, dict[str, int]]
        if after > MAX_AMOUNT:
            rule = (
                "amount_too_large",
                f"no allowance may exceed {fmt(MAX_AMOUNT)} (2^53)",
                {"maximum": MAX_AMOUNT},
            )
        elif after < minimum:
            rule = ("below_minimum", f"the minimum is {fmt(minimum)}", {"minimum": minimum})
        elif after < committed:
            rule = (
                "below_used",
                f"they have already used or reserved {fmt(committed)} this period",
                {"used_and_reserved": committed},
            )
        else:
            continue
        code, why, details = rule
        refusals.append(
            Refusal(
                index,
                user,
                code,
                f"{ALLOWANCE_LABEL[kind]} for {user.email} would be {fmt(after)}; {why}.",
                {"kind": kind.value, "requested": after, **details},
                new=request.new,
            )
        )
    return refusals


def _wanted(request: Request) -> dict[str, Any]:
    """The fields a row changes, with the values it sets."""
    user = request.user
    return {
        ALLOWANCE_FIELD[kind]: value
        for kind, value in request.allowances.items()
        if request.new or user.allowance(kind) != value
    }


def _stale_details(user: User, expected: int) -> dict[str, Any]:
    return {
        "expected_version": expected,
        "current": {
            "version": user.version,
            "max_tokens": user.max_tokens,
            "max_train_tokens": user.max_train_tokens,
            "name": user.name,
            "role": user.role,
            "status": user.status,
        },
    }


def version_conflict(user: User, expected: int | None) -> VersionConflict | None:
    """The refusal when a change carries a version the user no longer has, with the
    current values so the client can show both, for a caller without the user's history
    at hand (`check_version` and `plan` read it, and merge changes of other fields)."""
    if expected is None or expected == user.version:
        return None
    return VersionConflict(
        f"{user.email} was changed by someone else since you loaded it;"
        " reload to see the current values.",
        details=_stale_details(user, expected),
    )


VERSIONED_ACTIONS = (
    "allowance_changed",
    "user_changed",
    "user_created",
    "user_deactivated",
    "user_reactivated",
)
"""The journal actions that change a user's version; their entries carry the version the
user had after the change (`details.version`)."""

HISTORY_LIMIT = 200
"""How many of a user's latest versioned entries a version check reads; a user changed more
often since the version sent is a conflict (the history it would need is not read)."""


@dataclass
class Since:
    """What changed of one user after a version, as the journal tells it."""

    expected: int
    changes: list[dict[str, Any]]
    """Oldest first: {field, kind, from, to, by, at} (`by` the actor as journaled, `at`
    ISO 8601 UTC); a deactivation or reactivation is a change of `status`."""
    complete: bool
    """Every version after `expected` up to the user's own was found: `changes` is all."""
    names: dict[str, str] = field(default_factory=dict)
    """Actors as a person reads them ("user:ravi@acme.example" → "Ravi")."""

    @property
    def fields(self) -> set[str]:
        return {c["field"] for c in self.changes}


async def changes_since(
    session: AsyncSession, org: Organization, user: User, expected: int
) -> Since:
    """The changes of `user` after version `expected`, from their journal entries."""
    return (await changes_since_many(session, org, [(user, expected)]))[user.id]


_HISTORY_COLUMNS = (
    JournalEntry.id,
    JournalEntry.user_id,
    JournalEntry.created_at,
    JournalEntry.actor,
    JournalEntry.action,
    JournalEntry.kind,
    JournalEntry.allowance_delta,
    JournalEntry.allowance_after,
    JournalEntry.details,
)


async def changes_since_many(
    session: AsyncSession, org: Organization, stale: Sequence[tuple[User, int]]
) -> dict[uuid.UUID, Since]:
    """For each (user, expected version): the user's changes since, from the newest
    HISTORY_LIMIT versioned journal entries of each (one query per 500 users)."""
    rows: dict[uuid.UUID, list[Any]] = {user.id: [] for user, _ in stale}
    ids = list(rows)
    for start in range(0, len(ids), 500):
        newest = (
            select(
                *_HISTORY_COLUMNS,
                func.row_number()
                .over(partition_by=JournalEntry.user_id, order_by=JournalEntry.id.desc())
                .label("newest"),
            )
            .where(
                JournalEntry.user_id.in_(ids[start : start + 500]),
                JournalEntry.action.in_(VERSIONED_ACTIONS),
            )
            .subquery()
        )
        statement = select(newest).where(newest.c.newest <= HISTORY_LIMIT).order_by(newest.c.id)
        for row in await session.execute(statement):
            rows[row.user_id].append(row)
    found = {user.id: _since(user, expected, rows[user.id]) for user, expected in stale}
    names = await _actor_names(session, org, [c for s in found.values() for c in s.changes])
    for since in found.values():
        since.names = names
    return found


def _since(user: User, expected: int, entries: list[Any]) -> Since:
    """What `entries` (a user's versioned journal entries, oldest first) tell of the changes
    after version `expected`."""
    changes: list[dict[str, Any]] = []
    found: set[int] = set()
    status = {"user_deactivated": "deactivated", "user_reactivated": "active"}
    for entry in entries:
        details = entry.details if isinstance(entry.details, dict) else {}
        version = details.get("version")
        if not isinstance(version, int) or not expected < version <= user.version:
            continue
        at = entry.created_at.astimezone(UTC).isoformat().replace("+00:00", "Z")
        said = {"by": entry.actor, "at": at}
        if entry.action in status and version not in found:
            to = status[entry.action]
            was = "active" if to == "deactivated" else "deactivated"
            changes.append({"field": "status", "kind": None, "from": was, "to": to, **said})
        found.add(version)
        if entry.action == "user_changed":
            for name, pair in details.items():
                if name in ("name", "role") and isinstance(pair, list) and len(pair) == 2:
                    changes.append(
                        {"field": name, "kind": None, "from": pair[0], "to": pair[1], **said}
                    )
        elif entry.action != "user_deactivated" and entry.kind is not None:
            kind = Kind(entry.kind)
            after = entry.allowance_after or 0
            changes.append(
                {
                    "field": ALLOWANCE_FIELD[kind],
                    "kind": kind.value,
                    "from": after - entry.allowance_delta,
                    "to": after,
                    **said,
                }
            )
    complete = found >= set(range(expected + 1, user.version + 1))
    return Since(expected, changes, complete)


async def _actor_names(
    session: AsyncSession, org: Organization, changes: list[dict[str, Any]]
) -> dict[str, str]:
    actors = {c["by"] for c in changes}
    emails = [a.removeprefix("user:") for a in actors if a.startswith("user:")]
    people = await user_repository.find_in_org(session, org.id, emails=emails) if emails else []
    named = {f"user:{p.email}": p.name or p.email for p in people}
    words = {}
    for actor in actors:
        label, _, name = actor.partition(":")
        if actor in named:
            words[actor] = named[actor]
        elif label == "user":
            words[actor] = name
        elif label == "key":
            words[actor] = f"the API key {name}"
        elif label == "operator":
            words[actor] = f"the operator {name}"
        else:
            words[actor] = "the system" if actor == "system" else actor
    return words


def _when(at: str, org: Organization, now: datetime) -> str:
    """A moment of `changes_since` in the organization's time zone, with its date unless
    it is today."""
    zone = ZoneInfo(org.time_zone)
    moment = datetime.fromisoformat(at).astimezone(zone)
    clock = f"{moment:%H:%M} {moment.tzname() or org.time_zone}"
    if moment.date() == now.astimezone(zone).date():
        return f"at {clock}"
    return f"on {moment:%Y-%m-%d} at {clock}"


def _value(value: Any) -> str:
    return fmt(value) if isinstance(value, int) else str(value)


FIELD_WORDS = {
    "max_tokens": ALLOWANCE_LABEL[Kind.inference],
    "max_train_tokens": ALLOWANCE_LABEL[Kind.training],
    "name": "name",
    "role": "role",
}


def conflict_since(
    org: Organization,
    user: User,
    expected: int,
    wanted: dict[str, Any],
    since: Since | None,
    now: datetime,
) -> VersionConflict | None:
    """The version check with the journal's help: a change made with a version the user no
    longer has goes ahead (merges) when none of the fields it changes (`wanted`: field →
    the value sent, only those that differ from the current ones) was changed since, nor
    the user's status. Otherwise the conflict, naming who changed what, from what to what
    and when. Without the history (`since` None, or incomplete) every field is in
    conflict: nothing is overwritten on a guess."""
    if expected == user.version or not wanted:
        return None
    # A version before the first (0) is one the journal can't speak of: the user did not
    # exist yet.
    known = since is not None and since.complete and 1 <= expected < user.version
    changes = since.changes if since is not None else []
    theirs = {c["field"] for c in changes}
    if known:
        conflicts = [f for f in wanted if f in theirs]
        if "status" in theirs:
            conflicts.append("status")
        if not conflicts:
            return None
    else:
        conflicts = list(wanted)
    names = since.names if since is not None else {}
    sentences = []
    for name in [*wanted, "status"]:
        mine = [c for c in changes if c["field"] == name]
        if not mine or name not in conflicts:
            continue
        who = " and ".join(dict.fromkeys(names.get(c["by"], c["by"]) for c in mine))
        when = _when(mine[-1]["at"], org, now)
        if name == "status":
            sentences.append(f"{who} {'re' if mine[-1]['to'] == 'active' else 'de'}activated")
            sentences[-1] += f" {user.email} {when}."
            continue
        sentences.append(
            f"{who} changed {user.email}'s {FIELD_WORDS.get(name, name)}"
            f" from {_value(mine[0]['from'])} to {_value(mine[-1]['to'])} {when};"
            f" yours is {_value(wanted[name])}."
        )
    if not known:
        sentences.append(
            f"{user.email} was changed by someone else since you loaded it"
            + (" (and the journal can't tell all of what)" if sentences else "")
            + "; reload to see the current values."
        )
    return VersionConflict(
        " ".join(f"{s[:1].upper()}{s[1:]}" for s in sentences),
        details={
            **_stale_details(user, expected),
            "conflicts": conflicts,
            "changes_since": changes,
            "yours": wanted,
        },
    )


async def check_version(
    session: AsyncSession,
    act: Act,
    org: Organization,
    user: User,
    expected: int | None,
    wanted: dict[str, Any],
) -> VersionConflict | None:
    """`conflict_since` with the user's history read here (one user's change, as the API's
    PATCH of a user makes it). `wanted`: the fields the change sets, with their values."""
    if expected is None or expected == user.version:
        return None
    wanted = {f: v for f, v in wanted.items() if getattr(user, f) != v}
    since = await changes_since(session, org, user, expected) if expected < user.version else None
    return conflict_since(org, user, expected, wanted, since, act.now)


_ONE_USER_ERRORS: dict[str, type[TokenAdminError]] = {
    "version_conflict": VersionConflict,
    "user_deactivated": Conflict,
    "user_not_found": NotFound,
    "duplicate_user": InvalidRequest,
}
"""One user's refusals about the user's state rather than the values sent (409), or about
who was named (404): the status docs/api.md gives each code. Any other rule is a 422."""


def refusal(plan_: Plan, *, one_user: bool = False) -> TokenAdminError:
    """The error of a refused plan. A batch answers `allowance_change_refused` (or
    `version_conflict` when some user changed meanwhile) with every refused row in
    `details.refused`; one user's change answers its first reason's own code, with that
    reason's details and every reason in `details.refused`."""
    rows = [r.to_dict() for r in plan_.refused]
    first = plan_.refused[0]
    more = len(rows) - 1
    if one_user:
        error = _ONE_USER_ERRORS.get(first.code, RuleRefused)
        also = f" (and {more} more {'reason' if more == 1 else 'reasons'})" if more else ""
        return error(
            f"{first.message}{also}", code=first.code, details={**first.details, "refused": rows}
        )
    details = {"refused": rows, "balance_after": _after_dict(plan_)}
    if any(r.code == "version_conflict" for r in plan_.refused):
        return VersionConflict(
            "Some users were changed by someone else meanwhile; nothing was saved.",
            details=details,
        )
    also = f" (and {more} more refused {'row' if more == 1 else 'rows'})" if more else ""
    over_kinds = {r.details["kind"] for r in plan_.refused if r.code == "exceeds_balance"}
    short = [
        f"the {kind} balance would be {fmt(-after.balance)} short"
        for kind, after in plan_.after.items()
        if kind.value in over_kinds
    ]
    over = " and ".join(short)
    over = f"{over[:1].upper()}{over[1:]}. " if over else ""
    return AllowanceChangeRefused(
        f"Nothing was saved: {over}{first.message}{also}", details=details
    )


def _after_dict(plan_: Plan) -> dict[str, Any]:
    return {
        kind.value: {
            "capacity": a.capacity,
            "allocated": a.allocated,
            "balance": a.balance,
        }
        for kind, a in plan_.after.items()
    }


_KIND_FIELD = {kind: (kind.value, ALLOWANCE_FIELD[kind]) for kind in Kind}
"""Each kind's name and its user's column, looked up once (an enum's `value` is a call)."""


_ID_AND_EMAIL = repository.reader("id", "email")


def preview(plan_: Plan) -> dict[str, Any]:
    changes = []
    for c in plan_.changes:
        user_id, email = _ID_AND_EMAIL(c.user)
        kind, field_ = _KIND_FIELD[c.kind]
        changes.append(
            {
                "user_id": str(user_id),
                "email": email,
                "kind": kind,
                "field": field_,
                "before": c.before,
                "after": c.after,
            }
        )
    return {
        "accepted": plan_.accepted,
        "changes": changes,
        "refused": [r.to_dict() for r in plan_.refused],
        "balance_after": _after_dict(plan_),
    }


async def apply(
    session: AsyncSession,
    act: Act,
    org: Organization,
    plan_: Plan,
    *,
    reason: str | None = None,
    action: str = "allowance_changed",
    details: Mapping[str, Any] | None = None,
    heads: Mapping[Chain, str | None] | None = None,
) -> str:
    """Write an accepted plan: every change with its journal entry, in this transaction.

    Returns the batch's id: every entry of the change carries it (`details.batch`), so the
    change can be listed, and reverted, as the one save it was. `details` adds keys to
    every entry's details (a revert's `reverts`: the batch it reverts). `heads`: journal
    heads of users read under their locks in this transaction (`journal.append`).

    Set-based: the entries are made in one pass over plain values (what `journal.record`
    would make, change after change), inserted in one statement, and every changed user
    is written in one more; new users are added to the session, written at its flush.
    """
    if not plan_.accepted:
        raise refusal(plan_)
    batch = str(uuid7())
    start = current_period(org, act.now)
    # Each user's values are read once, as plain values (an ORM attribute costs a call):
    # user id → (user, its `_VALUES`, the allowances moved as the entries are made), and
    # each change's user id.
    users: dict[uuid.UUID, tuple[User, list[Any]]] = {}
    user_ids: list[uuid.UUID] = []
    restarted = False
    for change in plan_.changes:
        user = change.user
        read = _VALUES(user)
        user_ids.append(read[_ID])
        if read[_ID] in users:
            continue
        if not change.new and read[_PERIOD_START] != start:
            start_current_period(session, act, org, user, start)  # rare: recorded first
            restarted = True
            read = _VALUES(user)
        users[read[_ID]] = (user, list(read))
    # One pass: the balances as each entry leaves them.
    allocated = {kind: org.allocated(kind) for kind in Kind}
    capacity = {kind: org.capacity(kind) for kind in Kind}
    rows: list[dict[str, Any]] = []
    extra = dict(details or {})
    at, actor, org_id = act.now, act.actor, org.id
    for change, user_id in zip(plan_.changes, user_ids, strict=True):
        kind, before, after, new = change.kind, change.before, change.after, change.new
        delta = after - before
        held = users[user_id][1]
        if delta:
            allocated[kind] += delta
            held[_ALLOWANCE[kind]] += delta
        rows.append(
            {
                "org_id": org_id,
                "user_id": user_id,
                "purchase_id": None,
                "reservation_id": None,
                "created_at": at,
                "actor": actor,
                "action": "user_created" if new else action,
                "kind": _KIND_FIELD[kind][0],
                "amount": after,
                "reason": reason,
                "capacity_delta": 0,
                "allocated_delta": delta,
                "allowance_delta": delta,
                "used_delta": 0,
                "reserved_delta": 0,
                "capacity_after": capacity[kind] if delta else None,
                "allocated_after": allocated[kind] if delta else None,
                "allowance_after": held[_ALLOWANCE[kind]],
                "used_after": held[_USED[kind]],
                "reserved_after": held[_RESERVED[kind]],
                "details": {
                    **extra,
                    "before": before,
                    "after": after,
                    "batch": batch,
                    # The user's version after this change (`changes_since` reads it).
                    "version": held[_VERSION] if new else held[_VERSION] + 1,
                },
            }
        )
    heads = await session.run_sync(journal_append, rows, heads)
    created = {change.user.id for change in plan_.changes if change.new}
    # The UPDATE writes only the columns this change can move: a column more is one array
    # more to send to PostgreSQL, and on SQLite one index more to rewrite in every row
    # (both allowances are indexed) though its values stay as they are. The counters move
    # only when a user's period restarted (above).
    kinds = {change.kind for change in plan_.changes}
    saved: list[dict[str, Any]] = []
    for user_id, (user, held) in users.items():
        max_tokens, max_train_tokens = (
            held[_ALLOWANCE[Kind.inference]],
            held[_ALLOWANCE[Kind.training]],
        )
        version = held[_VERSION]
        values = {
            "max_tokens": max_tokens,
            "max_train_tokens": max_train_tokens,
            "version": version if user_id in created else version + 1,
            "updated_at": at,
            "journal_head": heads[("user", user_id)],
        }
        if user_id in created:
            for name, value in values.items():
                setattr(user, name, value)
            session.add(user)  # inserted at the session's flush, as it stands now
            continue
        row = {
            "id": user_id,
            "version": values["version"],
            "updated_at": at,
            "journal_head": values["journal_head"],
        }
        if Kind.inference in kinds:
            row["max_tokens"] = max_tokens
        if Kind.training in kinds:
            row["max_train_tokens"] = max_train_tokens
        if restarted:
            row["inference_used"] = user.inference_used
            row["training_used"] = user.training_used
            row["period_start"] = user.period_start
        saved.append(row)
        if instance_state(user).persistent:
            for name, value in values.items():
                set_committed_value(user, name, value)  # as written: nothing left to flush
        else:
            user.__dict__.update(values)  # a row read by `_name_users`: no session's
    await session.run_sync(repository.save_users, org.id, saved)
    for kind in Kind:
        org.add_allocated(kind, allocated[kind] - org.allocated(kind))
    org.updated_at = act.now
    return batch


def allowances_of(max_tokens: int | None, max_train_tokens: int | None) -> dict[Kind, int]:
    """The allowances a request, a row or a command gives (None: that one stays as it is)."""
    given = {Kind.inference: max_tokens, Kind.training: max_train_tokens}
    return {kind: value for kind, value in given.items() if value is not None}


class RowLike(Protocol):
    """A row naming its user by id or email (an API, dashboard or CLI row)."""

    user: str
    max_tokens: int | None
    max_train_tokens: int | None
    expected_version: int | None


@dataclass
class _Named:
    """The rows that name users of this organization, as requests, with their positions
    among all rows; the others refused."""

    requests: list[Request] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    refused: list[Refusal] = field(default_factory=list)
    heads: dict[Chain, str | None] = field(default_factory=dict)
    """The journal heads of the users read here, locked: `apply` needn't read them again."""


_ID_AND_HEAD = repository.reader("id", "journal_head")


async def _name_users(
    session: AsyncSession, org: Organization, rows: Sequence[RowLike | Request]
) -> _Named:
    """Rows naming users by id or email become requests; a user unknown here or named
    twice is refused with its row."""
    refs = [row.user for row in rows if not isinstance(row, Request)]
    by_ref = await repository.users_by_refs(session, org.id, refs) if refs else {}
    named = _Named()
    seen: dict[uuid.UUID, int] = {}
    for index, row in enumerate(rows):
        if isinstance(row, Request):
            request = row
            user_id = request.user.id
        else:
            found = by_ref.get(row.user)
            if found is None:
                message = f"No user '{row.user}' in this organization."
                named.refused.append(Refusal(index, None, "user_not_found", message, ref=row.user))
                continue
            user_id, head = _ID_AND_HEAD(found)
            named.heads[("user", user_id)] = head
            allowances = allowances_of(row.max_tokens, row.max_train_tokens)
            request = Request(found, allowances, row.expected_version)
        if user_id in seen:
            message = (
                f"{request.user.email} appears in rows {seen[user_id]} and {index};"
                " put both columns in one row."
            )
            ref = request.user.email if isinstance(row, Request) else row.user
            named.refused.append(Refusal(index, None, "duplicate_user", message, ref=ref))
            continue
        seen[user_id] = index
        named.requests.append(request)
        named.positions.append(index)
    return named


@dataclass
class ChangeResult:
    """What a change did or, when not `applied` (a dry run, or refused), would do."""

    plan: Plan
    """Its changes, every refused row (indexes are those of the rows given) and the
    balance after."""
    users: list[User]
    """The users of the rows that named one, in row order (new ones included)."""
    applied: bool
    dry_run: bool
    batch: str | None = None
    """The id of the saved batch (journal entries' `details.batch`) once applied."""

    @property
    def accepted(self) -> bool:
        return self.plan.accepted

    def preview(self) -> dict[str, Any]:
        """The result in the shape of `allowance.schemas.AllowancePreview`."""
        with gc_paused():  # a dict per change: see rows.gc_paused
            return {
                "applied": self.applied,
                "dry_run": self.dry_run,
                **preview(self.plan),
                "batch": self.batch,
            }


async def change(
    session: AsyncSession,
    act: Act,
    org: Organization | uuid.UUID,
    rows: Sequence[RowLike | Request],
    *,
    dry_run: bool = False,
    reason: str | None = None,
    one_user: bool = False,
    refuse: bool = True,
    action: str = "allowance_changed",
    details: Mapping[str, Any] | None = None,
) -> ChangeResult:
    """THE allowance change: name the users, plan every row, then refuse or apply.

    `org` is the organization's id (locked here for the change) or the organization the
    caller already locked. `rows` name users by id or email (`RowLike`) or are requests.
    A dry run only plans. A refused plan raises `refusal(plan, one_user=one_user)`, or,
    with `refuse=False`, is returned unapplied for the caller to report (the CLI's
    preview, the CSV import's rows). Nothing is written unless every row is accepted.
    """
    with gc_paused():  # thousands of rows: see rows.gc_paused
        return await _change(
            session,
            act,
            org,
            rows,
            dry_run=dry_run,
            reason=reason,
            one_user=one_user,
            refuse=refuse,
            action=action,
            details=details,
        )


async def _change(
    session: AsyncSession,
    act: Act,
    org: Organization | uuid.UUID,
    rows: Sequence[RowLike | Request],
    *,
    dry_run: bool,
    reason: str | None,
    one_user: bool,
    refuse: bool,
    action: str,
    details: Mapping[str, Any] | None,
) -> ChangeResult:
    if not isinstance(org, Organization):
        org = await lock_for_change(session, act, org)
    named = await _name_users(session, org, rows)
    stale = [
        (request, request.expected_version)
        for request in named.requests
        if request.expected_version is not None
        and request.expected_version < request.user.version
        and not request.new
        and request.since is None
        and _wanted(request)
    ]
    if stale:
        users = [(request.user, expected) for request, expected in stale if expected is not None]
        history = await changes_since_many(session, org, users)
        for request, _ in stale:
            request.since = history[request.user.id]
    plan_ = plan(org, named.requests, act)
    for refused in plan_.refused:
        refused.index = named.positions[refused.index]
    plan_.refused = sorted(plan_.refused + named.refused, key=lambda r: r.index)
    result = ChangeResult(plan_, [r.user for r in named.requests], False, dry_run)
    if dry_run or (not plan_.accepted and not refuse):
        return result
    if not plan_.accepted:
        raise refusal(plan_, one_user=one_user)
    result.batch = await apply(
        session, act, org, plan_, reason=reason, action=action, details=details, heads=named.heads
    )
    result.applied = True
    return result
