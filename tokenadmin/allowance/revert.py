"""Revert a save: a saved allowance batch undone in one atomic inverse change.

Every allowance change writes its journal entries with the id of its batch
(`details.batch`, see `service.apply`), each with the allowance `before` and `after` it.
`batches` lists them; `plan_revert` gives, for every entry of one batch, the row that
sets the allowance back to `before`, or why it can't be: the allowance changed since (by
whom and when, from the journal), or the allowance service refuses the row (a deactivated
user, used since, the minimum, the balance: its rules, asked with a dry run, never
repeated here). `revert` applies the rows that can be reverted in one allowance change,
all of them or none, whose entries name the batch they revert (`details.reverts`).
A batch is reverted once.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.act import Act
from tokenadmin.allowance import service as allowance_service
from tokenadmin.errors import Conflict, NotFound
from tokenadmin.journal import repository as journal_repository
from tokenadmin.models import JournalEntry, Organization, User
from tokenadmin.organization.service import lock_for_change
from tokenadmin.tokens import ALLOWANCE_FIELD, ALLOWANCE_LABEL, Kind, fmt
from tokenadmin.user import repository as user_repository

PAGE_LIMIT = 200
"""The most batches one page lists."""
MAX_CHANGES_SHOWN = 20
"""A row changed since lists its last changes, at most this many."""


class BatchNotFound(NotFound, code="batch_not_found"):
    """No saved allowance batch of this organization has this id."""


class AlreadyReverted(Conflict, code="already_reverted"):
    """The batch was reverted already; revert the revert to undo that."""


class NothingToRevert(Conflict, code="nothing_to_revert"):
    """No row of the batch can be reverted any more; each row says why."""


class RevertPreviewStale(Conflict, code="preview_stale"):
    """Apply was given the token of a preview that no longer matches what is stored."""


@dataclass
class Batch:
    """A saved allowance change: who saved it, when, why, and what it moved."""

    id: str
    at: datetime
    actor: str
    reason: str | None
    rows: int
    """Entries: one per user and allowance changed."""
    users: int
    delta: dict[Kind, int]
    """Per kind, the sum of the batch's changes (negative when it lowered allowances)."""
    reverts: str | None = None
    """The batch this one reverted, when it is a revert."""
    reverted_by: str | None = None
    reverted_at: datetime | None = None
    reverted_by_actor: str | None = None

    @property
    def reverted(self) -> bool:
        return self.reverted_by is not None

    def out(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at,
            "actor": self.actor,
            "reason": self.reason,
            "rows": self.rows,
            "users": self.users,
            "delta": {kind.value: self.delta[kind] for kind in Kind},
            "reverts": self.reverts,
            "reverted": self.reverted,
            "reverted_by": self.reverted_by,
            "reverted_at": self.reverted_at,
            "reverted_by_actor": self.reverted_by_actor,
        }


def _batch(row: journal_repository.BatchRow, revert: journal_repository.RevertRow | None) -> Batch:
    return Batch(
        id=row.batch,
        at=row.created_at,
        actor=row.actor,
        reason=row.reason,
        rows=row.entries,
        users=row.users,
        delta={Kind.inference: row.inference_delta, Kind.training: row.training_delta},
        reverts=row.reverts,
        reverted_by=revert.batch if revert else None,
        reverted_at=revert.created_at if revert else None,
        reverted_by_actor=revert.actor if revert else None,
    )


async def batches(
    session: AsyncSession, org: Organization, *, before: str | None = None, limit: int = 50
) -> list[Batch]:
    """The organization's saved allowance batches, newest first, `limit` of them older than
    the batch `before` (the last id of the page before)."""
    rows = await journal_repository.list_batches(
        session, org.id, before=before, limit=min(limit, PAGE_LIMIT)
    )
    reverted = await journal_repository.reverts_of(session, org.id, [r.batch for r in rows])
    return [_batch(row, reverted.get(row.batch)) for row in rows]


