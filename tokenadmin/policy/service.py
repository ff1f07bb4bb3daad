"""Allocation policies: per organization and kind, a floor and a ceiling for every user's
allowance, auto-increase, the reclamation of idle allowances, and temporary boosts.

Every move goes through THE allowance change (`allowance.service.change`), so rules 1, 4,
5 and 8 hold as everywhere, and each journal entry names the policy as its cause
(`details.cause = "policy"`, `details.rule`, `details.run`). A run (`run`) computes every
move of every rule first, has the allowance service check them all as one plan (a move
it refuses becomes a skip, with its code), and writes them in the caller's transaction,
lowering moves first; a dry run is the preview. Each move is also a row of the policy's
own log (`PolicyMove`), which the cooldown reads. The job `policies.run` runs every
organization's enabled policy and ends due boosts, one transaction per organization.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession
from uuid6 import uuid7

from tokenadmin.act import Act
from tokenadmin.allowance import service as allowance_service
from tokenadmin.amounts import check_amount
from tokenadmin.clock import Clock
from tokenadmin.config import Settings
from tokenadmin.database import Database
from tokenadmin.errors import Conflict, InvalidRequest, NotFound, RuleRefused, TokenAdminError
from tokenadmin.events import service as events
from tokenadmin.jobs.scheduler import Scheduler
from tokenadmin.journal.service import record
from tokenadmin.models import AllocationPolicy, Boost, Organization, PolicyMove, User
from tokenadmin.organization.service import current_period, lock_for_change
from tokenadmin.policy import repository
from tokenadmin.tokens import ALLOWANCE_LABEL, MAX_AMOUNT, Kind, fmt
from tokenadmin.user import repository as user_repository
from tokenadmin.user.service import find_by_ref

JOB = "policies.run"
logger = logging.getLogger("tokenadmin.policy")
PRESET_NAMES = ("conservative", "standard", "aggressive")
PRESETS_AND_CUSTOM = (*PRESET_NAMES, "custom")
RULES = ("boost_end", "reclaim", "increase")
"""The rules of a run, in the order their moves are written: lowering ones first, so what
they return to the balance is there for the raises."""

_COMMON: dict[str, dict[str, Any]] = {
    "conservative": {
        "trigger_percent": 90,
        "bump_percent": 10,
        "bump_amount": None,
        "cooldown_hours": 168,
        "idle_days": 14,
    },
    "standard": {
        "trigger_percent": 80,
        "bump_percent": 25,
        "bump_amount": None,
        "cooldown_hours": 24,
        "idle_days": 30,
    },
    "aggressive": {
        "trigger_percent": 70,
        "bump_percent": 50,
        "bump_amount": None,
        "cooldown_hours": 6,
        "idle_days": 60,
    },
}
_BOUNDS: dict[str, dict[Kind, tuple[int, int]]] = {
    "conservative": {Kind.inference: (200_000, 1_000_000), Kind.training: (0, 500_000)},
    "standard": {Kind.inference: (200_000, 2_000_000), Kind.training: (0, 1_000_000)},
    "aggressive": {Kind.inference: (500_000, 10_000_000), Kind.training: (0, 5_000_000)},
}
PRESETS: dict[str, dict[Kind, dict[str, Any]]] = {
    name: {
        kind: {
            "floor": floor,
            "ceiling": ceiling,
            "increase_enabled": True,
            "reclaim_enabled": True,
            "reclaim_every_hours": 24,
            **_COMMON[name],
        }
        for kind, (floor, ceiling) in _BOUNDS[name].items()
    }
    for name in PRESET_NAMES
}
"""What each preset fills in, per kind (docs/policy.md has the table). The floor is never
below the organization's minimum of the kind: a preset's floor under it is raised to it,
and its ceiling with it when needed."""

NUMBERS = (
    "floor",
    "ceiling",
    "trigger_percent",
    "bump_percent",
    "bump_amount",
    "cooldown_hours",
    "idle_days",
    "reclaim_every_hours",
)
SWITCHES = ("enabled", "increase_enabled", "reclaim_enabled")
FIELDS = ("preset", *SWITCHES, *NUMBERS)
"""The settings of one kind's policy, as the API, the CLI and the dashboard send them."""

