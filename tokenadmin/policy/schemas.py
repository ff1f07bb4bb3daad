"""Bodies and answers of the allocation policy routes (the Python client imports these)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, Field, StrictBool

from tokenadmin.schemas import Amount, Input, Moment, PositiveAmount, Text, WholeNumber
from tokenadmin.tokens import Kind

if TYPE_CHECKING:
    from tokenadmin.models import Boost, PolicyMove, User

Preset = Literal["conservative", "standard", "aggressive", "custom"]
Rule = Literal["increase", "reclaim", "boost", "boost_end"]
BoostState = Literal["active", "ended"]


class KindPolicyIn(Input):
    """One kind's policy; a field left out stays as it is. A preset fills in every number;
    numbers sent with it apply over it (the policy is then `custom`)."""

    preset: Preset | None = None
    enabled: StrictBool | None = Field(default=None, description="The policy runs (off: not).")
    floor: Amount | None = Field(
        default=None, description="The lowest allowance reclamation leaves (at least the minimum)."
    )
    ceiling: PositiveAmount | None = Field(
        default=None, description="The highest allowance auto-increase gives."
    )
    increase_enabled: StrictBool | None = None
    trigger_percent: WholeNumber | None = Field(
        default=None, description="Raise when used and reserved reach this % (1 to 100)."
    )
    bump_percent: WholeNumber | None = Field(
        default=None, description="Raise by this % of the allowance (1 to 100)."
    )
    bump_amount: PositiveAmount | None = Field(
        default=None, description="Raise by this many tokens (instead of a percent)."
    )
    cooldown_hours: WholeNumber | None = Field(
        default=None, description="At most one raise per user in this many hours (1 to 8,760)."
    )
    reclaim_enabled: StrictBool | None = None
    idle_days: WholeNumber | None = Field(
        default=None, description="Reclaim from users idle this many days (1 to 3,650)."
    )
    reclaim_every_hours: WholeNumber | None = Field(
        default=None, description="The scheduled run reclaims once per this many hours."
    )

    def changes(self) -> dict[str, Any]:
        return self.model_dump(exclude_unset=True)


class PolicyIn(Input):
    inference: KindPolicyIn | None = None
    training: KindPolicyIn | None = None
    dry_run: StrictBool = Field(
        default=False, description="Only preview what the new policy would do now."
    )

    def changes(self) -> dict[Kind, dict[str, Any]]:
        given = {Kind.inference: self.inference, Kind.training: self.training}
        return {kind: body.changes() for kind, body in given.items() if body is not None}


class KindPolicyOut(BaseModel):
    kind: Kind
    preset: Preset
    enabled: bool
    floor: int
    ceiling: int
    increase_enabled: bool
    trigger_percent: int
    bump_percent: int | None
    bump_amount: int | None
    cooldown_hours: int
    reclaim_enabled: bool
    idle_days: int
    reclaim_every_hours: int
    saved: bool = Field(description="False: never set, these are the defaults (off).")
    version: int
    updated_at: datetime | None
    updated_by: str | None
    last_reclaim_at: datetime | None


class MoveOut(BaseModel):
    user_id: uuid.UUID
    email: str
    name: str
    kind: Kind
    rule: Rule
    before: int
    after: int
    delta: int
    why: str
    boost_id: uuid.UUID | None = None


class SkipOut(BaseModel):
    user_id: uuid.UUID
    email: str
    name: str
    kind: Kind
    rule: Rule
    code: str = Field(description="cooldown, exceeds_balance, boost_active or a refusal's code.")
    why: str


class RunOut(BaseModel):
    run_id: uuid.UUID
    dry_run: bool
    applied: bool
    moves: list[MoveOut]
    skipped: list[SkipOut]
    balance_before: dict[str, int]
    balance_after: dict[str, int]


class PolicyOut(BaseModel):
    inference: KindPolicyOut
    training: KindPolicyOut
    presets: dict[str, dict[str, dict[str, Any]]] = Field(
        description="What each preset fills in for this organization, per kind."
    )


class PolicyUpdateOut(PolicyOut):
    applied: bool
    preview: RunOut = Field(description="What the policy (as sent) would do now.")


class RunIn(Input):
    dry_run: StrictBool = Field(default=False, description="Only preview; change nothing.")


class LogEntryOut(BaseModel):
    id: uuid.UUID
    run_id: uuid.UUID
    created_at: datetime
    actor: str
    user_id: uuid.UUID
    email: str
    name: str
    kind: Kind
    rule: Rule
    before: int
    after: int
    why: str
    batch: str
    boost_id: uuid.UUID | None

    @classmethod
    def of(cls, move: PolicyMove, user: User) -> LogEntryOut:
        return cls(
            id=move.id,
            run_id=move.run_id,
            created_at=move.created_at,
            actor=move.actor,
            user_id=move.user_id,
            email=user.email,
            name=user.name,
            kind=Kind(move.kind),
            rule=move.rule,
            before=move.before,
            after=move.after,
            why=move.why,
            batch=move.batch,
            boost_id=move.boost_id,
        )


class LogPage(BaseModel):
    moves: list[LogEntryOut]
    total: int
    limit: int
    offset: int


class BoostIn(Input):
    user: Annotated[Text, Field(min_length=1, max_length=320)] = Field(
        description="Whom to boost: their id or email."
    )
    kind: Kind
    amount: PositiveAmount = Field(description="Tokens added to the allowance until the end.")
    ends_at: Moment = Field(description="When the boost ends by itself (at most 366 days on).")
    reason: Annotated[Text, Field(max_length=500)] | None = None


class BoostOut(BaseModel):
    id: uuid.UUID
    user_id: uuid.UUID
    email: str
    name: str
    kind: Kind
    amount: int
    reason: str | None
    state: BoostState
    created_at: datetime
    created_by: str
    ends_at: datetime
    ended_at: datetime | None
    ended_by: str | None
    taken_back: int | None = Field(description="Tokens taken back when it ended.")

    @classmethod
    def of(cls, boost: Boost, user: User) -> BoostOut:
        return cls(
            id=boost.id,
            user_id=boost.user_id,
            email=user.email,
            name=user.name,
            kind=Kind(boost.kind),
            amount=boost.amount,
            reason=boost.reason,
            state=boost.state,
            created_at=boost.created_at,
            created_by=boost.created_by,
            ends_at=boost.ends_at,
            ended_at=boost.ended_at,
            ended_by=boost.ended_by,
            taken_back=boost.taken_back,
        )


class BoostPage(BaseModel):
    boosts: list[BoostOut]
    total: int
    limit: int
    offset: int
