"""The demo organization: Acme Corp, 25 people, three purchases and two months of usage.

Everything goes through the services, as real use would: the organization, purchases and
users are created at the start of the previous month, then a fake clock walks day by day
to now while the platform records usage in batches through the metering engine
(`usage.service.run`). So the new period starts for real, refusals happen for real (some
people run out near the end of a month), and `tokenadmin verify` is clean afterwards.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.act import Act
from tokenadmin.allowance import service as allowance_service
from tokenadmin.api_key import service as api_key_service
from tokenadmin.auth import service as auth_service
from tokenadmin.catalog import service as catalog
from tokenadmin.clock import Clock, FakeClock, SystemClock
from tokenadmin.config import Settings
from tokenadmin.database import Database
from tokenadmin.models import Organization
from tokenadmin.organization import service as organization_service
from tokenadmin.token_request import service as token_request_service
from tokenadmin.tokens import Kind
from tokenadmin.usage.endpoints import answer_of
from tokenadmin.usage.service import Caller, Operation, run
from tokenadmin.user import repository as user_repository
from tokenadmin.user import service as user_service

ORG_NAME = "Acme Corp"
TIME_ZONE = "Europe/Berlin"
ADMIN_EMAIL = "admin@acme.example"
ADMIN_PASSWORD = "demo-password"
OPERATOR_EMAIL = "ops@tokenadmin.example"
OPERATOR_NAME = "Platform Operator"
OPERATOR_PASSWORD = "demo-password"
SEED = 20_260_301
ACTOR = "demo"
PLATFORM = "demo:platform"


@dataclass(frozen=True)
class Person:
    name: str
    email: str
    role: str
    max_tokens: int
    max_train_tokens: int = 0
    appetite: float = 0.6
    """Share of Max Tokens this person would use in a month; above 1 they run out."""


def _person(name: str, role: str, tokens: int, train: int = 0, appetite: float = 0.6) -> Person:
    local = name.lower().replace("ü", "ue").replace("í", "i").replace(" ", ".")
    return Person(name, f"{local}@acme.example", role, tokens, train, appetite)


PEOPLE = (
    Person("Jana Hoffmann", ADMIN_EMAIL, "admin", 500_000, 0, 0.3),
    _person("Lukas Schneider", "admin", 1_000_000, 200_000, 0.5),
    _person("Sophie Müller", "member", 2_000_000, 500_000, 1.15),
    _person("Maximilian Weber", "member", 250_000, 0, 0.7),
    _person("Emma Wagner", "member", 500_000, 0, 0.9),
    _person("Noah Becker", "member", 200_000, 0, 1.3),
    _person("Mia Schulz", "member", 300_000, 0, 0.4),
    _person("Elias Koch", "member", 1_500_000, 1_000_000, 0.95),
    _person("Hannah Richter", "member", 200_000, 0, 0.2),
    _person("Paul Klein", "member", 400_000, 0, 0.65),
    _person("Lea Wolf", "member", 200_000, 0, 1.1),
    _person("Jonas Neumann", "member", 750_000, 300_000, 0.8),
    _person("Marie Schwarz", "member", 200_000, 0, 0.5),
    _person("Felix Zimmermann", "member", 250_000, 0, 0.35),
    _person("Laura Braun", "member", 600_000, 0, 0.75),
    _person("Ben Krüger", "member", 200_000, 0, 0.9),
    _person("Anna Hofmann", "member", 350_000, 0, 0.55),
    _person("Leon Hartmann", "member", 200_000, 0, 0.1),
    _person("Clara Lange", "member", 1_000_000, 500_000, 0.85),
    _person("David Okafor", "member", 300_000, 0, 1.05),
    _person("Priya Sharma", "member", 800_000, 200_000, 0.7),
    _person("Mateo García", "member", 200_000, 0, 0.6),
    _person("Yuki Tanaka", "member", 450_000, 0, 0.45),
    _person("Tom Fischer", "member", 200_000, 0, 0.6),
    _person("Olivia Brown", "member", 300_000, 0, 0.5),
)
LEAVER = "tom.fischer@acme.example"
"""Leaves on the 18th of the previous month: deactivated, his used tokens return later."""
RAISED = "noah.becker@acme.example"
"""Runs out on the 10th of the previous month and gets more."""
JOINER = "olivia.brown@acme.example"
"""Joins on the first working moment of this month."""
MODELS = ("large-chat", "small-chat", "code-assist")
"""The models of the simulated history (reported by the platform through /v1/usage)."""
GATEWAY_MEMBER = "elias.koch@acme.example"
"""The member whose own key the how-to prints, for the gateway and the Ask Sage API."""
DEMO_MODELS = (
    # name, prompt rate, completion rate: the built-in demo model, answering in-process
    # (gateway/demo.py), at two prices to show rates at work.
    ("demo-echo", "1", "1"),
    ("demo-echo-premium", "2", "4"),
)
ASKERS = (
    ("lea.wolf@acme.example", Kind.inference, 150_000, "Drafting the annual report this week."),
    ("jonas.neumann@acme.example", Kind.training, 200_000, "Ingesting the 2026 support tickets."),
)
"""Members whose requests for more tokens wait for an administrator's decision."""