RANGES: dict[str, tuple[int, int, str]] = {
    "trigger_percent": (1, 100, "invalid_percent"),
    "bump_percent": (1, 100, "invalid_percent"),
    "cooldown_hours": (1, 8760, "invalid_policy"),
    "idle_days": (1, 3650, "invalid_policy"),
    "reclaim_every_hours": (1, 8760, "invalid_policy"),
}
WORDS = {
    "trigger_percent": "The trigger (percent of the allowance used)",
    "bump_percent": "The bump (percent of the allowance)",
    "cooldown_hours": "The cooldown (hours)",
    "idle_days": "The days without activity before reclaiming",
    "reclaim_every_hours": "The hours between reclamations",
}
MAX_BOOST_DAYS = 366


class PolicyRefused(RuleRefused):
    """A policy whose numbers break a rule across them (floor_above_ceiling,
    floor_below_minimum)."""


class BoostNotFound(NotFound, code="boost_not_found"):
    """No such boost in this organization."""


class BoostAlreadyEnded(Conflict, code="boost_already_ended"):
    """A boost ends once: by itself at its end, or early by hand."""


# --- settings ------------------------------------------------------------------------------


def preset_values(org: Organization, kind: Kind, preset: str) -> dict[str, Any]:
    """The numbers a preset fills in for this organization: its floor at least the
    organization's minimum, its ceiling at least the floor."""
    values = dict(PRESETS[preset][kind])
    values["floor"] = max(values["floor"], org.minimum(kind))
    values["ceiling"] = max(values["ceiling"], values["floor"])
    return values


def defaults(org: Organization, kind: Kind) -> dict[str, Any]:
    """A kind's policy before anyone set it: off, with the standard preset's numbers."""
    return {"preset": "standard", "enabled": False, **preset_values(org, kind, "standard")}