@dataclass
class Change:
    """One entry of a batch changed since: from, to, by whom, when."""

    entry_id: int
    action: str
    from_: int
    to: int
    by: str
    at: datetime

    def out(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "from": self.from_,
            "to": self.to,
            "by": self.by,
            "at": self.at.isoformat(),
        }


@dataclass
class RevertRow:
    """One entry of the batch and its inverse: the allowance `now`, set back to `back_to`
    (`before` the save), or why it can't be (`reasons`, each with a code and a message)."""

    user: User | None
    user_id: uuid.UUID
    email: str
    kind: Kind
    saved_from: int
    saved_to: int
    now: int | None
    reasons: list[dict[str, Any]] = field(default_factory=list)

    @property
    def back_to(self) -> int:
        return self.saved_from

    @property
    def revertable(self) -> bool:
        return not self.reasons

    def out(self) -> dict[str, Any]:
        return {
            "user_id": str(self.user_id),
            "email": self.email,
            "name": self.user.name if self.user is not None else None,
            "kind": self.kind.value,
            "field": ALLOWANCE_FIELD[self.kind],
            "saved_from": self.saved_from,
            "saved_to": self.saved_to,
            "now": self.now,
            "back_to": self.back_to,
            "revertable": self.revertable,
            "reasons": self.reasons,
        }


@dataclass
class RevertPlan:
    """What reverting a batch does: every row, the dry run of the ones that can be
    reverted (its balance after), and the token that names exactly this preview."""

    batch: Batch
    rows: list[RevertRow]
    result: allowance_service.ChangeResult | None
    preview_token: str
    reason: str
    applied: bool = False
    dry_run: bool = True
    revert_batch: str | None = None
    """The id of the batch the revert saved, once applied."""

    @property
    def revertable(self) -> list[RevertRow]:
        return [row for row in self.rows if row.revertable]

    @property
    def refused(self) -> list[RevertRow]:
        return [row for row in self.rows if not row.revertable]

    def out(self) -> dict[str, Any]:
        """The plan in the shape of `allowance.schemas.RevertPreview`."""
        after = allowance_service.preview(self.result.plan)["balance_after"] if self.result else {}
        return {
            "batch": self.batch.out(),
            "applied": self.applied,
            "dry_run": self.dry_run,
            "revert_batch": self.revert_batch,
            "reason": self.reason,
            "rows": [row.out() for row in self.rows],
            "revertable": len(self.revertable),
            "refused": len(self.refused),
            "balance_after": after,
            "preview_token": self.preview_token,
        }


def _words_of(actor: str) -> str:
    """An actor as a person reads it: "user:ana@example.com" is ana@example.com."""
    return actor.split(":", 1)[1] if ":" in actor else actor


def _when(org: Organization, at: datetime) -> str:
    return at.astimezone(ZoneInfo(org.time_zone)).strftime("%Y-%m-%d %H:%M %Z")


async def find(session: AsyncSession, org: Organization, batch_id: str) -> Batch:
    """One saved batch of this organization (BatchNotFound when none has this id)."""
    rows = await journal_repository.list_batches(
        session, org.id, before=None, limit=1, only=batch_id
    )
    if not rows:
        raise BatchNotFound(
            f"No saved allowance change '{batch_id}' in this organization.",
            details={"batch": batch_id},
        )
    reverted = await journal_repository.reverts_of(session, org.id, [batch_id])
    return _batch(rows[0], reverted.get(batch_id))


def _refuse_reverted(org: Organization, batch: Batch) -> None:
    if batch.reverted and batch.reverted_at is not None and batch.reverted_by_actor is not None:
        raise AlreadyReverted(
            f"This save was already reverted by {_words_of(batch.reverted_by_actor)}"
            f" at {_when(org, batch.reverted_at)}; to undo that, revert the revert.",
            details={
                "batch": batch.id,
                "reverted_by": batch.reverted_by,
                "reverted_at": batch.reverted_at.isoformat(),
                "reverted_by_actor": batch.reverted_by_actor,
            },
        )


