"""Clients that behave as the API asks, and the checks that follow a run of them.

`Run` sends requests round-robin over server processes and sends a request again with the
same Idempotency-Key until its first answer comes back: after `409 idempotency_key_in_flight`,
`409 retry`, `503 unavailable`, or a connection that broke before the answer (the change may
have been applied; the resend must then answer the first answer, never apply it twice).
`Ledger` keeps every answer by key; `check_ledger` compares them with each other, with the
journal and with the balances, and checks every rule and `verify`.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.act import Act
from tokenadmin.api_key import service as api_key_service
from tokenadmin.clock import SystemClock
from tokenadmin.database import Database
from tokenadmin.journal.service import verify
from tokenadmin.models import JournalEntry, Organization, Reservation, User
from tokenadmin.tokens import Kind

RETRIED = {"idempotency_key_in_flight", "retry", "unavailable"}
ALLOWANCE = 200_000
TRAIN_ALLOWANCE = 40_000


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
    pending: Counter[str] = field(default_factory=Counter)  # requests awaiting, by server

    async def send(
        self, secret: str, method: str, path: str, body: Any = None, *, key: str
    ) -> Answer:
        headers = {"Authorization": f"Bearer {secret}", "Idempotency-Key": key}
        self.sent += 1
        for attempt in range(1, 201):
            self.turn += 1
            url = self.urls[self.turn % len(self.urls)]
            self.pending[url] += 1
            try:
                response = await self.http.request(method, url + path, json=body, headers=headers)
            except httpx.TransportError as error:
                self.retried[type(error).__name__] += 1
                await asyncio.sleep(0.01 * min(attempt, 20))
                continue
            finally:
                self.pending[url] -= 1
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


async def operator_key(db: Database) -> str:
    """The secret of a new operator key (every scope, no organization)."""
    _, secret = await db.write(
        lambda s: api_key_service.create(
            s,
            Act("test", SystemClock().now()),
            org_id=None,
            name="ops",
            scopes=["admin", "usage", "read"],
        )
    )
    return str(secret)


async def create_organization(
    run: Run, operator: str, *, users: int, capacity: int, train_capacity: int
) -> tuple[str, str, list[str], list[str]]:
    """An organization with `users` users and its keys: one admin key, two usage keys."""
    org = await run.send(operator, "POST", "/v1/organizations", {"name": "Mixed"}, key="o")
    org_id = str(org.body["id"])
    purchase = {"inference_amount": capacity, "training_amount": train_capacity}
    await run.send(operator, "POST", f"/v1/organizations/{org_id}/purchases", purchase, key="p")
    keys = []
    for index, scopes in enumerate((["admin"], ["usage"], ["usage"])):
        key_body = {"name": f"key-{index}", "scopes": scopes}
        created = await run.send(
            operator, "POST", f"/v1/organizations/{org_id}/api-keys", key_body, key=f"k{index}"
        )
        keys.append(str(created.body["key"]))
    ids = []
    for index in range(users):
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
        ids.append(str(created.body["id"]))
    return org_id, keys[0], keys[1:], ids


async def check_ledger(
    db: Database, org: str, ledger: Ledger, users: list[str]
) -> Counter[tuple[int, str, bool]]:
    """Every rule, every balance and the journal against the answers; returns how many
    answers of each (status, code, replayed) there were."""
    # Each request had exactly one outcome: every client that sent a key got the same answer.
    accepted: dict[str, Answer] = {}
    for key, answers in ledger.by_key.items():
        first = answers[0]
        for answer in answers[1:]:
            assert (answer.status, answer.body) == (first.status, first.body), (key, answers)
        assert sum(1 for a in answers if not a.replayed) <= 1, (key, answers)
        if first.status in (200, 201):
            accepted[key] = first
    outcomes = Counter(
        (a.status, a.body["error"]["code"] if a.status >= 400 else "ok", a.replayed)
        for answers in ledger.by_key.values()
        for a in answers
    )

    # Every accepted metering request is in the journal once, with its own entry.
    expected: dict[str, set[int]] = defaultdict(set)
    used: Counter[tuple[str, str]] = Counter()
    open_reservations: Counter[tuple[str, str]] = Counter()
    changed: Counter[tuple[str, str, int, int]] = Counter()  # user, kind, before, after
    for answer in accepted.values():
        body = answer.body
        if "applied" in body:  # an allowance batch
            assert body["applied"], body
            changed.update(
                (c["user_id"], c["kind"], c["before"], c["after"]) for c in body["changes"]
            )
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
                select(
                    JournalEntry.id,
                    JournalEntry.action,
                    JournalEntry.user_id,
                    JournalEntry.kind,
                    JournalEntry.allowance_delta,
                    JournalEntry.allowance_after,
                ).where(JournalEntry.org_id == org_id)
            )
        ).all()
        rows = (await session.scalars(select(User).where(User.org_id == org_id))).all()
        organization = await session.get(Organization, org_id)
        reservations = (
            await session.scalars(select(Reservation).where(Reservation.org_id == org_id))
        ).all()
        return entries, rows, organization, reservations

    entries, rows, organization, reservations = await db.read(stored)
    journaled: dict[str, set[int]] = defaultdict(set)
    for entry_id, action, *_ in entries:
        journaled[action].add(entry_id)
    for action in ("usage", "reserve", "commit", "release"):
        assert journaled[action] == expected[action], (
            action,
            sorted(journaled[action] ^ expected[action]),
        )
    # Every change of an accepted allowance batch is in the journal once, with its values.
    assert (
        Counter(
            (str(user_id), kind, after - delta, after)
            for _, action, user_id, kind, delta, after in entries
            if action == "allowance_changed"
        )
        == changed
    )
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
    report = await db.read(verify)
    assert report.clean, report.differences
    return outcomes