@dataclass
class KindPolicy:
    """One kind's policy as it stands (or would stand), whether saved or not."""

    kind: Kind
    values: dict[str, Any]
    saved: bool = False
    version: int = 0
    updated_at: datetime | None = None
    updated_by: str | None = None
    last_reclaim_at: datetime | None = None

    def __getattr__(self, name: str) -> Any:
        if name in FIELDS:
            return self.values[name]
        raise AttributeError(name)

    def bump(self, allowance: int) -> int:
        """The raise auto-increase gives an allowance, before the ceiling and the balance."""
        if self.values["bump_amount"] is not None:
            return int(self.values["bump_amount"])
        # Whole-number arithmetic, rounded up: a float would lose tokens above 2^53 / 100.
        return max(1, -(-allowance * int(self.values["bump_percent"]) // 100))

    def out(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            **{name: self.values[name] for name in FIELDS},
            "saved": self.saved,
            "version": self.version,
            "updated_at": self.updated_at,
            "updated_by": self.updated_by,
            "last_reclaim_at": self.last_reclaim_at,
        }


def _of_row(row: AllocationPolicy) -> KindPolicy:
    return KindPolicy(
        Kind(row.kind),
        {name: getattr(row, name) for name in FIELDS},
        saved=True,
        version=row.version,
        updated_at=row.updated_at,
        updated_by=row.updated_by,
        last_reclaim_at=row.last_reclaim_at,
    )


async def current(session: AsyncSession, org: Organization) -> dict[Kind, KindPolicy]:
    """Both kinds' policies: the saved ones, the defaults for a kind never set."""
    rows = await repository.policies(session, org.id)
    return {
        kind: _of_row(rows[kind]) if kind in rows else KindPolicy(kind, defaults(org, kind))
        for kind in Kind
    }


def _refuse(field_name: str, message: str, code: str) -> InvalidRequest:
    return InvalidRequest(message, code=code, details={"field": field_name})


def settle(
    org: Organization, kind: Kind, base: Mapping[str, Any], changes: Mapping[str, Any]
) -> dict[str, Any]:
    """A kind's settings after `changes` (fields not given stay as in `base`), checked.

    A preset (not `custom`) fills in every number (and turns both rules on); numbers given
    with it are then applied over it, and the policy is `custom` when a number differs
    from the preset's (a rule switched off keeps the preset's name). Refusals, each a
    422 with its code and the field: unknown_field, invalid_policy (a preset or a switch),
    invalid_amount (rule 8: floor 0 to 2^53; ceiling and bump_amount 1 to 2^53),
    invalid_percent (1 to 100), invalid_policy (hours and days out of range), invalid_bump
    (both a percent and an amount), floor_above_ceiling, floor_below_minimum."""
    unknown = sorted(set(changes) - set(FIELDS))
    if unknown:
        raise _refuse(unknown[0], f"Unknown policy setting '{unknown[0]}'.", "unknown_field")
    values = dict(base)
    preset = changes.get("preset")
    if preset is not None:
        if preset not in PRESETS_AND_CUSTOM:
            raise _refuse(
                "preset",
                f"Unknown preset '{preset}'; choose {', '.join(PRESETS_AND_CUSTOM)}.",
                "invalid_policy",
            )
        values["preset"] = preset
        if preset != "custom":
            values.update(preset_values(org, kind, preset))
    for name in SWITCHES:
        if name in changes and changes[name] is not None:
            if not isinstance(changes[name], bool):
                raise _refuse(name, f"{name} is true or false.", "invalid_policy")
            values[name] = changes[name]
    given = {name: changes[name] for name in NUMBERS if changes.get(name) is not None}
    if "bump_percent" in given and "bump_amount" in given:
        raise _refuse(
            "bump_amount",
            "Give the bump as a percent of the allowance or as an amount of tokens, not both.",
            "invalid_bump",
        )
    for name, value in given.items():
        if name in ("floor", "ceiling", "bump_amount"):
            check_amount(value, positive=name != "floor", field=name)
        else:
            low, high, code = RANGES[name]
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise _refuse(
                    name, f"{WORDS[name]} is a whole number from {low} to {fmt(high)}.", code
                )
    if "bump_percent" in given:
        values["bump_amount"] = None
    if "bump_amount" in given:
        values["bump_percent"] = None
    values.update(given)
    preset_numbers = (
        preset_values(org, kind, values["preset"]) if values["preset"] != "custom" else {}
    )
    if any(values[name] != preset_numbers[name] for name in NUMBERS if preset_numbers):
        values["preset"] = "custom"
    label = ALLOWANCE_LABEL[kind]
    if values["floor"] > values["ceiling"]:
        raise PolicyRefused(
            f"The {kind} floor ({fmt(values['floor'])}) is above the ceiling"
            f" ({fmt(values['ceiling'])}).",
            code="floor_above_ceiling",
            details={"kind": kind.value, "floor": values["floor"], "ceiling": values["ceiling"]},
        )
    if values["floor"] < org.minimum(kind):
        raise PolicyRefused(
            f"The {kind} floor ({fmt(values['floor'])}) is below the organization's minimum"
            f" {label} of {fmt(org.minimum(kind))}.",
            code="floor_below_minimum",
            details={"kind": kind.value, "floor": values["floor"], "minimum": org.minimum(kind)},
        )
    return values


@dataclass
class PolicyUpdate:
    policies: dict[Kind, KindPolicy]
    preview: Run
    applied: bool


async def update(
    session: AsyncSession,
    act: Act,
    org: Organization,
    changes: Mapping[Kind, Mapping[str, Any]],
    *,
    dry_run: bool = False,
) -> PolicyUpdate:
    """Set one kind's policy or both (`org` locked for change): checked (`settle`), and,
    with `dry_run`, only previewed: what a run of the new policy would do now. A saved
    change is one `policy_changed` journal entry naming what changed
    (`details.allocation_policy`: per kind, each field's [from, to])."""
    policies = await current(session, org)
    wanted: dict[Kind, KindPolicy] = {}
    for kind, policy in policies.items():
        if kind in changes:
            values = settle(org, kind, policy.values, changes[kind])
            wanted[kind] = KindPolicy(
                kind,
                values,
                saved=policy.saved,
                version=policy.version,
                updated_at=policy.updated_at,
                updated_by=policy.updated_by,
                last_reclaim_at=policy.last_reclaim_at,
            )
        else:
            wanted[kind] = policy
    preview = await run(session, act, org, dry_run=True, policies=wanted)
    if dry_run:
        return PolicyUpdate(wanted, preview, applied=False)
    rows = await repository.policies(session, org.id, lock=True)
    changed: dict[str, dict[str, list[Any]]] = {}
    for kind in changes:
        values = wanted[kind].values
        row = rows.get(kind)
        before = policies[kind].values if row is not None else {}
        diff = {n: [before.get(n), values[n]] for n in FIELDS if before.get(n) != values[n]}
        if not diff:
            continue
        changed[kind.value] = diff
        if row is None:
            row = AllocationPolicy(org_id=org.id, kind=kind.value, version=0, **values)
            session.add(row)
        else:
            for name, value in values.items():
                setattr(row, name, value)
        row.version += 1
        row.updated_at = act.now
        row.updated_by = act.actor
        wanted[kind] = _of_row(row)
    if changed:
        record(session, act, org, "policy_changed", details={"allocation_policy": changed})
    return PolicyUpdate(wanted, preview, applied=True)


# --- runs ----------------------------------------------------------------------------------


@dataclass
class Move:
    user: User
    kind: Kind
    rule: str
    before: int
    after: int
    why: str
    boost: Boost | None = None

    @property
    def delta(self) -> int:
        return self.after - self.before

    def out(self) -> dict[str, Any]:
        return {
            "user_id": str(self.user.id),
            "email": self.user.email,
            "name": self.user.name,
            "kind": self.kind.value,
            "rule": self.rule,
            "before": self.before,
            "after": self.after,
            "delta": self.delta,
            "why": self.why,
            "boost_id": str(self.boost.id) if self.boost is not None else None,
        }


@dataclass
class Skip:
    user: User
    kind: Kind
    rule: str
    code: str
    why: str

    def out(self) -> dict[str, Any]:
        return {
            "user_id": str(self.user.id),
            "email": self.user.email,
            "name": self.user.name,
            "kind": self.kind.value,
            "rule": self.rule,
            "code": self.code,
            "why": self.why,
        }


@dataclass
class Run:
    """What a run did or, when `dry_run`, would do now."""

    run_id: uuid.UUID
    dry_run: bool
    moves: list[Move] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    balance_before: dict[Kind, int] = field(default_factory=dict)
    balance_after: dict[Kind, int] = field(default_factory=dict)
    reclaim_checked: list[Kind] = field(default_factory=list)
    batches: dict[str, str] = field(default_factory=dict)
    event: bool = False

    @property
    def applied(self) -> bool:
        return not self.dry_run and bool(self.moves)

    def out(self) -> dict[str, Any]:
        return {
            "run_id": str(self.run_id),
            "dry_run": self.dry_run,
            "applied": self.applied,
            "moves": [m.out() for m in self.moves],
            "skipped": [s.out() for s in self.skipped],
            "balance_before": {k.value: v for k, v in self.balance_before.items()},
            "balance_after": {k.value: v for k, v in self.balance_after.items()},
        }


def _committed(user: User, kind: Kind, start: datetime) -> int:
    return user.used_in(kind, start) + user.reserved(kind)


def _lowest(org: Organization, user: User, kind: Kind, start: datetime, floor: int) -> int:
    """The lowest a policy lowers an allowance to: its floor, never below what the user used
    and reserved this period (rule 5) nor the organization's minimum (rule 4)."""
    return max(floor, _committed(user, kind, start), org.minimum(kind))


def _day(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d}"


async def run(
    session: AsyncSession,
    act: Act,
    org: Organization,
    *,
    dry_run: bool = False,
    scheduled: bool = False,
    policies: Mapping[Kind, KindPolicy] | None = None,
) -> Run:
    """Run the organization's policy now (`org` locked for change): end the boosts due,
    reclaim idle allowances, raise the allowances past their trigger; a dry run only says
    what it would do. `scheduled` (the job): reclamation only when its interval has passed
    since the last; run by hand, it always reclaims. `policies` previews unsaved settings."""
    if policies is None:
        policies = await current(session, org)
    result = Run(run_id=uuid7(), dry_run=dry_run)
    start = current_period(org, act.now)
    moved: set[tuple[uuid.UUID, Kind]] = set()
    available = {kind: org.balance(kind) for kind in Kind}
    result.balance_before = dict(available)

    for boost in await repository.due_boosts(session, org.id, act.now):
        user = await user_repository.get(session, boost.user_id)
        assert user is not None
        kind = Kind(boost.kind)
        move = _boost_end_move(org, user, boost, policies[kind], start, early=False)
        if move is not None:
            result.moves.append(move)
            moved.add((user.id, kind))
            available[kind] -= move.delta
        elif not dry_run:
            _close(boost, act, 0)

    for kind, policy in policies.items():
        if not policy.enabled or not policy.reclaim_enabled:
            continue
        due = policy.last_reclaim_at is None or act.now - policy.last_reclaim_at >= timedelta(
            hours=policy.reclaim_every_hours
        )
        if scheduled and not due:
            continue
        result.reclaim_checked.append(kind)
        since = act.now - timedelta(days=policy.idle_days)
        boosted = await repository.active_boosted(session, org.id, kind)
        for user in await repository.idle(session, org.id, kind, since, policy.floor):
            if (user.id, kind) in moved:
                continue
            if user.id in boosted:
                result.skipped.append(
                    Skip(user, kind, "reclaim", "boost_active", "Has a boost running; kept.")
                )
                continue
            before = user.allowance(kind)
            after = _lowest(org, user, kind, start, policy.floor)
            if after >= before:
                continue
            last = user.last_activity_at
            idle_since = f"since {_day(last)}" if last else "ever"
            to = "the floor" if after == policy.floor else "what they keep (used, minimum)"
            why = f"No activity {idle_since} ({policy.idle_days}+ days idle); lowered to {to}."
            result.moves.append(Move(user, kind, "reclaim", before, after, why))
            moved.add((user.id, kind))
            available[kind] += before - after

    for kind, policy in policies.items():
        if not policy.enabled or not policy.increase_enabled:
            continue
        candidates = await repository.over_trigger(
            session, org.id, kind, start, policy.trigger_percent, policy.ceiling
        )
        cooled = act.now - timedelta(hours=policy.cooldown_hours)
        recent = await repository.last_increases(session, [u.id for u in candidates], kind, cooled)
        for user in candidates:
            if (user.id, kind) in moved:
                continue
            before = user.allowance(kind)
            share = _committed(user, kind, start) * 100 // before
            if user.id in recent:
                why = f"Raised within the last {policy.cooldown_hours} h (cooldown)."
                result.skipped.append(Skip(user, kind, "increase", "cooldown", why))
                continue
            bump = policy.bump(before)
            raise_by = min(bump, policy.ceiling - before)
            limited = ""
            if raise_by < bump:
                limited = f" (the bump of {fmt(bump)} stops at the ceiling)"
            if not org.overallocation and raise_by > available[kind]:
                if available[kind] <= 0:
                    why = f"Used {share} % of {fmt(before)}; no {kind} tokens left in the balance."
                    result.skipped.append(Skip(user, kind, "increase", "exceeds_balance", why))
                    continue
                raise_by = available[kind]
                limited = f" (the bump of {fmt(bump)} cut to the {fmt(raise_by)} left)"
            after = min(before + raise_by, MAX_AMOUNT)
            why = (
                f"Used {share} % of {fmt(before)} (trigger {policy.trigger_percent} %);"
                f" raised by {fmt(after - before)}{limited}."
            )
            result.moves.append(Move(user, kind, "increase", before, after, why))
            moved.add((user.id, kind))
            available[kind] -= after - before

    await _check(session, act, org, result)
    result.balance_after = {
        kind: result.balance_before[kind] - sum(m.delta for m in result.moves if m.kind is kind)
        for kind in Kind
    }
    if not dry_run:
        await _write(session, act, org, result, policies)
    return result


def _boost_end_move(
    org: Organization,
    user: User,
    boost: Boost,
    policy: KindPolicy,
    start: datetime,
    *,
    early: bool,
) -> Move | None:
    """The move that takes a boost back: lower by its amount, never below what was used and
    reserved, the floor of an enabled policy, nor the minimum. None when nothing is taken
    back (a deactivated user, or one who used it all)."""
    kind = Kind(boost.kind)
    if not user.active:
        return None
    before = user.allowance(kind)
    floor = policy.floor if policy.enabled else 0
    after = max(before - boost.amount, _lowest(org, user, kind, start, floor))
    if after >= before:
        return None
    how = "ended early" if early else f"ended {_day(boost.ends_at)}"
    kept = "" if before - after == boost.amount else f" (only {fmt(before - after)}: used, floor)"
    why = f"Boost of {fmt(boost.amount)} {how}; taken back{kept}."
    return Move(user, kind, "boost_end", before, after, why, boost)


async def _check(session: AsyncSession, act: Act, org: Organization, result: Run) -> None:
    """Every move through the allowance service's plan as one change: a move it refuses
    leaves the run as a skip with the refusal's code, and the rest is asked again."""
    while result.moves:
        requests = _requests(result.moves)
        check = await allowance_service.change(session, act, org, requests, dry_run=True)
        if check.accepted:
            return
        for refusal in check.plan.refused:
            user = requests[refusal.index].user
            kind = refusal.details.get("kind")
            for move in [m for m in result.moves if m.user.id == user.id]:
                if kind is None or move.kind.value == kind:
                    result.moves.remove(move)
                    result.skipped.append(
                        Skip(move.user, move.kind, move.rule, refusal.code, refusal.message)
                    )


def _requests(moves: list[Move]) -> list[allowance_service.Request]:
    by_user: dict[uuid.UUID, allowance_service.Request] = {}
    for move in moves:
        request = by_user.setdefault(move.user.id, allowance_service.Request(move.user, {}))
        request.allowances[move.kind] = move.after
    return list(by_user.values())


def _close(boost: Boost, act: Act, taken_back: int) -> None:
    boost.state = "ended"
    boost.ended_at = act.now
    boost.ended_by = act.actor
    boost.taken_back = taken_back


async def _write(
    session: AsyncSession,
    act: Act,
    org: Organization,
    result: Run,
    policies: Mapping[Kind, KindPolicy],
) -> None:
    """Write a checked run: each rule's moves as one allowance change, lowering ones first,
    each entry naming the policy; the log's rows; the boosts ended; the reclamation's
    time; and, when tokens moved, the event `policy.moved`."""
    for rule in RULES:
        moves = [m for m in result.moves if m.rule == rule]
        if not moves:
            continue
        applied = await allowance_service.change(
            session,
            act,
            org,
            _requests(moves),
            reason=f"Allocation policy: {RULE_WORDS[rule]}",
            details={"cause": "policy", "rule": rule, "run": str(result.run_id)},
        )
        assert applied.batch is not None
        result.batches[rule] = applied.batch
        for move in moves:
            _log(session, act, org, result.run_id, move, applied.batch)
            if move.boost is not None:
                _close(move.boost, act, -move.delta)
    if result.reclaim_checked:
        rows = await repository.policies(session, org.id)
        for kind in result.reclaim_checked:
            if kind in rows:
                rows[kind].last_reclaim_at = act.now
    if result.moves:
        result.event = await _emit(session, act, org, result)


RULE_WORDS = {
    "increase": "auto-increase",
    "reclaim": "reclamation of an idle allowance",
    "boost": "temporary boost",
    "boost_end": "end of a temporary boost",
}


def _log(
    session: AsyncSession, act: Act, org: Organization, run_id: uuid.UUID, move: Move, batch: str
) -> None:
    session.add(
        PolicyMove(
            org_id=org.id,
            run_id=run_id,
            user_id=move.user.id,
            kind=move.kind.value,
            rule=move.rule,
            before=move.before,
            after=move.after,
            why=move.why,
            batch=batch,
            boost_id=move.boost.id if move.boost is not None else None,
            actor=act.actor,
            created_at=act.now,
        )
    )


async def _emit(session: AsyncSession, act: Act, org: Organization, result: Run) -> bool:
    raised = {
        k.value: sum(m.delta for m in result.moves if m.kind is k and m.delta > 0) for k in Kind
    }
    lowered = {
        k.value: -sum(m.delta for m in result.moves if m.kind is k and m.delta < 0) for k in Kind
    }
    users = len({m.user.id for m in result.moves})
    parts = [f"raised {fmt(v)} {k}" for k, v in raised.items() if v]
    parts += [f"lowered {fmt(v)} {k}" for k, v in lowered.items() if v]
    return await events.emit(
        session,
        act,
        org.id,
        "policy.moved",
        key=f"policy.moved:{result.run_id}",
        message=f"The allocation policy changed {users} allowance{'s' if users != 1 else ''}:"
        f" {', '.join(parts)} tokens.",
        data={
            "run_id": str(result.run_id),
            "moves": len(result.moves),
            "users": users,
            "raised": raised,
            "lowered": lowered,
            "rules": {r: sum(1 for m in result.moves if m.rule == r) for r in RULES},
        },
    )


# --- boosts ------------------------------------------------------------------------------


@dataclass
class BoostResult:
    boost: Boost
    user: User
    move: Move | None = None


async def add_boost(
    session: AsyncSession,
    act: Act,
    org: Organization,
    *,
    user_ref: str,
    kind: Kind,
    amount: int,
    ends_at: datetime,
    reason: str | None = None,
) -> BoostResult:
    """Raise one user's allowance of one kind by `amount` until `ends_at`, at once, through
    the allowance change (rules 1 and 8 refuse it as any raise: exceeds_balance,
    amount_too_large; a deactivated user: user_deactivated). Refused: invalid_amount,
    boost_end_in_past, boost_too_long (more than MAX_BOOST_DAYS)."""
    check_amount(amount, positive=True, field="amount")
    if ends_at <= act.now:
        raise InvalidRequest(
            "A boost ends in the future; that moment has passed.",
            code="boost_end_in_past",
            details={"field": "ends_at"},
        )
    if ends_at - act.now > timedelta(days=MAX_BOOST_DAYS):
        raise InvalidRequest(
            f"A boost lasts at most {MAX_BOOST_DAYS} days.",
            code="boost_too_long",
            details={"field": "ends_at", "maximum_days": MAX_BOOST_DAYS},
        )
    user = await find_by_ref(session, org.id, user_ref)
    boost = Boost(
        id=uuid7(),
        org_id=org.id,
        user_id=user.id,
        kind=kind.value,
        amount=amount,
        reason=reason,
        state="active",
        created_at=act.now,
        created_by=act.actor,
        ends_at=ends_at,
    )
    before = user.allowance(kind)
    after = before + amount
    request = allowance_service.Request(user, {kind: after})
    run_id = uuid7()
    applied = await allowance_service.change(
        session,
        act,
        org,
        [request],
        one_user=True,
        reason=f"Allocation policy: {RULE_WORDS['boost']}" + (f": {reason}" if reason else ""),
        details={"cause": "policy", "rule": "boost", "run": str(run_id), "boost": str(boost.id)},
    )
    assert applied.batch is not None
    session.add(boost)
    why = f"Boost of {fmt(amount)} until {_day(ends_at)}" + (f": {reason}" if reason else ".")
    move = Move(user, kind, "boost", before, after, why, boost)
    _log(session, act, org, run_id, move, applied.batch)
    return BoostResult(boost, user, move)


async def end_boost(
    session: AsyncSession, act: Act, org: Organization, boost_id: uuid.UUID
) -> BoostResult:
    """End an active boost now: taken back as at its end (`_boost_end_move`)."""
    boost = await repository.get_boost(session, boost_id)
    if boost is None or boost.org_id != org.id:
        raise BoostNotFound("No such boost in this organization.")
    user = await user_repository.get(session, boost.user_id)
    assert user is not None
    if boost.state != "active":
        raise BoostAlreadyEnded(
            f"This boost of {user.email} already ended.",
            details={
                "boost_id": str(boost.id),
                "ended_at": boost.ended_at.isoformat() if boost.ended_at else None,
            },
        )
    kind = Kind(boost.kind)
    policy = (await current(session, org))[kind]
    move = _boost_end_move(org, user, boost, policy, current_period(org, act.now), early=True)
    taken_back = 0
    if move is not None:
        run_id = uuid7()
        applied = await allowance_service.change(
            session,
            act,
            org,
            [allowance_service.Request(user, {kind: move.after})],
            one_user=True,
            reason=f"Allocation policy: {RULE_WORDS['boost_end']}",
            details={
                "cause": "policy",
                "rule": "boost_end",
                "run": str(run_id),
                "boost": str(boost.id),
            },
        )
        assert applied.batch is not None
        _log(session, act, org, run_id, move, applied.batch)
        taken_back = -move.delta
    _close(boost, act, taken_back)
    return BoostResult(boost, user, move)


# --- the job -------------------------------------------------------------------------------


async def run_org(session: AsyncSession, act: Act, org_id: uuid.UUID) -> Run:
    org = await lock_for_change(session, act, org_id)
    return await run(session, act, org, scheduled=True)


async def run_all(db: Database, clock: Clock) -> int:
    """Every organization's enabled policy and due boosts, one transaction each; the
    number of moves made."""
    now = clock.now()
    act = Act("system:policy", now)
    moved = 0
    refused = 0
    for org_id in await db.read(lambda session: repository.orgs_with_work(session, now)):
        try:
            result = await db.write(partial(run_org, act=act, org_id=org_id))
        except TokenAdminError:
            # One organization's run refused (its transaction rolled back) must not keep
            # the others' from running; the job reports it once all have run.
            logger.exception("the allocation policy of organization %s could not run", org_id)
            refused += 1
            continue
        moved += len(result.moves)
    if refused:
        raise RuleRefused(
            f"The allocation policy of {refused} organization(s) could not run; see the log.",
            code="policy_run_failed",
        )
    return moved


def register(scheduler: Scheduler, settings: Settings) -> None:
    """`policies.run`, every `sweep_interval_seconds` unless `job_intervals` names it."""
    interval = settings.job_intervals.get(JOB, settings.sweep_interval_seconds)
    scheduler.register(JOB, interval, run_all)


# --- reading -------------------------------------------------------------------------------


def presets_for(org: Organization) -> dict[str, dict[str, dict[str, Any]]]:
    """What each preset fills in for this organization, per kind."""
    return {
        name: {kind.value: preset_values(org, kind, name) for kind in Kind} for name in PRESET_NAMES
    }


async def log(
    session: AsyncSession, org: Organization, *, limit: int = 50, offset: int = 0
) -> tuple[list[tuple[PolicyMove, User]], int]:
    """The policy's moves, newest first (runs, boosts and their ends)."""
    rows, total = await repository.moves(session, org.id, limit=limit, offset=offset)
    return list(rows), total


async def boosts(
    session: AsyncSession,
    org: Organization,
    *,
    user_id: uuid.UUID | None = None,
    state: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> tuple[list[tuple[Boost, User]], int]:
    """Boosts, active ones first (each by its end), then ended ones."""
    rows, total = await repository.boosts(
        session, org.id, user_id=user_id, state=state, limit=limit, offset=offset
    )
    return list(rows), total
