"""Mixed concurrency on PostgreSQL: three server processes, one database, over 500 requests
at once — debits of mixed sizes, reservations with commits and releases (some raced by
several clients), allowance batches, and the same idempotency key sent by many clients at
once through every process. Afterwards every rule holds, every request had exactly one
outcome, every accepted request is in the journal exactly once, and verify is clean.

Clients behave as the API asks: an answer `409 idempotency_key_in_flight` or `409 retry`
is sent again with the same key, until the first answer comes back. So is a request whose
connection broke before its answer: under this load the client's connection pool now and
then sends a request on a kept-alive connection that is being closed (by the pool itself,
or by the server's keep-alive timeout), and the answer is lost although the change may have
been applied. Sending it again with the same key must then answer the first answer, never
apply it twice; the test counts these and checks every server is still up afterwards.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from tests.databases import empty_postgres
from tests.servers import running_servers
from tokenadmin.act import Act
from tokenadmin.api_key import service as api_key_service
from tokenadmin.clock import SystemClock
from tokenadmin.database import Database
from tokenadmin.journal.service import verify
from tokenadmin.models import JournalEntry, Organization, Reservation, User
from tokenadmin.tokens import Kind

pytestmark = [pytest.mark.slow, pytest.mark.postgres_only]

USERS = 8
ALLOWANCE = 200_000
TRAIN_ALLOWANCE = 40_000
CAPACITY = 2_400_000  # room for some raises, not for all of them
TRAIN_CAPACITY = 500_000
DEBIT_SIZES = (1, 7, 100, 999, 5_000, 20_000, 60_000)
RETRIED = {"idempotency_key_in_flight", "retry", "unavailable"}


@pytest.fixture
async def pg(postgres_url: str) -> AsyncIterator[Database]:
    database = Database(postgres_url, pool_size=5)
    await empty_postgres(database)
    yield database
    await database.dispose()


@dataclass
class Answer:
    status: int
    body: dict[str, Any]
    replayed: bool
    attempts: int


@dataclass
class Run:
    """Sends requests round-robin over the servers, as clients that retry do."""

    http: httpx.AsyncClient
    urls: list[str]
    turn: int = 0
    faults: list[str] = field(default_factory=list)  # 5xx answers: never allowed
    retried: Counter[str] = field(default_factory=Counter)
    sent: int = 0  # requests, not counting the retries of one

    async def send(
        self, secret: str, method: str, path: str, body: Any = None, *, key: str
    ) -> Answer:
        headers = {"Authorization": f"Bearer {secret}", "Idempotency-Key": key}
        self.sent += 1
        for attempt in range(1, 201):
            self.turn += 1
            url = self.urls[self.turn % len(self.urls)]
            try:
                response = await self.http.request(method, url + path, json=body, headers=headers)
            except httpx.TransportError as error:
                self.retried[type(error).__name__] += 1
                await asyncio.sleep(0.01 * min(attempt, 20))
                continue
            if response.status_code >= 500 and response.status_code != 503:
                self.faults.append(f"{method} {path}: {response.status_code} {response.text}")
            payload: dict[str, Any] = response.json()
            code = payload.get("error", {}).get("code") if response.status_code >= 400 else None
            if code in RETRIED:
                self.retried[code] += 1
                await asyncio.sleep(0.005 * min(attempt, 20))
                continue
            replayed = response.headers.get("Idempotent-Replayed") == "true"
            return Answer(response.status_code, payload, replayed, attempt)
        raise AssertionError(f"{method} {path} with key {key} never got its answer")


@dataclass
class Ledger:
    """Every answer, by idempotency key, to compare with each other and with the journal."""

    by_key: dict[str, list[Answer]] = field(default_factory=lambda: defaultdict(list))

    def note(self, key: str, answer: Answer) -> None:
        self.by_key[key].append(answer)


async def test_500_mixed_concurrent_requests_through_three_processes_keep_every_rule(
    pg: Database, postgres_url: str
) -> None:
    started = time.monotonic()
    _, operator = await pg.write(
        lambda s: api_key_service.create(
            s,
            Act("test", SystemClock().now()),
            org_id=None,
            name="ops",
            scopes=["admin", "usage", "read"],
        )
    )
    rng = random.Random(20261127)
    ledger = Ledger()
    with running_servers(postgres_url, 3) as urls:
        # Enough connections that requests seldom queue for one, kept alive for less than
        # the server's keep-alive timeout (5 s): fewer broken connections to send again.
        limits = httpx.Limits(
            max_connections=1_000, max_keepalive_connections=1_000, keepalive_expiry=2.0
        )
        async with httpx.AsyncClient(timeout=60, limits=limits) as http:
            run = Run(http, urls)
            org, admin, meters, users = await _organization(run, operator)

            async def debit(key: str, user: str, kind: str, tokens: int) -> None:
                body = {"user": user, "kind": kind, "tokens": tokens}
                answer = await run.send(rng.choice(meters), "POST", "/v1/usage", body, key=key)
                ledger.note(key, answer)
                assert answer.status in (200, 402), answer

            async def reserve(key: str, user: str, kind: str, tokens: int) -> str | None:
                body = {"user": user, "kind": kind, "tokens": tokens, "ttl_seconds": 600}
                answer = await run.send(
                    rng.choice(meters), "POST", "/v1/reservations", body, key=key
                )
                ledger.note(key, answer)
                assert answer.status in (201, 402), answer
                return str(answer.body["id"]) if answer.status == 201 else None

            async def close(key: str, reservation: str, action: str, tokens: int | None) -> None:
                body = None if tokens is None else {"tokens": tokens}
                path = f"/v1/reservations/{reservation}/{action}"
                answer = await run.send(rng.choice(meters), "POST", path, body, key=key)
                ledger.note(key, answer)
                assert answer.status in (200, 402, 409), answer
                if answer.status == 409:
                    assert answer.body["error"]["code"] == "reservation_closed", answer

            async def flow(user: str, kind: str, tokens: int, racers: int) -> None:
                """Reserve, wait a little, then commit or release (raced by `racers` clients
                with their own keys when more than one: exactly one of them closes it)."""
                reservation = await reserve(uuid.uuid4().hex, user, kind, tokens)
                if reservation is None:
                    return
                await asyncio.sleep(rng.random() * 0.2)
                action = rng.choice(["commit", "commit", "release"])
                actual = rng.choice([None, tokens // 2, tokens, tokens + 500])
                if racers > 1:
                    actual = None  # every racer asks for the same, so none is refused for room
                await asyncio.gather(
                    *(close(uuid.uuid4().hex, reservation, action, actual) for _ in range(racers))
                )

            async def change(key: str, rows: list[dict[str, Any]]) -> None:
                path = f"/v1/organizations/{org}/allowances"
                body = {"changes": rows, "reason": "concurrency"}
                answer = await run.send(admin, "POST", path, body, key=key)
                ledger.note(key, answer)
                assert answer.status in (200, 422), answer

            def random_rows() -> list[dict[str, Any]]:
                rows = []
                for user in rng.sample(users, rng.randint(1, 3)):
                    row: dict[str, Any] = {"user": user}
                    if rng.random() < 0.8:
                        row["max_tokens"] = rng.choice([150_000, 200_000, 250_000, 400_000])
                    if rng.random() < 0.5 or "max_tokens" not in row:
                        row["max_train_tokens"] = rng.choice([10_000, 40_000, 80_000])
                    rows.append(row)
                return rows

            def random_debit() -> tuple[str, str, int]:
                kind = "inference" if rng.random() < 0.8 else "training"
                return rng.choice(users), kind, rng.choice(DEBIT_SIZES)

            work: list[Any] = []
            for _ in range(220):  # debits of mixed sizes
                work.append(debit(uuid.uuid4().hex, *random_debit()))
            for index in range(60):  # reservations, closed by one client or raced by three
                racers = 3 if index % 6 == 0 else 1
                work.append(flow(*random_debit(), racers))
            for _ in range(40):  # allowance batches, some refused
                work.append(change(uuid.uuid4().hex, random_rows()))
            for index in range(15):  # one key, ten clients at once, through every process
                key = uuid.uuid4().hex
                if index < 10:
                    same = random_debit()
                    work += [debit(key, *same) for _ in range(10)]
                elif index < 13:
                    same = random_debit()
                    work += [reserve(key, *same) for _ in range(10)]
                else:
                    rows = random_rows()
                    work += [change(key, rows) for _ in range(10)]
            setup = run.sent
            rng.shuffle(work)
            await asyncio.gather(*work)
            assert not run.faults, run.faults
            elapsed = time.monotonic() - started
            for url in urls:  # no process died under the load
                assert (await http.get(f"{url}/healthz")).status_code == 200, url
    requests = run.sent - setup
    assert requests >= 500

    await _check(pg, org, ledger, users)
    print(
        f"\n{requests} requests (plus {sum(run.retried.values())} retries of answers"
        f" {dict(run.retried)}) through 3 processes in {elapsed:.1f} s"
    )
    assert elapsed < 60


async def _organization(run: Run, operator: str) -> tuple[str, str, list[str], list[str]]:
    """An organization with capacity for some raises, USERS users, and its keys."""
    org = await run.send(operator, "POST", "/v1/organizations", {"name": "Mixed"}, key="o")
    org_id = str(org.body["id"])
    purchase = {"inference_amount": CAPACITY, "training_amount": TRAIN_CAPACITY}
    await run.send(operator, "POST", f"/v1/organizations/{org_id}/purchases", purchase, key="p")
    keys = []
    for index, scopes in enumerate((["admin"], ["usage"], ["usage"])):
        key_body = {"name": f"key-{index}", "scopes": scopes}
        created = await run.send(
            operator, "POST", f"/v1/organizations/{org_id}/api-keys", key_body, key=f"k{index}"
        )
        keys.append(str(created.body["key"]))
    users = []
    for index in range(USERS):
        body: dict[str, Any] = {
            "email": f"user{index}@mixed.example",
            "name": f"User {index}",
            "max_tokens": ALLOWANCE,
            "max_train_tokens": TRAIN_ALLOWANCE,
        }
        created = await run.send(
            keys[0], "POST", f"/v1/organizations/{org_id}/users", body, key=f"u{index}"
        )
        assert created.status == 201, created
        users.append(str(created.body["id"]))
    return org_id, keys[0], keys[1:], users


async def _check(pg: Database, org: str, ledger: Ledger, users: list[str]) -> None:
    # Each request had exactly one outcome: every client that sent a key got the same answer.
    accepted: dict[str, Answer] = {}
    for key, answers in ledger.by_key.items():
        first = answers[0]
        for answer in answers[1:]:
            assert (answer.status, answer.body) == (first.status, first.body), (key, answers)
        assert sum(1 for a in answers if not a.replayed) <= 1, (key, answers)
        if first.status in (200, 201):
            accepted[key] = first
    # The run was mixed: debits refused for lack of tokens, replays, refused allowance
    # batches, closes that lost a race.
    outcomes = Counter(
        (a.status, a.body["error"]["code"] if a.status >= 400 else "ok", a.replayed)
        for answers in ledger.by_key.values()
        for a in answers
    )
    print(f"\noutcomes (status, code, replayed): {dict(sorted(outcomes.items()))}")
    assert outcomes[(402, "insufficient_tokens", False)] > 0, outcomes
    assert outcomes[(422, "allowance_change_refused", False)] > 0, outcomes
    assert outcomes[(409, "reservation_closed", False)] > 0, outcomes
    assert sum(n for (_, _, replayed), n in outcomes.items() if replayed) > 0, outcomes

    # Every accepted metering request is in the journal once, with its own entry.
    expected: dict[str, set[int]] = defaultdict(set)
    used: Counter[tuple[str, str]] = Counter()
    open_reservations: Counter[tuple[str, str]] = Counter()
    applied_changes = 0
    for answer in accepted.values():
        body = answer.body
        if "applied" in body:  # an allowance batch
            assert body["applied"], body
            applied_changes += len(body["changes"])
        elif body.get("accepted") is True:  # usage
            expected["usage"].add(body["journal_entry_id"])
            used[(body["user_id"], body["kind"])] += body["tokens"]
        elif body.get("status") == "open":
            expected["reserve"].add(body["journal_entry_id"])
        elif body.get("status") == "committed":
            expected["commit"].add(body["journal_entry_id"])
            used[(body["user_id"], body["kind"])] += body["committed"]
        elif body.get("status") == "released":
            expected["release"].add(body["journal_entry_id"])
    closed = {
        a.body["id"] for a in accepted.values() if a.body.get("status") in ("committed", "released")
    }
    for answer in accepted.values():
        body = answer.body
        if body.get("status") == "open" and body["id"] not in closed:
            open_reservations[(body["user_id"], body["kind"])] += body["tokens"]
    assert len(expected["commit"]) + len(expected["release"]) == len(closed)

    async def stored(session: AsyncSession) -> tuple[Any, ...]:
        org_id = uuid.UUID(org)
        entries = (
            await session.execute(
                select(JournalEntry.id, JournalEntry.action).where(JournalEntry.org_id == org_id)
            )
        ).all()
        rows = (await session.scalars(select(User).where(User.org_id == org_id))).all()
        organization = await session.get(Organization, org_id)
        reservations = (
            await session.scalars(select(Reservation).where(Reservation.org_id == org_id))
        ).all()
        return entries, rows, organization, reservations

    entries, rows, organization, reservations = await pg.read(stored)
    journaled: dict[str, set[int]] = defaultdict(set)
    for entry_id, action in entries:
        journaled[action].add(entry_id)
    for action in ("usage", "reserve", "commit", "release"):
        assert journaled[action] == expected[action], (
            action,
            sorted(journaled[action] ^ expected[action]),
        )
    assert len(journaled["allowance_changed"]) == applied_changes
    assert not journaled["reservation_expired"]
    assert sum(1 for r in reservations if r.status == "open") == sum(
        1
        for a in accepted.values()
        if a.body.get("status") == "open" and a.body["id"] not in closed
    )

    # The rules: used + reserved <= allowance for every user, allocated <= capacity.
    assert organization is not None
    assert {str(u.id) for u in rows} == set(users)
    for user in rows:
        for kind in Kind:
            allowance = user.allowance(kind)
            used_now, reserved = user.used(kind), user.reserved(kind)
            assert used_now >= 0
            assert reserved >= 0
            assert used_now + reserved <= allowance, (user.email, kind)
            assert used_now == used[(str(user.id), kind.value)], (user.email, kind)
            assert reserved == open_reservations[(str(user.id), kind.value)], (user.email, kind)
    for kind in Kind:
        assert organization.allocated(kind) <= organization.capacity(kind), kind
    report = await pg.read(verify)
    assert report.clean, report.differences