@dataclass
class DemoResult:
    org_id: str
    org_name: str
    users: int
    purchases: int
    days: int
    usage_events: int
    refused: int
    operator_key: str
    admin_key: str
    member_key: str
    member_email: str = GATEWAY_MEMBER
    admin_email: str = ADMIN_EMAIL
    admin_password: str = ADMIN_PASSWORD
    operator_email: str = OPERATOR_EMAIL
    operator_password: str = OPERATOR_PASSWORD


async def has_organizations(session: AsyncSession) -> bool:
    return (await session.scalar(select(Organization.id).limit(1))) is not None


def _local(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime.combine(day, time(hour, minute), ZoneInfo(TIME_ZONE)).astimezone(UTC)


class _Loader:
    def __init__(self, db: Database, settings: Settings, now: datetime) -> None:
        self.db = db
        self.settings = settings
        self.now = now
        self.rng = random.Random(SEED)
        zone = ZoneInfo(TIME_ZONE)
        local_now = now.astimezone(zone)
        first_of_month = local_now.date().replace(day=1)
        self.first_day = (first_of_month - timedelta(days=1)).replace(day=1)
        self.this_month = first_of_month
        self.clock = FakeClock(_local(self.first_day, 8))
        self.org_id: Any = None
        self.caller: Caller | None = None
        self.people = {p.email: p for p in PEOPLE}
        self.active = {p.email for p in PEOPLE if p.email != JOINER}
        self.usage_events = 0
        self.refused = 0

    def act(self) -> Act:
        return Act(ACTOR, self.clock.now())

    async def setup(self) -> int:
        """The organization, its purchases and everyone but the joiner, at the start."""
        act = self.act()
        expiring_at = self.now + timedelta(days=18)

        async def work(session: AsyncSession) -> int:
            org = await organization_service.create(
                session, act, name=ORG_NAME, time_zone=TIME_ZONE
            )
            purchases = (
                (20_000_000, 0, None, "Enterprise plan, monthly capacity"),
                (3_000_000, 0, expiring_at, "Top-up for the quarter-end reports"),
                (0, 5_000_000, None, "Training pack"),
            )
            for inference, training, expires_at, note in purchases:
                await organization_service.record_purchase(
                    session,
                    act,
                    org,
                    inference_amount=inference,
                    training_amount=training,
                    purchased_on=None,
                    expires_at=expires_at,
                    payer="Acme Corp Finance",
                    note=note,
                )
            for person in PEOPLE:
                if person.email != JOINER:
                    await self._create(session, act, org, person)
            self.org_id = org.id
            return len(purchases)

        count = await self.db.write(work)
        self.caller = Caller(PLATFORM, self.org_id, f"org:{self.org_id}")
        return count

    async def _create(
        self, session: AsyncSession, act: Act, org: Organization, person: Person
    ) -> None:
        spec = user_service.NewUser(
            email=person.email,
            name=person.name,
            role=person.role,
            max_tokens=person.max_tokens,
            max_train_tokens=person.max_train_tokens,
            password=ADMIN_PASSWORD if person.email == ADMIN_EMAIL else None,
        )
        await user_service.create(session, act, org, spec)

    async def admin_change(self, day: date) -> None:
        """What administrators did during these weeks, on the day they did it."""
        if day == self.first_day.replace(day=10):
            await self._raise(RAISED, 400_000, "Needs more for the quarterly report")
        elif day == self.first_day.replace(day=18):
            await self._deactivate(LEAVER)
        elif day == self.this_month:
            await self._join(JOINER)

    async def _raise(self, email: str, max_tokens: int, reason: str) -> None:
        act = self.act()

        async def work(session: AsyncSession) -> None:
            org = await organization_service.lock_for_change(session, act, self.org_id)
            user = await user_repository.by_email(session, email)
            assert user is not None
            plan = allowance_service.plan(
                org, [allowance_service.Request(user, {Kind.inference: max_tokens})], act
            )
            await allowance_service.apply(session, act, org, plan, reason=reason)

        await self.db.write(work)
        self.people[email] = replace(self.people[email], max_tokens=max_tokens)

    async def _deactivate(self, email: str) -> None:
        act = self.act()

        async def work(session: AsyncSession) -> None:
            org = await organization_service.lock_for_change(session, act, self.org_id)
            user = await user_repository.by_email(session, email)
            assert user is not None
            fresh = await user_repository.get(session, user.id)
            assert fresh is not None
            await user_service.deactivate(session, act, org, fresh)

        await self.db.write(work)
        self.active.discard(email)

    async def _join(self, email: str) -> None:
        act = self.act()

        async def work(session: AsyncSession) -> None:
            org = await organization_service.lock_for_change(session, act, self.org_id)
            await self._create(session, act, org, self.people[email])

        await self.db.write(work)
        self.active.add(email)

    # --- usage -------------------------------------------------------------------------

    def _usage(self, weekend: bool) -> list[Operation]:
        """Half a day of one organization's usage, as the platform's back end sends it."""
        operations = []
        for email in sorted(self.active):
            person = self.people[email]
            if self.rng.random() > (0.12 if weekend else 0.7):
                continue
            daily = person.max_tokens * person.appetite / 15 / 2
            for _ in range(self.rng.randint(1, 3)):
                tokens = max(50, int(daily / 2 * self.rng.uniform(0.3, 1.7)))
                prompt = int(tokens * self.rng.uniform(0.55, 0.85))
                details = {
                    "model": self.rng.choice(MODELS),
                    "prompt_tokens": prompt,
                    "completion_tokens": tokens - prompt,
                }
                operations.append(
                    Operation("usage", email, Kind.inference, tokens, details=details)
                )
            if person.max_train_tokens and self.rng.random() < 0.15:
                tokens = int(person.max_train_tokens * self.rng.uniform(0.03, 0.12))
                details = {"dataset": self.rng.choice(("support-tickets", "contracts-2026"))}
                operations.append(Operation("usage", email, Kind.training, tokens, details=details))
        return operations

    def _reservations(self) -> list[Operation]:
        """Long answers are streamed: the platform reserves first and commits after."""
        chosen = self.rng.sample(sorted(self.active), k=2)
        return [
            Operation(
                "reserve",
                email,
                Kind.inference,
                self.rng.choice((4_000, 8_000, 16_000)),
                ttl_seconds=6 * 3600,
                details={"model": "large-chat", "stream": True},
            )
            for email in chosen
        ]

    async def meter(self, operations: list[Operation]) -> list[dict[str, Any]]:
        assert self.caller is not None
        answers = await run(
            self.db,
            self.clock,
            self.caller,
            operations,
            answer=answer_of,
            default_ttl=self.settings.reservation_ttl_seconds,
            idempotency_ttl=timedelta(hours=self.settings.idempotency_ttl_hours),
        )
        for operation, answer in zip(operations, answers, strict=True):
            if operation.action == "usage":
                self.usage_events += 1
                self.refused += answer.status_code >= 400
        return [a.body for a in answers if a.status_code < 400]

    async def day(self, day: date) -> None:
        weekend = day.weekday() >= 5
        morning = _local(day, 9, self.rng.randint(0, 59))
        afternoon = _local(day, 15, self.rng.randint(0, 59))
        if morning > self.now:
            return
        self.clock.set(morning)
        await self.admin_change(day)
        self.clock.set(morning + timedelta(minutes=30))
        operations = self._usage(weekend) + ([] if weekend else self._reservations())
        answers = await self.meter(operations)
        if afternoon > self.now:
            return  # today, still early: the morning's reservations are still open
        self.clock.set(afternoon)
        closing = []
        for answer in answers:
            if answer.get("status") == "open":
                reserved = answer["tokens"]
                if self.rng.random() < 0.2:
                    closing.append(Operation("release", reservation_id=uuid.UUID(answer["id"])))
                else:
                    used = int(reserved * self.rng.uniform(0.5, 1.0))
                    closing.append(
                        Operation("commit", tokens=used, reservation_id=uuid.UUID(answer["id"]))
                    )
        await self.meter(self._usage(weekend) + closing)


async def load(
    db: Database,
    settings: Settings,
    *,
    clock: Clock | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> DemoResult:
    """Load the demo into an empty database and create its two API keys."""
    now = (clock or SystemClock()).now()
    loader = _Loader(db, settings, now)
    purchases = await loader.setup()
    local_today = now.astimezone(ZoneInfo(TIME_ZONE)).date()
    days = (local_today - loader.first_day).days + 1
    for index in range(days):
        await loader.day(loader.first_day + timedelta(days=index))
        if progress is not None:
            progress(index + 1, days)
    if JOINER not in loader.active:  # today is the 1st, before the working day began
        loader.clock.set(now)
        await loader._join(JOINER)

    act = Act(ACTOR, now)

    async def ask(session: AsyncSession) -> None:
        org = await organization_service.lock_for_change(session, act, loader.org_id)
        for email, kind, amount, reason in ASKERS:
            found = await user_repository.find_by_refs(session, org.id, [email])
            asking = Act(f"user:{email}", now)
            await token_request_service.ask(
                session, asking, org, found[email], kind, amount, reason
            )

    await db.write(ask)

    async def keys(session: AsyncSession) -> tuple[str, str, str]:
        await auth_service.create_operator(
            session, email=OPERATOR_EMAIL, name=OPERATOR_NAME, password=OPERATOR_PASSWORD, now=now
        )
        _, operator = await api_key_service.create(
            session, act, org_id=None, name="demo operator", scopes=["admin", "usage", "read"]
        )
        _, admin = await api_key_service.create(
            session, act, org_id=loader.org_id, name="demo admin", scopes=["admin", "read", "usage"]
        )
        for name, prompt_rate, completion_rate in DEMO_MODELS:
            await catalog.set_model(
                session,
                act,
                None,
                name,
                prompt_rate=prompt_rate,
                completion_rate=completion_rate,
                upstream_base_url=catalog.DEMO_BASE_URL,
                upstream_model="demo-echo",
                max_output_tokens=512,
            )
        found = await user_repository.find_by_refs(session, loader.org_id, [GATEWAY_MEMBER])
        _, member = await api_key_service.create_personal(
            session, act, found[GATEWAY_MEMBER], name="demo laptop"
        )
        return operator, admin, member

    operator_key, admin_key, member_key = await db.write(keys)
    return DemoResult(
        org_id=str(loader.org_id),
        org_name=ORG_NAME,
        users=len(PEOPLE),
        purchases=purchases,
        days=days,
        usage_events=loader.usage_events,
        refused=loader.refused,
        operator_key=operator_key,
        admin_key=admin_key,
        member_key=member_key,
    )


def how_to(result: DemoResult, base_url: str) -> str:
    """What to print after loading: where it runs, how to get in, a first request."""
    org = result.org_id
    return f"""\
Loaded the demo organization {result.org_name} ({org}): {result.users} users, \
{result.purchases} purchases, {result.usage_events:,} usage events over {result.days} days \
({result.refused:,} refused for lack of tokens, as happens near a month's end).

  API             {base_url}
  API docs        {base_url}/docs
  Operator key    {result.operator_key}
  Admin key       {result.admin_key}   ({result.org_name}: admin, read, usage)
  Member key      {result.member_key}   ({result.member_email}'s own key)
  Dashboard login {result.admin_email} / {result.admin_password}   ({result.org_name} admin)
                  {result.operator_email} / {result.operator_password}   (platform operator)

With the server running (`make run` starts it; otherwise `tokenadmin serve`), try:

  curl -H "Authorization: Bearer {result.admin_key}" \\
    {base_url}/v1/organizations/{org}/balance

  curl -X POST {base_url}/v1/usage \\
    -H "Authorization: Bearer {result.admin_key}" \\
    -H "Idempotency-Key: $(uuidgen)" -H "Content-Type: application/json" \\
    -d '{{"user": "sophie.mueller@acme.example", "kind": "inference", "tokens": 1500}}'

The OpenAI-compatible gateway meters the member's own tokens; demo-echo is a built-in demo
model that echoes the prompt (no external service is called):

  curl {base_url}/openai/v1/chat/completions \
    -H "Authorization: Bearer {result.member_key}" -H "Content-Type: application/json" \
    -d '{{"model": "demo-echo", "messages": [{{"role": "user", "content": "Hello"}}]}}'

  Python: OpenAI(base_url="{base_url}/openai/v1", api_key=MEMBER_KEY)
          AskSageClient("{result.member_email}", MEMBER_KEY,
                        user_base_url="{base_url}/user", server_base_url="{base_url}/server")

The keys are shown only this once; `tokenadmin operator-key --name NAME` makes another."""


def existing_how_to(base_url: str) -> str:
    return f"""\
  API             {base_url}
  API docs        {base_url}/docs
  Dashboard login {ADMIN_EMAIL} / {ADMIN_PASSWORD}   ({ORG_NAME} admin)
                  {OPERATOR_EMAIL} / {OPERATOR_PASSWORD}   (platform operator)
                  (if the demo was loaded here)

API keys are shown only when created: `tokenadmin operator-key --name NAME` makes one."""