def _changed_since(
    org: Organization, row: RevertRow, entry: JournalEntry, since: list[JournalEntry]
) -> dict[str, Any]:
    """The reason a row can't be reverted when its allowance changed after the save
    (`since`: the entries that changed that user's allowances after the batch's first)."""
    changes = [
        Change(
            e.id,
            e.action,
            (e.allowance_after or 0) - e.allowance_delta,
            e.allowance_after or 0,
            e.actor,
            e.created_at,
        )
        for e in since
        if e.id > entry.id
    ]
    label = ALLOWANCE_LABEL[row.kind]
    now = fmt(row.now or 0)
    if changes:
        last = changes[-1]
        message = (
            f"{_words_of(last.by)} changed {row.email}'s {label} from {fmt(last.from_)} to"
            f" {fmt(last.to)} at {_when(org, last.at)}, after this save; it stays {now}."
        )
    else:
        message = f"{row.email}'s {label} changed after this save; it stays {now}."
    return {
        "code": "changed_since",
        "message": message,
        "kind": row.kind.value,
        "now": row.now,
        "saved_to": row.saved_to,
        "changes_since": [c.out() for c in changes[-MAX_CHANGES_SHOWN:]],
    }


async def plan_revert(
    session: AsyncSession, act: Act, org: Organization, batch_id: str
) -> RevertPlan:
    """Every row of the batch and its inverse, or why it can't be reverted; nothing is
    written. `org` is read as it stands (lock it first to apply the plan)."""
    batch = await find(session, org, batch_id)
    _refuse_reverted(org, batch)
    entries = await journal_repository.batch_entries(session, org.id, batch.id)
    user_ids = sorted({e.user_id for e in entries if e.user_id is not None})
    users = {u.id: u for u in await user_repository.find_in_org(session, org.id, ids=user_ids)}
    rows: list[RevertRow] = []
    wanted: dict[uuid.UUID, dict[Kind, RevertRow]] = {}
    changed: list[tuple[RevertRow, JournalEntry]] = []
    for entry in entries:
        if entry.user_id is None or entry.kind is None:
            continue
        details = entry.details or {}
        user = users.get(entry.user_id)
        kind = Kind(entry.kind)
        row = RevertRow(
            user=user,
            user_id=entry.user_id,
            email=user.email if user is not None else str(entry.user_id),
            kind=kind,
            saved_from=int(
                details.get("before", (entry.allowance_after or 0) - entry.allowance_delta)
            ),
            saved_to=int(details.get("after", entry.allowance_after or 0)),
            now=user.allowance(kind) if user is not None else None,
        )
        rows.append(row)
        if user is None:
            row.reasons.append(
                {
                    "code": "user_not_found",
                    "message": f"No user {entry.user_id} in this organization.",
                }
            )
        elif user.active and row.now != row.saved_to:
            changed.append((row, entry))
        else:
            # A deactivated user is the allowance service's to refuse, with its words.
            wanted.setdefault(user.id, {})[kind] = row
    if changed:
        since = await journal_repository.allowance_changes_since(
            session, sorted({row.user_id for row, _ in changed}), entries[0].id
        )
        for row, entry in changed:
            row.reasons.append(
                _changed_since(org, row, entry, since.get((row.user_id, row.kind), []))
            )
    result = await _dry_run(session, act, org, users, wanted)
    reason = f"Revert of the save of {_when(org, batch.at)} by {_words_of(batch.actor)}"
    return RevertPlan(
        batch=batch,
        rows=rows,
        result=result,
        preview_token=_token(org, batch, rows, users),
        reason=reason,
    )


