"""A model-based test of the ledger: random sequences of every operation, checked against a
small reference model after every step, on SQLite and on PostgreSQL.

`LedgerMachine` drives the real app through its REST API (in process, with a FakeClock it
moves) with purchases and their expiries, users created, deactivated and reactivated,
allowance batches and single changes, usage, batches of usage, reservations with commit,
release and expiry (by the sweeper, by a commit that comes too late, or by a debit that
needs the room), clock moves across month ends in the organization's time zone, policy
changes (overallocation, minimums, the period monthly or none), and replays of
idempotency keys. The model is plain Python: capacity, allocated, and per user
the allowance, used and open reservations. After every step it checks SPEC section 3 on
what the API reports, that every balance the API reports equals the model's, and that
`verify` finds the journal and the stored balances in agreement.

Budget: `MODEL_EXAMPLES` sequences of up to `MODEL_STEPS` steps per database (25 × 25,
about 20-25 s on SQLite and 20-45 s on PostgreSQL on two cores), from a fixed seed: every
run checks the same sequences, and a failure is reproduced by running the test again.
Hypothesis prints the shortest failing sequence it finds as a program (`state =
LedgerMachine()`, `state.open_organization(...)`, then for each step the operation drawn
and its arguments: `Draw 5 (operation): 'Usage'`, `Draw 6 (Usage): Usage(who=0,
kind='inference', tokens='available+1', by_email=False)`) and a `@reproduce_failure(...)`
line.

To explore other sequences, give another seed: `pytest tests/test_model.py
--hypothesis-seed=N` (or TOKENADMIN_MODEL_SEED=N); the same seed replays the same
sequences, and TOKENADMIN_MODEL_EXAMPLES / TOKENADMIN_MODEL_STEPS run more and longer
ones. To replay one printed failure exactly, put the printed `@reproduce_failure('…',
b'…')` on `LedgerMachine` and run the test again.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import uuid
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar, TypeVar, cast
from zoneinfo import ZoneInfo

import httpx
import pytest
from hypothesis import HealthCheck, Phase, seed, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from tests.databases import empty_postgres
from tests.helpers import Api, funded_org
from tests.scenarios import error_of, get_user, last_entry_id, utc
from tokenadmin.act import Act
from tokenadmin.api_key import service as api_key_service
from tokenadmin.app import create_app
from tokenadmin.clock import FakeClock
from tokenadmin.config import Settings
from tokenadmin.database import Database
from tokenadmin.journal.service import verify
from tokenadmin.sweeper import sweep

T = TypeVar("T")

DEFAULT_EXAMPLES, DEFAULT_STEPS, DEFAULT_SEED = 25, 25, 20261129
MODEL_EXAMPLES = int(os.environ.get("TOKENADMIN_MODEL_EXAMPLES", DEFAULT_EXAMPLES))
MODEL_STEPS = int(os.environ.get("TOKENADMIN_MODEL_STEPS", DEFAULT_STEPS))
MODEL_SEED = os.environ.get("TOKENADMIN_MODEL_SEED")

KINDS = ("inference", "training")
ALLOWANCE_FIELD = {"inference": "max_tokens", "training": "max_train_tokens"}
ZONES = ("UTC", "Europe/Berlin", "America/Los_Angeles", "Asia/Kolkata")
STARTS = (
    datetime(2026, 3, 15, 12, 0, tzinfo=UTC),
    datetime(2026, 3, 31, 21, 58, tzinfo=UTC),  # minutes before April in Berlin (CEST)
    datetime(2026, 10, 31, 22, 55, tzinfo=UTC),  # Berlin's October ends an hour later (CET)
    datetime(2026, 12, 31, 23, 50, tzinfo=UTC),  # a year ends
)
IDEMPOTENCY_TTL = timedelta(hours=48)  # the app's default, which the sweeper purges by
DEFAULT_TTL = 300  # seconds a reservation lives when it names no ttl_seconds
EXPIRY_WARNING = timedelta(days=30)

STATS: Counter[str] = Counter()  # operations run, over every example of a test run
OUTCOMES: Counter[tuple[str, str]] = Counter()  # (what, code or "ok") of every answer checked
MUST_SEE = [
    ("usage", "ok"),
    ("usage", "insufficient_tokens"),
    ("batch event", "ok"),
    ("a reservation", "ok"),
    ("a commit", "ok"),
    ("a release", "ok"),
    ("allowance batch", "applied"),
    ("a user the rules refuse", "the rule's code"),
    ("a policy change", "ok"),
]


# --- the reference model ----------------------------------------------------------------------


def zeros() -> dict[str, int]:
    return {kind: 0 for kind in KINDS}


@dataclass
class MUser:
    id: str
    email: str
    allowance: dict[str, int]  # what an active user may use each period
    used: dict[str, int] = field(default_factory=zeros)  # this period
    active: bool = True
    version: int = 1
    last_change: frozenset[str] | None = None
    """The fields the change that made `version` changed, as the journal tells them (None:
    it can't tell, as after a reactivation, or any field: a creation sets both)."""


@dataclass
class MReservation:
    id: str
    user: MUser
    kind: str
    tokens: int
    expires_at: datetime
    status: str = "open"


@dataclass
class MPurchase:
    id: str
    amounts: dict[str, int]
    expires_at: datetime | None
    expired: bool = False


@dataclass(frozen=True)
class Sent:
    """A request as it was sent, to send again."""

    method: str
    path: str
    secret: str
    body: Any = None
    key: str | None = None


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any
    replayed: bool


@dataclass
class Remembered:
    """An answer the service must give again for the same key and request."""

    sent: Sent
    other: Sent  # the same key with another request: refused as reused
    status: int
    body: Any
    at: datetime


@dataclass
class Outcome:
    """What the model expects of one answer: a status, an error code, and fields it holds."""

    status: int
    code: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    reservation: MReservation | None = None


# Amounts are a number or a name for one relative to the state ("available+1": one token
# more than fits). Hypothesis starts from the first choice of each strategy and returns to
# it when it simplifies, so the first choice is an ordinary, meaningful one.
TokenSpec = int | str
RELATIVE_TOKENS = st.sampled_from(
    ["half", "tenth", "available", "available+1", "remaining", "remaining+1"]
)
TOKENS = st.one_of(RELATIVE_TOKENS, RELATIVE_TOKENS, st.integers(1, 200), st.integers(1, 3_000))
RESERVE_TOKENS = st.one_of(
    st.sampled_from(["tenth", "half", "available", "available+1"]), st.integers(1, 200)
)
ALLOWANCE = st.one_of(
    st.sampled_from(
        [2_000, "same", "minimum", "minimum-1", "committed", "committed-1", "balance", "balance+1"]
    ),
    st.integers(0, 8_000),
)
WHO = st.integers(0, 7)
SOMETIMES = st.sampled_from([False, False, False, True])
KIND = st.sampled_from(["inference", "inference", "training"])
VERSION = st.sampled_from([None, None, "current", "stale"])
Row = tuple[int, TokenSpec | None, TokenSpec | None, str | None]
Event = tuple[int, str, TokenSpec, str]


# --- the operations a step runs ---------------------------------------------------------------
# Each is a small value, so a failing sequence prints as readable steps. Users, reservations
# and remembered keys are named by a number taken modulo how many there are; an operation
# that needs something that does not exist yet (a user, a reservation) is not drawn.


@dataclass(frozen=True)
class Usage:
    who: int
    kind: str
    tokens: TokenSpec
    by_email: bool


@dataclass(frozen=True)
class UsageBatch:
    events: tuple[Event, ...]
    unknown: bool


@dataclass(frozen=True)
class Reserve:
    who: int
    kind: str
    tokens: TokenSpec
    ttl: int | None
    keyed: bool


@dataclass(frozen=True)
class Commit:
    which: int
    tokens: int | str | None
    keyed: bool
    closed_too: bool  # may pick a reservation already closed; otherwise an open one if any


@dataclass(frozen=True)
class Release:
    which: int
    keyed: bool
    closed_too: bool


@dataclass(frozen=True)
class Replay:
    which: int


@dataclass(frozen=True)
class ReuseKey:
    which: int


@dataclass(frozen=True)
class ReplayBatch:
    which: int


@dataclass(frozen=True)
class TopUpThenReplay:
    which: int


@dataclass(frozen=True)
class Purchase:
    inference: int
    training: int
    expires_in: int | None
    keyed: bool


@dataclass(frozen=True)
class PurchaseExpiry:
    which: int
    expires_in: int | None


@dataclass(frozen=True)
class CreateUser:
    max_tokens: TokenSpec | None
    max_train_tokens: TokenSpec | None
    keyed: bool


@dataclass(frozen=True)
class Deactivate:
    who: int
    keyed: bool
    any_user: bool  # may pick a deactivated user; otherwise an active one if any


@dataclass(frozen=True)
class Reactivate:
    who: int
    max_tokens: TokenSpec | None
    max_train_tokens: TokenSpec | None
    keyed: bool
    any_user: bool  # may pick an active user; otherwise a deactivated one if any


@dataclass(frozen=True)
class ChangeAllowances:
    rows: tuple[Row, ...]
    dry_run: bool
    keyed: bool
    repeat: bool  # may name a user twice (refused whole); otherwise each row another user


@dataclass(frozen=True)
class ChangeOneUser:
    who: int
    max_tokens: TokenSpec | None
    max_train_tokens: TokenSpec | None
    version: str | None
    keyed: bool


@dataclass(frozen=True)
class Tick:
    seconds: int


@dataclass(frozen=True)
class Wait:
    days: int
    hours: int


@dataclass(frozen=True)
class ToMonthEnd:
    offset: int


@dataclass(frozen=True)
class Sweep:
    pass


@dataclass(frozen=True)
class ChangePolicy:
    overallocation: bool | None
    min_inference: int | None
    min_training: int | None
    period: str | None
    keyed: bool


Operation = (
    Usage
    | UsageBatch
    | Reserve
    | Commit
    | Release
    | Replay
    | ReuseKey
    | ReplayBatch
    | TopUpThenReplay
    | Purchase
    | PurchaseExpiry
    | CreateUser
    | Deactivate
    | Reactivate
    | ChangeAllowances
    | ChangeOneUser
    | Tick
    | Wait
    | ToMonthEnd
    | Sweep
    | ChangePolicy
)
MAYBE_ALLOWANCE = st.none() | ALLOWANCE
BATCH_EVENT = st.tuples(WHO, KIND, TOKENS, st.sampled_from(["new", "new", "new", "same", "other"]))
ALLOWANCE_ROW = st.tuples(WHO, MAYBE_ALLOWANCE, MAYBE_ALLOWANCE, VERSION)
WEIGHTED: list[tuple[int, type[Operation], st.SearchStrategy[Operation]]] = [
    # Metering, about 40 % of the steps.
    (4, Usage, st.builds(Usage, who=WHO, kind=KIND, tokens=TOKENS, by_email=st.booleans())),
    (
        4,
        Reserve,
        st.builds(
            Reserve,
            who=WHO,
            kind=KIND,
            tokens=RESERVE_TOKENS,
            ttl=st.sampled_from([None, 3_600, 120, 30, 1]),
            keyed=st.booleans(),
        ),
    ),
    (
        2,
        UsageBatch,
        st.builds(
            UsageBatch,
            events=st.lists(BATCH_EVENT, min_size=1, max_size=6).map(tuple),
            unknown=st.booleans(),
        ),
    ),
    (
        3,
        Commit,
        st.builds(
            Commit,
            which=st.integers(0, 19),
            tokens=st.none()
            | st.sampled_from(["half", "held", "held+1", "all", "all+1", "none"])
            | st.integers(0, 300),
            keyed=st.booleans(),
            closed_too=SOMETIMES,
        ),
    ),
    (
        3,
        Release,
        st.builds(Release, which=st.integers(0, 19), keyed=st.booleans(), closed_too=SOMETIMES),
    ),
    # Replays of idempotency keys.
    (2, Replay, st.builds(Replay, which=st.integers(0, 49))),
    (1, ReuseKey, st.builds(ReuseKey, which=st.integers(0, 49))),
    (1, ReplayBatch, st.builds(ReplayBatch, which=st.integers(0, 9))),
    (1, TopUpThenReplay, st.builds(TopUpThenReplay, which=st.integers(0, 9))),
    # Administration.
    (
        2,
        Purchase,
        st.builds(
            Purchase,
            inference=st.sampled_from([5_000, 0, 1]) | st.integers(0, 8_000),
            training=st.sampled_from([2_000, 0, 1]) | st.integers(0, 4_000),
            expires_in=st.sampled_from([None, None, 60, 3_600, 86_400 * 3, 86_400 * 40]),
            keyed=st.booleans(),
        ),
    ),
    (
        1,
        PurchaseExpiry,
        st.builds(
            PurchaseExpiry,
            which=st.integers(0, 9),
            expires_in=st.sampled_from([None, 0, 30, 7_200, 86_400 * 35]),
        ),
    ),
    (
        2,
        CreateUser,
        st.builds(
            CreateUser,
            max_tokens=st.just(3_000) | MAYBE_ALLOWANCE,
            max_train_tokens=st.just(1_000) | MAYBE_ALLOWANCE,
            keyed=st.booleans(),
        ),
    ),
    (
        1,
        Deactivate,
        st.builds(Deactivate, who=WHO, keyed=st.booleans(), any_user=SOMETIMES),
    ),
    (
        1,
        Reactivate,
        st.builds(
            Reactivate,
            who=WHO,
            max_tokens=MAYBE_ALLOWANCE,
            max_train_tokens=MAYBE_ALLOWANCE,
            keyed=st.booleans(),
            any_user=SOMETIMES,
        ),
    ),
    (
        3,
        ChangeAllowances,
        st.builds(
            ChangeAllowances,
            rows=st.lists(ALLOWANCE_ROW, min_size=1, max_size=4).map(tuple),
            dry_run=st.sampled_from([False, False, False, True]),
            keyed=st.booleans(),
            repeat=SOMETIMES,
        ),
    ),
    (
        1,
        ChangeOneUser,
        st.builds(
            ChangeOneUser,
            who=WHO,
            max_tokens=MAYBE_ALLOWANCE,
            max_train_tokens=MAYBE_ALLOWANCE,
            version=VERSION,
            keyed=st.booleans(),
        ),
    ),
    # Time.
    (1, Tick, st.builds(Tick, seconds=st.integers(1, 400))),
    (1, Wait, st.builds(Wait, days=st.integers(0, 40), hours=st.integers(1, 60))),
    (1, ToMonthEnd, st.builds(ToMonthEnd, offset=st.sampled_from([-120, -1, 0, 1, 90]))),
    (1, Sweep, st.just(Sweep())),
    (
        1,
        ChangePolicy,
        st.builds(
            ChangePolicy,
            overallocation=st.none() | st.booleans(),
            min_inference=st.none() | st.sampled_from([0, 100, 1_000, 2_500]),
            min_training=st.none() | st.sampled_from([0, 50, 500]),
            period=st.sampled_from([None, None, None, "monthly", "none"]),
            keyed=st.booleans(),
        ),
    ),
]
NEEDS_USERS = (Usage, UsageBatch, Reserve, Deactivate, Reactivate, ChangeAllowances, ChangeOneUser)
STRATEGIES = {kind.__name__: strategy for _, kind, strategy in WEIGHTED}
_KINDS: dict[frozenset[type[Operation]], st.SearchStrategy[str]] = {}


def operation_kinds(possible: frozenset[type[Operation]]) -> st.SearchStrategy[str]:
    """The names of the operations possible now, each as often as its weight. (A sampled_from
    of repeats: Hypothesis picks among many one_of branches far from evenly.)"""
    if possible not in _KINDS:
        # In rounds (one of each, then one of each weighing two or more, ...): Hypothesis
        # favours the first choice, which should be one operation, not all copies of it.
        rounds = max(weight for weight, _, _ in WEIGHTED)
        _KINDS[possible] = st.sampled_from(
            [
                kind.__name__
                for round_ in range(rounds)
                for weight, kind, _ in WEIGHTED
                if kind in possible and weight > round_
            ]
        )
    return _KINDS[possible]


class Target(ABC):
    """Where the machine keeps its data: a fresh, migrated database for every example."""

    @abstractmethod
    async def open(self) -> tuple[Database, str]: ...

    async def close(self, db: Database, url: str) -> None:
        await db.dispose()


class SqliteTarget(Target):
    def __init__(self, template: Path, directory: Path) -> None:
        self.template = template
        self.directory = directory
        self.numbers = itertools.count()

    async def open(self) -> tuple[Database, str]:
        path = self.directory / f"model-{next(self.numbers)}.db"
        shutil.copy(self.template, path)
        url = f"sqlite:///{path}"
        return Database(url, pool_size=1), url


class PostgresTarget(Target):
    """One database for the test (from conftest), emptied before every example."""

    def __init__(self, url: str) -> None:
        self.url = url

    async def open(self) -> tuple[Database, str]:
        db = Database(self.url, pool_size=2)
        await empty_postgres(db)
        return db, self.url


def _local_month_start(moment: datetime, zone: ZoneInfo, months_ahead: int = 0) -> datetime:
    local = moment.astimezone(zone)
    month = local.month - 1 + months_ahead
    return datetime(local.year + month // 12, month % 12 + 1, 1, tzinfo=zone).astimezone(UTC)


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _instant(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value.replace("Z", "+00:00"))


class LedgerMachine(RuleBasedStateMachine):
    """The service against the model; see the module's docstring."""

    target: ClassVar[Target | None] = None

    def __init__(self) -> None:
        super().__init__()
        target = type(self).target
        assert target is not None, "run through test_the_ledger_follows_the_model"
        self.target_ = target
        self.runner = asyncio.Runner()
        self.clock = FakeClock(STARTS[0])
        try:
            self.db, self.url = self.run(target.open())
        except BaseException:
            self.runner.close()
            raise
        app = create_app(
            Settings(database_url=self.url), clock=self.clock, database=self.db, run_sweeper=False
        )
        self.http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://tokenadmin.test"
        )
        self.org_id: str | None = None
        self.operator = ""
        self.admin = ""
        self.meter = ""
        self.zone = ZoneInfo("UTC")
        self.period = "monthly"
        self.overallocation = False
        self.minimum = zeros()
        self.users: list[MUser] = []
        self.reservations: list[MReservation] = []
        self.purchases: list[MPurchase] = []
        self.remembered: dict[tuple[str, str], Remembered] = {}
        self.batches: list[tuple[list[dict[str, Any]], Any]] = []
        self.refused_debits: list[tuple[str, str]] = []  # keys of /v1/usage answered 402
        self.entry_ids: set[int] = set()
        self.emails = itertools.count(1)
        # Set by a step that may leave allocated or usage above the capacity: a purchase
        # expired.
        self.excess_explained = False
        self.excess: dict[tuple[str, str], int | None] = {}
        self.checks = 0
        self.policy_version = 1

    # --- plumbing -------------------------------------------------------------------------

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.runner.run(coroutine)

    def teardown(self) -> None:
        try:
            self.run(self.http.aclose())
            self.run(self.target_.close(self.db, self.url))
        finally:
            self.runner.close()

    def send(self, sent: Sent) -> Reply:
        headers = {"Authorization": f"Bearer {sent.secret}"}
        if sent.key is not None:
            headers["Idempotency-Key"] = sent.key
        response = self.run(
            self.http.request(sent.method, sent.path, json=sent.body, headers=headers)
        )
        assert response.status_code < 500, (sent, response.status_code, response.text)
        replayed = response.headers.get("Idempotent-Replayed") == "true"
        return Reply(response.status_code, response.json(), replayed)

    def get(self, path: str, **params: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.admin}"}
        response = self.run(self.http.get(path, params=params, headers=headers))
        assert response.status_code == 200, (path, response.status_code, response.text)
        return response.json()

    @property
    def now(self) -> datetime:
        return self.clock.now()

    def scope_of(self, secret: str) -> str:
        # Idempotency keys are scoped to the caller's organization (operators: the platform).
        return "platform" if secret == self.operator else "org"

    def pick(self, who: int) -> MUser:
        return self.users[who % len(self.users)]

    def check(self, reply: Reply, outcome: Outcome, what: str) -> None:
        """Assert the answer is the one the model expects."""
        context = f"{what}: the model expects {outcome}, the service answered {reply}"
        assert reply.status == outcome.status, context
        OUTCOMES[(what, outcome.code or "ok")] += 1
        if outcome.code is not None:
            error = reply.body["error"]
            assert error["code"] == outcome.code, context
            for name, value in outcome.fields.items():
                assert error["details"].get(name) == value, f"{context} (details.{name})"
        else:
            for name, value in outcome.fields.items():
                assert reply.body.get(name) == value, f"{context} ({name})"

    def remember(self, sent: Sent, other: Sent, reply: Reply) -> None:
        """Keep an answer given to a key: replays must get it back, whatever happened since."""
        if sent.key is None or reply.replayed or reply.status in (401, 403, 404):
            return
        if reply.status == 422 and reply.body["error"]["code"] == "idempotency_key_reused":
            return
        self.remembered[(self.scope_of(sent.secret), sent.key)] = Remembered(
            sent, other, reply.status, reply.body, self.now
        )

    def note_entry(self, body: Any) -> None:
        """Every accepted metering answer names a journal entry of its own."""
        entry = body.get("journal_entry_id")
        assert isinstance(entry, int), body
        assert entry not in self.entry_ids, f"journal entry {entry} named by two answers"
        self.entry_ids.add(entry)

    # --- the model's arithmetic --------------------------------------------------------------

    def allowance_of(self, user: MUser, kind: str) -> int:
        # A deactivated user keeps what they used this period until it ends (SPEC rule 6).
        return user.allowance[kind] if user.active else user.used[kind]

    def reserved_of(self, user: MUser, kind: str) -> int:
        return sum(
            r.tokens
            for r in self.reservations
            if r.user is user and r.kind == kind and r.status == "open"
        )

    def capacity(self, kind: str) -> int:
        return sum(p.amounts[kind] for p in self.purchases if not p.expired)

    def allocated(self, kind: str) -> int:
        return sum(self.allowance_of(u, kind) for u in self.users)

    def period_used(self, kind: str) -> int:
        return sum(u.used[kind] for u in self.users)

    def period_reserved(self, kind: str) -> int:
        return sum(self.reserved_of(u, kind) for u in self.users)

    def remaining(self, user: MUser, kind: str) -> int:
        return self.allowance_of(user, kind) - user.used[kind] - self.reserved_of(user, kind)

    def org_room(self, kind: str) -> int | None:
        """What the organization has left when its capacity binds (SPEC rule 3), else None."""
        if self.allocated(kind) <= self.capacity(kind):
            return None
        return self.capacity(kind) - self.period_used(kind) - self.period_reserved(kind)

    def available(self, user: MUser, kind: str) -> int:
        remaining = self.remaining(user, kind)
        room = self.org_room(kind)
        return remaining if room is None else max(0, min(remaining, room))

    def balances(self, user: MUser, kind: str) -> dict[str, int]:
        return {
            "allowance": self.allowance_of(user, kind),
            "used": user.used[kind],
            "reserved": self.reserved_of(user, kind),
            "remaining": self.available(user, kind),
        }

    def period_start(self, moment: datetime) -> datetime | None:
        return None if self.period == "none" else _local_month_start(moment, self.zone)

    def advance(self, moment: datetime) -> None:
        """Move the clock; expiries and a new period take effect at once in the model."""
        assert moment >= self.now
        old_period = self.period_start(self.now)
        self.clock.set(moment)
        for purchase in self.purchases:
            due = purchase.expires_at is not None and purchase.expires_at <= moment
            if due and not purchase.expired:
                purchase.expired = True
                self.excess_explained = True
        if self.period_start(moment) != old_period:
            for user in self.users:
                user.used = zeros()

    def resolve_tokens(self, spec: TokenSpec, user: MUser, kind: str) -> int:
        if isinstance(spec, int):
            return spec
        if spec in ("half", "tenth"):
            return max(1, self.available(user, kind) // (2 if spec == "half" else 10))
        base = self.available(user, kind) if spec.startswith("available") else None
        if base is None:
            base = self.remaining(user, kind)
        return max(1, base + (1 if spec.endswith("+1") else 0))

    def resolve_allowance(self, spec: TokenSpec, user: MUser | None, kind: str) -> int:
        if isinstance(spec, int):
            return spec
        current = 0 if user is None else self.allowance_of(user, kind)
        committed = 0 if user is None else user.used[kind] + self.reserved_of(user, kind)
        value = {
            "same": current,
            "minimum": self.minimum[kind],
            "minimum-1": self.minimum[kind] - 1,
            "committed": committed,
            "committed-1": committed - 1,
            "balance": current + max(0, self.capacity(kind) - self.allocated(kind)),
            "balance+1": current + max(0, self.capacity(kind) - self.allocated(kind)) + 1,
        }[spec]
        return max(0, value)

    def expire_overdue(self, user: MUser | None = None) -> int:
        count = 0
        for reservation in self.reservations:
            mine = user is None or reservation.user is user
            if mine and reservation.status == "open" and reservation.expires_at <= self.now:
                reservation.status = "expired"
                count += 1
        return count

    # --- metering, as the model sees it --------------------------------------------------------

    def model_debit(
        self, user: MUser, kind: str, tokens: int, action: str, ttl: int | None = None
    ) -> Outcome:
        if not user.active:
            return Outcome(409, "user_deactivated")
        left = self.available(user, kind)
        if tokens > left and self.reserved_of(user, kind):
            # A debit that does not fit first releases the user's reservations whose time ran out.
            self.expire_overdue(user)
            left = self.available(user, kind)
        if tokens > left:
            room = self.org_room(kind)
            limited_by = (
                "organization" if room is not None and room < self.remaining(user, kind) else "user"
            )
            details = {"requested": tokens, "remaining": left, "kind": kind}
            return Outcome(402, "insufficient_tokens", {**details, "limited_by": limited_by})
        base = {"user_id": user.id, "email": user.email, "kind": kind, "tokens": tokens}
        if action == "usage":
            user.used[kind] += tokens
            return Outcome(200, fields={"accepted": True, **base, **self.balances(user, kind)})
        expires = self.now + timedelta(seconds=ttl or DEFAULT_TTL)
        reservation = MReservation("", user, kind, tokens, expires)
        self.reservations.append(reservation)
        fields = {"status": "open", "committed": None, **base, **self.balances(user, kind)}
        return Outcome(201, fields=fields, reservation=reservation)

    def model_close(self, reservation: MReservation, action: str, tokens: int | None) -> Outcome:
        user, kind = reservation.user, reservation.kind
        if reservation.status == "expired" and action == "commit":
            return Outcome(409, "reservation_expired")
        if reservation.status != "open":
            return Outcome(409, "reservation_closed", {"status": reservation.status})
        if action == "commit" and reservation.expires_at <= self.now:
            reservation.status = "expired"
            return Outcome(409, "reservation_expired")
        base = {
            "id": reservation.id,
            "user_id": user.id,
            "kind": kind,
            "tokens": reservation.tokens,
        }
        if action == "release":
            reservation.status = "released"
            fields = {**base, "status": "released", **self.balances(user, kind)}
            return Outcome(200, fields=fields)
        actual = reservation.tokens if tokens is None else tokens
        extra = actual - reservation.tokens
        if extra > 0 and extra > self.available(user, kind):
            left = reservation.tokens + self.available(user, kind)
            details = {"requested": actual, "remaining": left, "reserved": reservation.tokens}
            return Outcome(402, "insufficient_tokens", details)
        reservation.status = "committed"
        user.used[kind] += actual
        fields = {**base, "status": "committed", "committed": actual, **self.balances(user, kind)}
        return Outcome(200, fields=fields)

    # --- administration, as the model sees it -----------------------------------------------------

    def model_plan(
        self,
        rows: list[tuple[MUser | None, dict[str, int], int | None]],
        *,
        new: bool = False,
    ) -> tuple[list[tuple[int, str]], list[tuple[int, MUser | None, str, int, int]]]:
        """SPEC rules 1, 4 and 5 and the version check for every row, as one atomic change:
        (refused (row, code), changes (row, user, kind, before, after)). Every reason of a
        row is listed: a kind refused on its own still leaves the row's other kind to the
        balance check."""
        refused: list[tuple[int, str]] = []
        changes: list[tuple[int, MUser | None, str, int, int]] = []
        for index, (user, wanted, expected) in enumerate(rows):
            row_refused: list[tuple[str, str | None]] = []  # (code, kind or None: the row)
            if not new and user is not None and not user.active:
                if any(self.allowance_of(user, k) != v for k, v in wanted.items()):
                    row_refused.append(("user_deactivated", None))
            elif not new and user is not None and self.stale(user, wanted, expected):
                row_refused.append(("version_conflict", None))
            else:
                for kind, after in wanted.items():
                    committed = 0 if user is None or new else user.used[kind]
                    committed += 0 if user is None or new else self.reserved_of(user, kind)
                    if after < self.minimum[kind]:
                        row_refused.append(("below_minimum", kind))
                    elif after < committed:
                        row_refused.append(("below_used", kind))
            refused += [(index, code) for code, _ in row_refused]
            if any(kind is None for _, kind in row_refused):
                continue  # refused as a whole; a kind refused on its own leaves the others
            for kind, after in wanted.items():
                before = 0 if new or user is None else self.allowance_of(user, kind)
                if kind in {k for _, k in row_refused}:
                    continue
                if after != before or new:
                    changes.append((index, user, kind, before, after))
        for kind in KINDS:
            delta = sum(after - before for _, _, k, before, after in changes if k == kind)
            over = self.allocated(kind) + delta - self.capacity(kind)
            if self.overallocation or over <= 0:
                continue
            # Only the rows that cause the shortfall: the fewest largest raises whose removal
            # brings the kind back within the balance (of equal raises, the later row).
            raises = [(i, a - b) for i, _, k, b, a in changes if k == kind and a > b]
            for index, raised in sorted(raises, key=lambda r: (-r[1], -r[0])):
                if over <= 0:
                    break
                refused.append((index, "exceeds_balance"))
                over -= raised
        refused.sort(key=lambda r: r[0])
        return refused, changes

    def stale(self, user: MUser, wanted: dict[str, int], expected: int | None) -> bool:
        """The version check: a change sent with an older version merges unless a field it
        changes, or the user's status, was changed since (or the journal can't tell)."""
        if expected is None or expected == user.version:
            return False
        mine = {ALLOWANCE_FIELD[k] for k, v in wanted.items() if v != self.allowance_of(user, k)}
        if not mine:
            return False
        if expected != user.version - 1 or user.last_change is None:
            return True
        return bool(mine & user.last_change) or "status" in user.last_change

    def balance_after(
        self, changes: list[tuple[int, MUser | None, str, int, int]]
    ) -> dict[str, dict[str, int]]:
        result = {}
        for kind in KINDS:
            allocated = self.allocated(kind) + sum(
                after - before for _, _, k, before, after in changes if k == kind
            )
            capacity = self.capacity(kind)
            result[kind] = {
                "capacity": capacity,
                "allocated": allocated,
                "balance": capacity - allocated,
            }
        return result

    def user_fields(self, user: MUser) -> dict[str, Any]:
        """What GET /v1/users/{id} (and every answer about a user) says of them."""
        return {
            "id": user.id,
            "email": user.email,
            "status": "active" if user.active else "deactivated",
            "max_tokens": self.allowance_of(user, "inference"),
            "max_train_tokens": self.allowance_of(user, "training"),
            "version": user.version,
            **{
                kind: {
                    "used": user.used[kind],
                    "reserved": self.reserved_of(user, kind),
                    "remaining": self.remaining(user, kind),
                }
                for kind in KINDS
            },
        }

    # --- the organization -----------------------------------------------------------------------

    @initialize(
        start=st.sampled_from(STARTS),
        zone=st.sampled_from(ZONES),
        period=st.sampled_from(["monthly", "monthly", "monthly", "none"]),
        overallocation=st.sampled_from([False, False, True]),
        min_inference=st.sampled_from([100, 0, 1_000]),
        min_training=st.sampled_from([0, 50]),
        inference=st.sampled_from([20_000, 5_000, 0]) | st.integers(0, 30_000),
        training=st.sampled_from([5_000, 0]) | st.integers(0, 10_000),
        users=st.lists(
            st.tuples(st.just(3_000) | ALLOWANCE, st.just(1_000) | MAYBE_ALLOWANCE),
            min_size=1,
            max_size=3,
        ),
    )
    def open_organization(
        self,
        start: datetime,
        zone: str,
        period: str,
        overallocation: bool,
        min_inference: int,
        min_training: int,
        inference: int,
        training: int,
        users: list[tuple[TokenSpec, TokenSpec | None]],
    ) -> None:
        STATS["sequences"] += 1
        self.clock.set(start)
        self.zone = ZoneInfo(zone)
        self.period = period
        self.overallocation = overallocation
        self.minimum = {"inference": min_inference, "training": min_training}
        _, self.operator = self.run(
            self.db.write(
                lambda s: api_key_service.create(
                    s,
                    Act("test", start),
                    org_id=None,
                    name="ops",
                    scopes=["admin", "usage", "read"],
                )
            )
        )
        policy = {
            "name": "Model Inc",
            "time_zone": zone,
            "period": period,
            "overallocation": overallocation,
            "min_inference": min_inference,
            "min_training": min_training,
        }
        org = self.send(Sent("POST", "/v1/organizations", self.operator, policy))
        assert org.status == 201, org
        self.org_id = org.body["id"]
        keys = {}
        for scope in ("admin", "usage"):
            body = {"name": scope, "scopes": [scope]}
            created = self.send(
                Sent("POST", f"/v1/organizations/{self.org_id}/api-keys", self.operator, body)
            )
            assert created.status == 201, created
            keys[scope] = created.body["key"]
        self.admin, self.meter = keys["admin"], keys["usage"]
        if inference or training:
            self.purchase(inference, training, None, False)
        for max_tokens, max_train_tokens in users:
            self.create_user(max_tokens, max_train_tokens, False)

    # --- purchases ----------------------------------------------------------------------------

    def purchase(self, inference: int, training: int, expires_in: int | None, keyed: bool) -> None:
        if inference == 0 and training == 0:
            inference = 1_000
        expires = None if expires_in is None else self.now + timedelta(seconds=expires_in)
        body: dict[str, Any] = {"inference_amount": inference, "training_amount": training}
        if expires is not None:
            body["expires_at"] = _iso(expires)
        path = f"/v1/organizations/{self.org_id}/purchases"
        key = uuid.uuid4().hex if keyed else None
        sent = Sent("POST", path, self.operator, body, key)
        reply = self.send(sent)
        assert reply.status == 201, reply
        assert (reply.body["inference_amount"], reply.body["training_amount"]) == (
            inference,
            training,
        )
        assert _instant(reply.body["expires_at"]) == expires, reply
        self.purchases.append(
            MPurchase(reply.body["id"], {"inference": inference, "training": training}, expires)
        )
        self.remember(
            sent, Sent("POST", path, self.operator, {**body, "note": "other"}, key), reply
        )

    def change_policy(
        self,
        overallocation: bool | None,
        min_inference: int | None,
        min_training: int | None,
        period: str | None,
        keyed: bool,
    ) -> None:
        """Overallocation on or off, the minimums, and the period: a minimum is not raised
        above what an active user has (rule 4); a change of period begins a new one."""
        body: dict[str, Any] = {}
        if overallocation is not None:
            body["overallocation"] = overallocation
        if period is not None:
            body["period"] = period
        minimums = {"inference": min_inference, "training": min_training}
        for kind, value in minimums.items():
            if value is not None:
                body[f"min_{kind}"] = value
        path = f"/v1/organizations/{self.org_id}"
        key = uuid.uuid4().hex if keyed else None
        sent = Sent("PATCH", path, self.admin, body, key)
        reply = self.send(sent)
        self.remember(sent, Sent("PATCH", path, self.admin, {**body, "name": "Other"}, key), reply)
        for kind, value in minimums.items():
            below = [
                u
                for u in self.users
                if u.active and value is not None and u.allowance[kind] < value
            ]
            if value is not None and value > self.minimum[kind] and below:
                details = {"kind": kind, "minimum": value, "users_below": len(below)}
                self.check(reply, Outcome(422, "below_minimum", details), "a minimum raised")
                return
        if overallocation is False and self.overallocation:
            # Rule 1: overallocation goes off only where allocated fits the capacity.
            for kind in KINDS:
                shortfall = self.allocated(kind) - self.capacity(kind)
                if shortfall > 0:
                    details = {
                        "kind": kind,
                        "capacity": self.capacity(kind),
                        "allocated": self.allocated(kind),
                        "shortfall": shortfall,
                    }
                    self.check(
                        reply, Outcome(422, "exceeds_balance", details), "overallocation off"
                    )
                    return
        changed = False
        if overallocation is not None and overallocation != self.overallocation:
            self.overallocation = overallocation
            changed = True
        for kind, value in minimums.items():
            if value is not None and value != self.minimum[kind]:
                self.minimum[kind] = value
                changed = True
        if period is not None and period != self.period:
            self.period = period
            changed = True
            for user in self.users:  # a new period: usage starts again at 0
                user.used = zeros()
        self.policy_version += changed
        fields = {
            "period": self.period,
            "overallocation": self.overallocation,
            "min_inference": self.minimum["inference"],
            "min_training": self.minimum["training"],
            "version": self.policy_version,
        }
        self.check(reply, Outcome(200, fields=fields), "a policy change")

    def change_purchase_expiry(self, which: int, expires_in: int | None) -> None:
        purchase = self.purchases[which % len(self.purchases)]
        expires = None if expires_in is None else self.now + timedelta(seconds=expires_in)
        path = f"/v1/organizations/{self.org_id}/purchases/{purchase.id}"
        reply = self.send(
            Sent(
                "PATCH",
                path,
                self.operator,
                {"expires_at": None if expires is None else _iso(expires)},
            )
        )
        if purchase.expired:
            self.check(reply, Outcome(422, "purchase_expired"), "changing an expired purchase")
            return
        purchase.expires_at = expires
        if expires is not None and expires <= self.now:
            purchase.expired = True
            self.excess_explained = True
        self.check(reply, Outcome(200, fields={"expired": purchase.expired}), "a new expiry")

    # --- users --------------------------------------------------------------------------------

    def create_user(
        self, max_tokens: TokenSpec | None, max_train_tokens: TokenSpec | None, keyed: bool
    ) -> None:
        email = f"user{next(self.emails)}@model.example"
        body: dict[str, Any] = {"email": email, "name": email.split("@")[0].title()}
        wanted = dict(self.minimum)
        for kind, spec in (("inference", max_tokens), ("training", max_train_tokens)):
            if spec is not None:
                wanted[kind] = self.resolve_allowance(spec, None, kind)
                body[ALLOWANCE_FIELD[kind]] = wanted[kind]
        refused, _changes = self.model_plan([(None, wanted, None)], new=True)
        path = f"/v1/organizations/{self.org_id}/users"
        key = uuid.uuid4().hex if keyed else None
        sent = Sent("POST", path, self.admin, body, key)
        reply = self.send(sent)
        if refused:
            # One user's change answers its first reason's own code, every reason listed.
            self.check(reply, Outcome(422, refused[0][1]), "a new user refused with")
            OUTCOMES[("a user the rules refuse", "the rule's code")] += 1
            codes = [(r["index"], r["code"]) for r in reply.body["error"]["details"]["refused"]]
            assert codes == refused, (codes, refused)
            OUTCOMES[("a new user refused", "+".join(c for _, c in codes))] += 1
        else:
            assert reply.status == 201, (wanted, reply)
            user = MUser(reply.body["id"], email, wanted)
            self.users.append(user)
            expected = self.user_fields(user)
            assert {k: reply.body[k] for k in expected} == expected, (expected, reply.body)
        other = Sent("POST", path, self.admin, {**body, "name": "Someone Else"}, key)
        self.remember(sent, other, reply)

    def pick_by_status(self, who: int, active: bool, any_user: bool) -> MUser:
        those = [u for u in self.users if u.active == active]
        candidates = self.users if any_user or not those else those
        return candidates[who % len(candidates)]

    def deactivate(self, who: int, keyed: bool, any_user: bool) -> None:
        user = self.pick_by_status(who, True, any_user)
        path = f"/v1/users/{user.id}/deactivate"
        key = uuid.uuid4().hex if keyed else None
        sent = Sent("POST", path, self.admin, None, key)
        reply = self.send(sent)
        if not user.active:
            self.check(reply, Outcome(409, "already_deactivated"), "deactivating twice")
        else:
            for reservation in self.reservations:
                if reservation.user is user and reservation.status == "open":
                    reservation.status = "released"
            user.active = False
            user.version += 1
            user.last_change = frozenset({"status"})
            self.check(reply, Outcome(200, fields=self.user_fields(user)), "deactivating")
        other = Sent("POST", f"/v1/users/{user.id}/reactivate", self.admin, None, key)
        self.remember(sent, other, reply)

    def reactivate(
        self,
        who: int,
        max_tokens: TokenSpec | None,
        max_train_tokens: TokenSpec | None,
        keyed: bool,
        any_user: bool,
    ) -> None:
        user = self.pick_by_status(who, False, any_user)
        body: dict[str, Any] = {}
        targets: dict[str, int] = {}
        for kind, spec in (("inference", max_tokens), ("training", max_train_tokens)):
            if spec is not None:
                targets[kind] = self.resolve_allowance(spec, user, kind)
                body[ALLOWANCE_FIELD[kind]] = targets[kind]
            else:
                targets[kind] = max(self.minimum[kind], user.used[kind])
        path = f"/v1/users/{user.id}/reactivate"
        key = uuid.uuid4().hex if keyed else None
        sent = Sent("POST", path, self.admin, body or None, key)
        if user.active:
            reply = self.send(sent)
            self.check(reply, Outcome(409, "already_active"), "reactivating an active user")
        else:
            # The rules see the user as they would be: active, with what they kept.
            user.allowance = {kind: self.allowance_of(user, kind) for kind in KINDS}
            user.active = True
            refused, _ = self.model_plan([(user, targets, None)])
            user.active = False
            reply = self.send(sent)
            if refused:
                self.check(reply, Outcome(422, refused[0][1]), "a reactivation the rules refuse")
            else:
                user.active = True
                user.allowance = dict(targets)
                user.version += 1
                user.last_change = None
                self.check(reply, Outcome(200, fields=self.user_fields(user)), "reactivating")
        other = Sent("POST", f"/v1/users/{user.id}/deactivate", self.admin, None, key)
        self.remember(sent, other, reply)

    # --- allowances -------------------------------------------------------------------------

    def change_allowances(
        self,
        rows: Sequence[Row],
        dry_run: bool,
        keyed: bool,
        repeat: bool,
    ) -> None:
        """The atomic batch: all rows are applied or none, and every refused row is named."""
        changes_sent: list[dict[str, Any]] = []
        planned: list[tuple[MUser | None, dict[str, int], int | None]] = []
        seen: dict[str, int] = {}
        duplicates: list[tuple[int, str]] = []
        positions: list[int] = []  # of the rows planned: those that name a user first
        for index, (who, inference, training, version) in enumerate(rows):
            unnamed = [u for u in self.users if u.id not in seen]
            if not repeat and not unnamed:
                break
            user = self.pick(who) if repeat else unnamed[who % len(unnamed)]
            if inference is None and training is None:
                inference = "same"
            row: dict[str, Any] = {"user": user.id if index % 2 == 0 else user.email.upper()}
            wanted: dict[str, int] = {}
            for kind, spec in (("inference", inference), ("training", training)):
                if spec is not None:
                    wanted[kind] = self.resolve_allowance(spec, user, kind)
                    row[ALLOWANCE_FIELD[kind]] = wanted[kind]
            expected = None
            if version is not None:
                expected = user.version if version == "current" else user.version - 1
                row["expected_version"] = expected
            changes_sent.append(row)
            if user.id in seen:
                duplicates.append((index, "duplicate_user"))
                continue
            seen[user.id] = index
            planned.append((user, wanted, expected))
            positions.append(index)
        body = {"changes": changes_sent, "dry_run": dry_run, "reason": "model"}
        path = f"/v1/organizations/{self.org_id}/allowances"
        key = uuid.uuid4().hex if keyed else None
        sent = Sent("POST", path, self.admin, body, key)
        reply = self.send(sent)
        other = Sent("POST", path, self.admin, {**body, "reason": "another"}, key)
        self.remember(sent, other, reply)
        # A user named twice is refused with its row, beside every other row's reasons.
        refused, changes = self.model_plan(planned)
        refused = sorted(
            [(positions[index], code) for index, code in refused] + duplicates,
            key=lambda r: r[0],
        )
        after = self.balance_after(changes)
        listed = [(user.id if user else "", kind, b, a) for _, user, kind, b, a in changes]
        if refused and not dry_run:
            code = (
                "version_conflict"
                if any(c == "version_conflict" for _, c in refused)
                else "allowance_change_refused"
            )
            what = "a user named twice" if duplicates else "refused"
            self.check(reply, Outcome(409 if code == "version_conflict" else 422, code), what)
            details = reply.body["error"]["details"]
            assert [(r["index"], r["code"]) for r in details["refused"]] == refused, (
                details,
                refused,
            )
            assert details["balance_after"] == after, (details["balance_after"], after)
            return
        assert reply.status == 200, (refused, reply)
        assert (reply.body["applied"], reply.body["dry_run"]) == (not dry_run, dry_run)
        assert reply.body["accepted"] == (not refused)
        assert [(r["index"], r["code"]) for r in reply.body["refused"]] == refused
        got = [(c["user_id"], c["kind"], c["before"], c["after"]) for c in reply.body["changes"]]
        assert got == listed, (got, listed)
        assert reply.body["balance_after"] == after, (reply.body["balance_after"], after)
        OUTCOMES[("allowance batch", "previewed" if dry_run else "applied")] += 1
        if dry_run:
            return
        touched: dict[str, set[str]] = {}
        for _, changed, kind, _before, value in changes:
            assert changed is not None
            changed.allowance[kind] = value
            touched.setdefault(changed.id, set()).add(ALLOWANCE_FIELD[kind])
        for user in self.users:
            if user.id in touched:
                user.version += 1
                user.last_change = frozenset(touched[user.id])

    def change_one_user(
        self,
        who: int,
        max_tokens: TokenSpec | None,
        max_train_tokens: TokenSpec | None,
        version: str | None,
        keyed: bool,
    ) -> None:
        """PATCH /v1/users/{id}: one user's two columns in one atomic step."""
        user = self.pick(who)
        if max_tokens is None and max_train_tokens is None:
            max_train_tokens = "same"
        body: dict[str, Any] = {"reason": "model"}
        wanted: dict[str, int] = {}
        for kind, spec in (("inference", max_tokens), ("training", max_train_tokens)):
            if spec is not None:
                wanted[kind] = self.resolve_allowance(spec, user, kind)
                body[ALLOWANCE_FIELD[kind]] = wanted[kind]
        expected = None
        if version is not None:
            expected = user.version if version == "current" else user.version - 1
            body["expected_version"] = expected
        path = f"/v1/users/{user.id}"
        key = uuid.uuid4().hex if keyed else None
        sent = Sent("PATCH", path, self.admin, body, key)
        reply = self.send(sent)
        self.remember(sent, Sent("PATCH", path, self.admin, {**body, "reason": "x"}, key), reply)
        if self.stale(user, wanted, expected):
            self.check(reply, Outcome(409, "version_conflict"), "a stale version")
            return
        refused, changes = self.model_plan([(user, wanted, None)])
        if refused:
            code = refused[0][1]
            status = 409 if code == "user_deactivated" else 422
            self.check(reply, Outcome(status, code), "a change the rules refuse")
            return
        for _, _, kind, _before, value in changes:
            user.allowance[kind] = value
        if changes:
            user.version += 1
            user.last_change = frozenset(ALLOWANCE_FIELD[kind] for _, _, kind, _, _ in changes)
        self.check(reply, Outcome(200, fields=self.user_fields(user)), "one user's change")

    # --- metering -----------------------------------------------------------------------------

    def usage(self, who: int, kind: str, tokens: TokenSpec, by_email: bool) -> None:
        user = self.pick(who)
        amount = self.resolve_tokens(tokens, user, kind)
        body = {"user": user.email if by_email else user.id, "kind": kind, "tokens": amount}
        key = uuid.uuid4().hex
        sent = Sent("POST", "/v1/usage", self.meter, body, key)
        outcome = self.model_debit(user, kind, amount, "usage")
        reply = self.send(sent)
        self.check(reply, outcome, "usage")
        if reply.status == 200:
            self.note_entry(reply.body)
        if reply.status == 402:
            self.refused_debits.append(("org", key))
        other = Sent("POST", "/v1/usage", self.meter, {**body, "tokens": amount + 1}, key)
        self.remember(sent, other, reply)

    def usage_batch(self, events: Sequence[Event], unknown: bool) -> None:
        """Events accepted or refused on their own, with keys repeated inside the batch: the
        same event again gets the first one's answer, another event with its key is refused."""
        sent_events: list[dict[str, Any]] = []
        expected: list[Outcome | int] = []  # an outcome, or the index of the first answer
        firsts: list[int] = []
        for index, (who, kind, spec, mode) in enumerate(events):
            user = self.pick(who)
            if mode != "new" and firsts:
                first = firsts[(who + index) % len(firsts)]
                if mode == "same":
                    sent_events.append(dict(sent_events[first]))
                    expected.append(first)
                else:
                    tokens = sent_events[first]["tokens"] + 1
                    sent_events.append({**sent_events[first], "tokens": tokens})
                    expected.append(Outcome(422, "idempotency_key_reused"))
                continue
            amount = self.resolve_tokens(spec, user, kind)
            key = uuid.uuid4().hex
            event: dict[str, Any] = {
                "user": user.id,
                "kind": kind,
                "tokens": amount,
                "idempotency_key": key,
            }
            firsts.append(len(sent_events))
            sent_events.append(event)
            expected.append(self.model_debit(user, kind, amount, "usage"))
        if unknown:
            event = {"user": "nobody@model.example", "kind": "inference", "tokens": 1}
            sent_events.append({**event, "idempotency_key": uuid.uuid4().hex})
            expected.append(Outcome(404, "user_not_found"))
        reply = self.send(Sent("POST", "/v1/usage/batch", self.meter, {"events": sent_events}))
        assert reply.status == 200, reply
        results = reply.body["results"]
        assert [r["index"] for r in results] == list(range(len(sent_events))), results
        for index, (result, outcome) in enumerate(zip(results, expected, strict=True)):
            if isinstance(outcome, int):
                original = results[outcome]
                assert result["replayed"], (index, result)
                assert (result["status"], result["result"], result["error"]) == (
                    original["status"],
                    original["result"],
                    original["error"],
                ), (index, result, original)
                continue
            assert not result["replayed"], (index, result)
            answer = result["result"] if result["accepted"] else {"error": result["error"]}
            self.check(Reply(result["status"], answer, False), outcome, "batch event")
            if result["accepted"]:
                self.note_entry(answer)
            if outcome.code in ("idempotency_key_reused", "user_not_found"):
                continue
            # The key now answers this event's answer, through /v1/usage as well.
            event = sent_events[index]
            single = {k: event[k] for k in ("user", "kind", "tokens")}
            key = event["idempotency_key"]
            sent = Sent("POST", "/v1/usage", self.meter, single, key)
            other = Sent(
                "POST", "/v1/usage", self.meter, {**single, "tokens": event["tokens"] + 1}, key
            )
            self.remember(sent, other, Reply(result["status"], answer, False))
        assert reply.body["accepted"] == sum(1 for r in results if r["accepted"])
        assert reply.body["refused"] == len(results) - reply.body["accepted"]
        self.batches.append((sent_events, reply.body))

    def replay_batch(self, which: int) -> None:
        """The same batch again: every event gets its first answer, and nothing changes."""
        replayable = [
            (events, first)
            for events, first in self.batches
            if all(
                ("org", e["idempotency_key"]) in self.remembered
                for e, r in zip(events, first["results"], strict=True)
                if r["status"] != 404
            )
        ]
        if not replayable:
            return  # the sweeper forgot their keys (kept 48 hours): new requests now
        events, first = replayable[which % len(replayable)]
        last = self.last_entry()
        reply = self.send(Sent("POST", "/v1/usage/batch", self.meter, {"events": events}))
        assert reply.status == 200, reply
        assert self.last_entry() == last, "a replayed batch wrote to the journal"
        for event, again, before in zip(
            events, reply.body["results"], first["results"], strict=True
        ):
            context = (event, again, before)
            if before["status"] == 404:
                assert (again["status"], again["replayed"]) == (404, False), context
                assert again["error"]["code"] == "user_not_found", context
            elif before["status"] == 422:
                # Another event with a key already used: refused again, not a replay.
                assert (again["status"], again["replayed"]) == (422, False), context
                assert again["error"]["code"] == "idempotency_key_reused", context
            else:
                assert again["replayed"], context
                assert (again["status"], again["result"], again["error"]) == (
                    before["status"],
                    before["result"],
                    before["error"],
                ), context

    def reserve(self, who: int, kind: str, tokens: TokenSpec, ttl: int | None, keyed: bool) -> None:
        user = self.pick(who)
        amount = self.resolve_tokens(tokens, user, kind)
        body: dict[str, Any] = {"user": user.id, "kind": kind, "tokens": amount}
        if ttl is not None:
            body["ttl_seconds"] = ttl
        key = uuid.uuid4().hex if keyed else None
        sent = Sent("POST", "/v1/reservations", self.meter, body, key)
        outcome = self.model_debit(user, kind, amount, "reserve", ttl)
        reply = self.send(sent)
        self.check(reply, outcome, "a reservation")
        if outcome.reservation is not None:
            outcome.reservation.id = reply.body["id"]
            assert _instant(reply.body["expires_at"]) == outcome.reservation.expires_at
            self.note_entry(reply.body)
        other = Sent("POST", "/v1/reservations", self.meter, {**body, "tokens": amount + 1}, key)
        self.remember(sent, other, reply)

    def pick_reservation(self, which: int, closed_too: bool) -> MReservation:
        still_open = [r for r in self.reservations if r.status == "open"]
        candidates = self.reservations if closed_too or not still_open else still_open
        return candidates[which % len(candidates)]

    def commit(self, which: int, tokens: int | str | None, keyed: bool, closed_too: bool) -> None:
        reservation = self.pick_reservation(which, closed_too)
        actual: int | None
        if isinstance(tokens, str):
            room = max(0, self.available(reservation.user, reservation.kind))
            # "all": what is held and all that remains besides; "none": nothing was used.
            actual = {
                "half": reservation.tokens // 2,
                "held": reservation.tokens,
                "held+1": reservation.tokens + 1,
                "all": reservation.tokens + room,
                "all+1": reservation.tokens + room + 1,
                "none": 0,
            }[tokens]
        else:
            actual = tokens
        body = None if actual is None else {"tokens": actual}
        path = f"/v1/reservations/{reservation.id}/commit"
        key = uuid.uuid4().hex if keyed else None
        sent = Sent("POST", path, self.meter, body, key)
        outcome = self.model_close(reservation, "commit", actual)
        reply = self.send(sent)
        self.check(reply, outcome, "a commit")
        if reply.status == 200:
            self.note_entry(reply.body)
        other_body = {"tokens": (actual or 0) + 1}
        self.remember(sent, Sent("POST", path, self.meter, other_body, key), reply)

    def release(self, which: int, keyed: bool, closed_too: bool) -> None:
        reservation = self.pick_reservation(which, closed_too)
        path = f"/v1/reservations/{reservation.id}/release"
        key = uuid.uuid4().hex if keyed else None
        sent = Sent("POST", path, self.meter, None, key)
        outcome = self.model_close(reservation, "release", None)
        reply = self.send(sent)
        self.check(reply, outcome, "a release")
        if reply.status == 200:
            self.note_entry(reply.body)
        other = Sent("POST", f"/v1/reservations/{reservation.id}/commit", self.meter, None, key)
        self.remember(sent, other, reply)

    # --- time -----------------------------------------------------------------------------------

    def tick(self, seconds: int) -> None:
        self.advance(self.now + timedelta(seconds=seconds))

    def wait(self, days: int, hours: int) -> None:
        self.advance(self.now + timedelta(days=days, hours=hours))

    def to_month_end(self, offset: int) -> None:
        """To just before, at or just after the next month's start in the organization's zone."""
        months = 1
        while True:
            moment = _local_month_start(self.now, self.zone, months) + timedelta(seconds=offset)
            if moment > self.now:
                break
            months += 1
        self.advance(moment)

    def run_sweeper(self) -> None:
        """The background upkeep: expired reservations, expiries, periods, old keys."""
        expected = self.expire_overdue()
        report = self.run(sweep(self.db, self.clock, idempotency_ttl=IDEMPOTENCY_TTL))
        assert report.reservations_expired == expected, (report, expected)
        for scope_key, remembered in list(self.remembered.items()):
            if remembered.at + IDEMPOTENCY_TTL < self.now:
                del self.remembered[scope_key]

    # --- idempotent replays ---------------------------------------------------------------------

    def last_entry(self) -> int:
        page = self.get(f"/v1/organizations/{self.org_id}/journal", limit=1)
        return int(page["entries"][0]["id"]) if page["entries"] else 0

    def replay(self, which: int) -> None:
        """The same key and request: the first answer again, and nothing is written."""
        remembered = list(self.remembered.values())[which % len(self.remembered)]
        last = self.last_entry()
        reply = self.send(remembered.sent)
        assert (reply.status, reply.body) == (remembered.status, remembered.body), (
            remembered,
            reply,
        )
        assert reply.replayed, reply
        assert self.last_entry() == last, "a replay wrote to the journal"

    def reuse_key(self, which: int) -> None:
        """The same key with another request is refused, and nothing is written."""
        remembered = list(self.remembered.values())[which % len(self.remembered)]
        last = self.last_entry()
        reply = self.send(remembered.other)
        self.check(reply, Outcome(422, "idempotency_key_reused"), "a key reused")
        assert self.last_entry() == last, "a refused reuse of a key wrote to the journal"

    def top_up_then_replay_a_refused_debit(self, which: int) -> None:
        """A debit refused for lack of tokens stays refused when replayed after a top-up; the
        same request with a new key is accepted."""
        keys = [k for k in self.refused_debits if k in self.remembered]
        remembered = self.remembered[keys[which % len(keys)]]
        body = remembered.sent.body
        user = next(u for u in self.users if body["user"] in (u.id, u.email))
        kind, tokens = body["kind"], body["tokens"]
        # Buy enough for the user to come back (at least the minimums), to raise them to what
        # the debit needs, and to leave no shortfall (so the capacity does not bind).
        needed = max(self.minimum[kind], user.used[kind] + self.reserved_of(user, kind) + tokens)
        extra = {
            k: max(0, self.allocated(k) - self.capacity(k))
            + max(self.minimum[k], user.used[k])
            + (needed if k == kind else 0)
            for k in KINDS
        }
        self.purchase(max(1, extra["inference"]), extra["training"], None, False)
        if not user.active:
            self.reactivate(self.users.index(user), None, None, False, True)
            assert user.active
        if self.available(user, kind) < tokens:
            self.change_one_user(
                self.users.index(user),
                needed if kind == "inference" else None,
                needed if kind == "training" else None,
                None,
                False,
            )
        assert self.available(user, kind) >= tokens, "the top-up should make room"
        reply = self.send(remembered.sent)
        assert (reply.status, reply.body, reply.replayed) == (402, remembered.body, True), reply
        fresh = Sent("POST", "/v1/usage", self.meter, body, uuid.uuid4().hex)
        outcome = self.model_debit(user, kind, tokens, "usage")
        accepted = self.send(fresh)
        self.check(accepted, outcome, "the same debit with a new key, after the top-up")
        assert accepted.status == 200
        self.note_entry(accepted.body)

    # --- one step ---------------------------------------------------------------------------

    @rule(data=st.data())
    def step(self, data: st.DataObject) -> None:
        """Draw one of the operations possible now, and run it."""
        name = data.draw(operation_kinds(self.possible()), label="operation")
        operation = data.draw(STRATEGIES[name], label=name)
        STATS[type(operation).__name__] += 1
        match operation:
            case Usage(who, kind, tokens, by_email):
                self.usage(who, kind, tokens, by_email)
            case UsageBatch(events, unknown):
                self.usage_batch(events, unknown)
            case Reserve(who, kind, tokens, ttl, keyed):
                self.reserve(who, kind, tokens, ttl, keyed)
            case Commit(which, tokens, keyed, closed_too):
                self.commit(which, tokens, keyed, closed_too)
            case Release(which, keyed, closed_too):
                self.release(which, keyed, closed_too)
            case Replay(which):
                self.replay(which)
            case ReuseKey(which):
                self.reuse_key(which)
            case ReplayBatch(which):
                self.replay_batch(which)
            case TopUpThenReplay(which):
                self.top_up_then_replay_a_refused_debit(which)
            case Purchase(inference, training, expires_in, keyed):
                self.purchase(inference, training, expires_in, keyed)
            case PurchaseExpiry(which, expires_in):
                self.change_purchase_expiry(which, expires_in)
            case CreateUser(max_tokens, max_train_tokens, keyed):
                self.create_user(max_tokens, max_train_tokens, keyed)
            case Deactivate(who, keyed, any_user):
                self.deactivate(who, keyed, any_user)
            case Reactivate(who, max_tokens, max_train_tokens, keyed, any_user):
                self.reactivate(who, max_tokens, max_train_tokens, keyed, any_user)
            case ChangeAllowances(rows, dry_run, keyed, repeat):
                self.change_allowances(rows, dry_run, keyed, repeat)
            case ChangeOneUser(who, max_tokens, max_train_tokens, version, keyed):
                self.change_one_user(who, max_tokens, max_train_tokens, version, keyed)
            case Tick(seconds):
                self.tick(seconds)
            case Wait(days, hours):
                self.wait(days, hours)
            case ToMonthEnd(offset):
                self.to_month_end(offset)
            case Sweep():
                self.run_sweeper()
            case ChangePolicy(overallocation, min_inference, min_training, period, keyed):
                self.change_policy(overallocation, min_inference, min_training, period, keyed)

    def possible(self) -> frozenset[type[Operation]]:
        impossible: set[type[Operation]] = set()
        if len(self.users) >= 5:
            impossible.add(CreateUser)
        if not self.users:
            impossible.update(NEEDS_USERS)
        if not self.reservations:
            impossible.update((Commit, Release))
        if not self.purchases:
            impossible.add(PurchaseExpiry)
        if not self.remembered:
            impossible.update((Replay, ReuseKey))
        if not self.batches:
            impossible.add(ReplayBatch)
        if not any(key in self.remembered for key in self.refused_debits):
            impossible.add(TopUpThenReplay)
        return frozenset(kind for _, kind, _ in WEIGHTED) - impossible

    # --- after every step -----------------------------------------------------------------------

    @invariant()
    def the_service_agrees_with_the_model_and_the_rules(self) -> None:
        if self.org_id is None:
            return
        STATS["checks"] += 1
        balance = self.get(f"/v1/organizations/{self.org_id}/balance")
        listed = self.get(f"/v1/organizations/{self.org_id}/users", limit=500)["users"]
        users = {u["id"]: u for u in listed}
        assert set(users) == {u.id for u in self.users}, (users, self.users)
        self.check_rules(balance, users)
        self.check_balances(balance, users)
        report = self.run(self.db.read(verify))
        assert report.clean, "verify found differences:\n" + "\n".join(report.differences)
        self.excess_explained = False

    def check_rules(self, balance: dict[str, Any], users: dict[str, dict[str, Any]]) -> None:
        """SPEC section 3 on what the service reports, whatever the model says."""
        for kind in KINDS:
            org = balance[kind]
            for name in ("capacity", "allocated", "balance", "shortfall", "used", "reserved"):
                assert type(org[name]) is int, (kind, name, org)  # rule 8: integers
            # Rule 1 (and rule 3): without overallocation allocated stays within capacity;
            # only an expiry can push it over, and then it can only come down.
            if not self.overallocation:
                self.within_capacity(kind, "allocated", org["allocated"], org["capacity"])
            self.within_capacity(kind, "used", org["used"] + org["reserved"], org["capacity"])
            assert org["allocated"] == sum(u[ALLOWANCE_FIELD[kind]] for u in users.values()), (
                "allocated is the sum of the allowances"
            )
            assert org["used"] == sum(u[kind]["used"] for u in users.values())
            assert org["reserved"] == sum(u[kind]["reserved"] for u in users.values())
            for user in users.values():
                allowance = user[ALLOWANCE_FIELD[kind]]
                used, reserved = user[kind]["used"], user[kind]["reserved"]
                assert all(type(v) is int for v in (allowance, used, reserved)), user
                # Rule 2 (and 5): 0 <= used + reserved <= allowance.
                assert used >= 0, user
                assert reserved >= 0, user
                assert used + reserved <= allowance, user
                if user["status"] == "active":
                    assert allowance >= self.minimum[kind], ("rule 4", user)  # minimums
                else:
                    assert reserved == 0, ("rule 6", user)
                    assert allowance == used, ("rule 6", user)

    def within_capacity(self, kind: str, what: str, amount: int, capacity: int) -> None:
        excess = self.excess.get((kind, what))
        if amount <= capacity:
            self.excess[(kind, what)] = None
            return
        if excess is None:
            assert self.excess_explained, (
                f"{kind} {what} {amount:,} went over the capacity {capacity:,}"
                " without a purchase expiring"
            )
        else:
            assert amount <= excess, f"{kind} {what} rose to {amount:,} while over capacity"
        self.excess[(kind, what)] = amount

    def check_balances(self, balance: dict[str, Any], users: dict[str, dict[str, Any]]) -> None:
        """Every balance the service reports equals the model's."""
        for kind in KINDS:
            capacity, allocated = self.capacity(kind), self.allocated(kind)
            expected = {
                "capacity": capacity,
                "allocated": allocated,
                "balance": capacity - allocated,
                "shortfall": max(0, allocated - capacity),
                "used": self.period_used(kind),
                "reserved": self.period_reserved(kind),
            }
            assert balance[kind] == expected, (kind, balance[kind], expected)
        start = self.period_start(self.now)
        end = None if start is None else _local_month_start(self.now, self.zone, 1)
        assert (_instant(balance["period_start"]), _instant(balance["period_end"])) == (
            start,
            end,
        ), balance
        expiring = {
            p.id
            for p in self.purchases
            if not p.expired
            and p.expires_at is not None
            and p.expires_at <= self.now + EXPIRY_WARNING
        }
        assert {p["id"] for p in balance["expiring_purchases"]} == expiring, balance
        assert balance["over_allocated"] == any(self.allocated(k) > self.capacity(k) for k in KINDS)
        for user in self.users:
            expected_user = self.user_fields(user)
            got = {k: users[user.id][k] for k in expected_user}
            assert got == expected_user, (got, expected_user)
        if self.users:
            # What the platform asks before it meters, min(user remaining, org remaining):
            # one user a step, in turn (asking for every user every step doubles the time).
            self.checks += 1
            user = self.users[self.checks % len(self.users)]
            asked = self.get(f"/v1/users/{user.id}/balance")
            for kind in KINDS:
                room = self.org_room(kind)
                remaining = self.remaining(user, kind) if user.active else 0
                expected_kind = {
                    "allowance": user.allowance[kind] if user.active else 0,
                    "used": user.used[kind],
                    "reserved": self.reserved_of(user, kind),
                    "remaining": remaining,
                    "organization_remaining": room,
                    "available": remaining if room is None else max(0, min(remaining, room)),
                }
                assert asked[kind] == expected_kind, (user.email, kind, asked[kind], expected_kind)


def _exploring(config: pytest.Config) -> bool:
    return config.getoption("hypothesis_seed", None) is not None or MODEL_SEED is not None


def _settings() -> settings:
    return settings(
        max_examples=MODEL_EXAMPLES,
        stateful_step_count=MODEL_STEPS,
        deadline=None,
        database=None,
        print_blob=True,
        # No explain phase: it runs the failing sequence many more times to point at lines.
        phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
        suppress_health_check=[HealthCheck.too_slow],
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    if request.param == "sqlite":
        yield SqliteTarget(request.getfixturevalue("sqlite_template"), tmp_path)
    else:
        yield PostgresTarget(request.getfixturevalue("postgres_url"))


def test_the_ledger_follows_the_model(target: Target, request: pytest.FixtureRequest) -> None:
    # A class of its own for this run, to carry its seed: the default one (the same sequences
    # every run, whatever the source looks like), TOKENADMIN_MODEL_SEED, or none when pytest
    # is given --hypothesis-seed. It keeps the name LedgerMachine for the printed steps, and
    # a @reproduce_failure put on LedgerMachine.
    machine = cast(type[LedgerMachine], type("LedgerMachine", (LedgerMachine,), {}))
    if request.config.getoption("hypothesis_seed", None) is None:
        machine = seed(int(MODEL_SEED or DEFAULT_SEED))(machine)
    STATS.clear()
    OUTCOMES.clear()
    LedgerMachine.target = target
    try:
        run_state_machine_as_test(machine, settings=_settings())
    finally:
        LedgerMachine.target = None
    print(f"\n{request.node.name}: " + ", ".join(f"{k} {v}" for k, v in sorted(STATS.items())))
    print("answers: " + ", ".join(f"{w} {c} {n}" for (w, c), n in sorted(OUTCOMES.items())))
    if _exploring(request.config) or (MODEL_EXAMPLES, MODEL_STEPS) != (
        DEFAULT_EXAMPLES,
        DEFAULT_STEPS,
    ):
        return
    # The default run: every operation ran, and the main ones were both accepted and refused,
    # or this budget tests less than it says.
    never = sorted(kind.__name__ for _, kind, _ in WEIGHTED if not STATS[kind.__name__])
    assert not never, f"operations never run: {never} (raise their weight or the budget)"
    missing = [answer for answer in MUST_SEE if not OUTCOMES[answer]]
    assert not missing, f"answers never seen: {missing} (raise a weight or the budget)"


# --- what the model found ------------------------------------------------------------------------


async def test_an_allowance_for_a_deactivated_user_is_refused_with_409_as_documented(
    api: Api,
) -> None:
    org = await funded_org(api)
    ana = await api.user(org)
    await api.post(f"/v1/users/{ana['id']}/deactivate", expect=200)
    metered = await api.use(ana["id"], 1)
    error_of(metered, 409, "user_deactivated")

    changed = await api.call("PATCH", f"/v1/users/{ana['id']}", json={"max_tokens": 300_000})

    error_of(changed, 409, "user_deactivated")


async def test_overallocation_is_not_turned_off_while_the_organization_is_over_allocated(
    api: Api,
) -> None:
    org = await funded_org(api, inference=300_000, overallocation=True)
    await api.user(org)
    await api.user(org)  # 400,000 allocated of 300,000
    mark = await last_entry_id(api, org)

    response = await api.call("PATCH", f"/v1/organizations/{org}", json={"overallocation": False})

    details = error_of(response, 422, "exceeds_balance")
    assert details == {
        "kind": "inference",
        "capacity": 300_000,
        "allocated": 400_000,
        "shortfall": 100_000,
    }
    assert "100,000" in response.json()["error"]["message"]
    assert (await api.get(f"/v1/organizations/{org}"))["overallocation"] is True
    assert await last_entry_id(api, org) == mark


async def test_a_time_zone_changed_and_changed_back_keeps_what_was_used_this_month(
    api: Api, clock: FakeClock
) -> None:
    org = await funded_org(api)
    ana = await api.user(org)  # 200,000 a month
    clock.set(utc("2026-03-31 22:30"))  # still March in UTC, April in Berlin
    await api.use(ana["id"], 200_000, expect=200)  # the whole of March
    await api.patch(f"/v1/organizations/{org}", {"time_zone": "Europe/Berlin"}, expect=200)
    await api.use(ana["id"], 1_000, expect=200)  # April in Berlin: a new month, rightly
    await api.patch(f"/v1/organizations/{org}", {"time_zone": "UTC"}, expect=200)

    # March again in UTC, but March's allowance was used: the period of April goes on.
    balance = await api.balance(org)
    assert (balance["period_start"], balance["period_end"]) == (
        "2026-03-31T22:00:00Z",
        "2026-05-01T00:00:00Z",
    )
    assert (await get_user(api, ana["id"]))["inference"]["used"] == 1_000
    details = error_of(await api.use(ana["id"], 200_000), 402, "insufficient_tokens")
    assert details["remaining"] == 199_000