def _requests(
    users: dict[uuid.UUID, User], wanted: dict[uuid.UUID, dict[Kind, RevertRow]]
) -> list[allowance_service.Request]:
    return [
        allowance_service.Request(
            users[user_id],
            {kind: row.back_to for kind, row in kinds.items()},
            expected_version=users[user_id].version,
        )
        for user_id, kinds in wanted.items()
        if kinds
    ]


async def _dry_run(
    session: AsyncSession,
    act: Act,
    org: Organization,
    users: dict[uuid.UUID, User],
    wanted: dict[uuid.UUID, dict[Kind, RevertRow]],
) -> allowance_service.ChangeResult | None:
    """Ask the allowance service about the rows still wanted until it accepts them all:
    each row it refuses gets its reasons and leaves (a row refused for one kind keeps the
    other), and the rest are asked again, since the balance after changes without it."""
    while True:
        requests = _requests(users, wanted)
        if not requests:
            return None
        result = await allowance_service.change(session, act, org, requests, dry_run=True)
        if result.accepted:
            return result
        for refusal in result.plan.refused:
            user_id = requests[refusal.index].user.id
            kinds = wanted[user_id]
            refused_kind = refusal.details.get("kind")
            reason = refusal.to_dict()
            for kind in list(kinds):
                if refused_kind is None or refused_kind == kind.value:
                    kinds.pop(kind).reasons.append(
                        {k: v for k, v in reason.items() if k not in ("index", "user_id", "email")}
                    )


def _token(
    org: Organization, batch: Batch, rows: list[RevertRow], users: dict[uuid.UUID, User]
) -> str:
    """Names exactly what a preview shows: the batch, and each row with its user's version,
    the allowance now, and whether (and why not) it is reverted; and the balance."""
    parts = [str(org.id), batch.id]
    parts += [f"{kind}={org.capacity(kind)}/{org.allocated(kind)}" for kind in Kind]
    for row in rows:
        user = users.get(row.user_id)
        version = user.version if user is not None else "?"
        codes = ",".join(str(r["code"]) for r in row.reasons)
        parts.append(f"{row.user_id}@{version}:{row.kind}:{row.now}>{row.back_to}:{codes}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


async def revert(
    session: AsyncSession,
    act: Act,
    org_id: uuid.UUID,
    batch_id: str,
    *,
    dry_run: bool = False,
    preview_token: str | None = None,
) -> RevertPlan:
    """Revert a saved batch: every row that can be reverted in one allowance change (all of
    them or none), whose entries name the batch (`details.reverts`); a dry run only plans.
    Refused when the batch was reverted already (AlreadyReverted), when no row can be
    reverted (NothingToRevert, with every row's reasons), and, given the `preview_token` of
    a preview, when anything it showed changed since (RevertPreviewStale)."""
    org = await lock_for_change(session, act, org_id)
    plan = await plan_revert(session, act, org, batch_id)
    plan.dry_run = dry_run
    if dry_run:
        return plan
    if preview_token is not None and preview_token != plan.preview_token:
        raise RevertPreviewStale(
            "Allowances or users changed since that preview; nothing was reverted."
            " Preview the revert again, check it, and apply the new preview.",
            details={"batch": plan.batch.id},
        )
    if plan.result is None:
        raise NothingToRevert(
            "No row of this save can be reverted any more; nothing was changed.",
            details={"batch": plan.batch.id, "rows": [row.out() for row in plan.rows]},
        )
    wanted: dict[uuid.UUID, dict[Kind, RevertRow]] = {}
    users: dict[uuid.UUID, User] = {}
    for row in plan.revertable:
        if row.user is not None:  # always: a row without its user is never revertable
            users[row.user_id] = row.user
            wanted.setdefault(row.user_id, {})[row.kind] = row
    applied = await allowance_service.change(
        session,
        act,
        org,
        _requests(users, wanted),
        reason=plan.reason,
        details={"reverts": plan.batch.id},
    )
    plan.result = applied
    plan.applied = True
    plan.revert_batch = applied.batch
    return plan
