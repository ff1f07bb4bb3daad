"""The `webhooks.deliver` job: events become deliveries, and due deliveries are POSTed.

Each run (once across server processes, tokenadmin.jobs) first fans out: for each enabled
endpoint, the events of its organization and kinds created since it sends, without a
delivery to it yet, get one (unique per endpoint and event, due at once). Then it sends
what is due, in rounds: the due deliveries are read in one transaction, POSTed with no
transaction open, and each answer is written in one transaction (the attempt, and the
delivery delivered, due again later, or failed).

Retries: a POST answered other than 2xx, or not answered within TIMEOUT, is tried again
after 30 s, then 1, 2, 4 ... minutes, at most an hour apart, until a day after the first
attempt of the sequence; the attempt at that day's end is the last, and a failure there
gives the delivery up (`failed`). Delivery is at least once: an answer lost on its way
back means the receiver gets the event again, with the same Tokenadmin-Event-Id.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncSession
from uuid6 import uuid7

from tokenadmin import metrics
from tokenadmin.clock import Clock
from tokenadmin.config import Settings
from tokenadmin.database import Database
from tokenadmin.jobs.scheduler import Scheduler
from tokenadmin.models import Event, WebhookDelivery, WebhookEndpoint
from tokenadmin.webhooks import repository, signature

log = logging.getLogger("tokenadmin.webhooks")

JOB = "webhooks.deliver"
FIRST_RETRY = timedelta(seconds=30)
LONGEST_WAIT = timedelta(hours=1)
GIVE_UP_AFTER = timedelta(days=1)
TIMEOUT_SECONDS = 10.0
EXCERPT_BYTES = 1024
FAN_OUT_BATCH = 500
SEND_BATCH = 100
SEND_ROUNDS = 10
"""At most SEND_ROUNDS × SEND_BATCH POSTs per run, so a run ends and renews its schedule."""
CONCURRENCY = 10
USER_AGENT = "tokenadmin-webhooks/1"


def backoff(failed_attempts: int) -> timedelta:
    """The wait after the n-th failed attempt of a sequence: 30 s doubling, at most 1 h."""
    wait: timedelta = FIRST_RETRY * 2 ** min(failed_attempts - 1, 20)
    return min(wait, LONGEST_WAIT)


def body_of(event: Event) -> bytes:
    """The JSON body POSTed for an event; the signature covers these exact bytes."""
    document = {
        "id": str(event.id),
        "type": event.kind,
        "created_at": event.created_at.isoformat().replace("+00:00", "Z"),
        "organization_id": str(event.org_id),
        "user_id": None if event.user_id is None else str(event.user_id),
        "data": event.data,
        "message": event.message,
    }
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def headers_of(event: Event, secret: str, body: bytes, at: datetime) -> dict[str, str]:
    timestamp = int(at.timestamp())
    return {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "Tokenadmin-Event-Id": str(event.id),
        "Tokenadmin-Timestamp": str(timestamp),
        "Tokenadmin-Signature": signature.header(secret, timestamp, body),
    }


@dataclass(frozen=True)
class Outcome:
    at: datetime
    status_code: int | None
    excerpt: str | None
    error: str | None
    seconds: float

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


async def post(
    client: httpx.AsyncClient, endpoint: WebhookEndpoint, event: Event, at: datetime
) -> Outcome:
    """One POST of the event to the endpoint, and what came back."""
    body = body_of(event)
    started = time.perf_counter()
    headers = headers_of(event, endpoint.secret, body, at)
    try:
        # Streamed, to read no more of an answer than the log keeps.
        async with client.stream("POST", endpoint.url, content=body, headers=headers) as response:
            start = b""
            async for chunk in response.aiter_bytes():
                start += chunk
                if len(start) >= EXCERPT_BYTES:
                    break
    except httpx.HTTPError as error:
        reason = str(error) or type(error).__name__
        return Outcome(
            at,
            None,
            None,
            f"{type(error).__name__}: {reason}"[:1000],
            time.perf_counter() - started,
        )
    excerpt = start[:EXCERPT_BYTES].decode("utf-8", "replace")
    return Outcome(at, response.status_code, excerpt, None, time.perf_counter() - started)


async def fan_out(db: Database, clock: Clock) -> int:
    """Deliveries for the events each enabled endpoint has not had yet; how many. What is
    new is found in one read; only endpoints with new events take a write."""

    async def find(session: AsyncSession) -> list[tuple[WebhookEndpoint, list[uuid.UUID]]]:
        found = []
        for endpoint in await repository.enabled_endpoints(session):
            events = await repository.unsent_events(session, endpoint, FAN_OUT_BATCH)
            if events:
                found.append((endpoint, list(events)))
        return found

    made = 0
    for endpoint, events in await db.read(find):
        now = clock.now()
        rows = [
            {
                "id": uuid7(),
                "endpoint_id": endpoint.id,
                "org_id": endpoint.org_id,
                "event_id": event_id,
                "state": "pending",
                "sequence": 1,
                "attempts": 0,
                "next_attempt_at": now,
                "created_at": now,
            }
            for event_id in events
        ]
        # Once per (endpoint, event): a row another run inserted meanwhile is left as is.
        made += await db.write(partial(repository.insert_deliveries, rows=rows))
    return made


def _after(delivery: WebhookDelivery, outcome: Outcome) -> tuple[dict[str, Any], str]:
    """The delivery's columns after this attempt, and the attempt's result for the metrics."""
    attempts = delivery.attempts + 1
    first = delivery.first_attempt_at or outcome.at
    columns: dict[str, Any] = {
        "attempts": attempts,
        "first_attempt_at": first,
        "last_status_code": outcome.status_code,
    }
    if outcome.delivered:
        return {
            **columns,
            "state": "delivered",
            "next_attempt_at": None,
            "finished_at": outcome.at,
        }, "delivered"
    give_up_at = first + GIVE_UP_AFTER
    if outcome.at >= give_up_at:
        return {
            **columns,
            "state": "failed",
            "next_attempt_at": None,
            "finished_at": outcome.at,
        }, "gave_up"
    retry_at = min(outcome.at + backoff(attempts), give_up_at)
    return {**columns, "next_attempt_at": retry_at}, "failed_attempt"


async def send_due(db: Database, clock: Clock, *, answer_within: float = TIMEOUT_SECONDS) -> int:
    """POST every due delivery (at most SEND_ROUNDS rounds); the attempts made."""
    made = 0
    limits = asyncio.Semaphore(CONCURRENCY)

    async def due_now() -> Sequence[tuple[WebhookDelivery, WebhookEndpoint, Event]]:
        return await db.read(
            lambda session: repository.due_deliveries(session, clock.now(), SEND_BATCH)
        )

    due = await due_now()
    if not due:
        # Most runs find nothing due: no client, whose TLS context alone costs some 20 ms
        # of CPU to make, once per run and process.
        return 0
    async with httpx.AsyncClient(timeout=answer_within, follow_redirects=False) as client:
        for round_ in range(SEND_ROUNDS):
            if round_:
                due = await due_now()
            if not due:
                break

            async def attempt(
                delivery: WebhookDelivery, endpoint: WebhookEndpoint, event: Event
            ) -> Outcome:
                async with limits:
                    return await post(client, endpoint, event, clock.now())

            outcomes = await asyncio.gather(*(attempt(*row) for row in due))
            await _record(
                db, [(row[0], outcome) for row, outcome in zip(due, outcomes, strict=True)]
            )
            made += len(due)
            if len(due) < SEND_BATCH:
                break
    return made


async def _record(db: Database, results: list[tuple[WebhookDelivery, Outcome]]) -> None:
    counted: list[tuple[str, float]] = []

    async def write(session: AsyncSession) -> None:
        counted.clear()
        for delivery, outcome in results:
            columns, result = _after(delivery, outcome)
            # A resend meanwhile started another sequence: this attempt's answer is kept
            # in the log, but the delivery is the new sequence's. A removed endpoint took
            # its deliveries with it: nothing is left to log.
            if not await repository.update_delivery(
                session, delivery.id, delivery.sequence, **columns
            ):
                if not await repository.delivery_exists(session, delivery.id):
                    continue
                result = "superseded"
            await repository.add_attempt(
                session,
                delivery_id=delivery.id,
                sequence=delivery.sequence,
                at=outcome.at,
                status_code=outcome.status_code,
                response_excerpt=outcome.excerpt,
                error=outcome.error,
                duration_ms=round(outcome.seconds * 1000),
            )
            counted.append((result, outcome.seconds))

    await db.write(write)
    for result, seconds in counted:
        metrics.WEBHOOK_DELIVERY_SECONDS.observe(seconds)
        if result != "superseded":
            metrics.WEBHOOK_DELIVERIES.labels(result).inc()


async def deliver(db: Database, clock: Clock, *, answer_within: float = TIMEOUT_SECONDS) -> int:
    """The job: fan out, then send what is due; the attempts made."""
    await fan_out(db, clock)
    return await send_due(db, clock, answer_within=answer_within)


def register(scheduler: Scheduler, settings: Settings) -> None:
    """`webhooks.deliver` every `sweep_interval_seconds` unless `job_intervals` names it."""
    interval = settings.job_intervals.get(JOB, settings.sweep_interval_seconds)
    scheduler.register(JOB, interval, partial(deliver, answer_within=TIMEOUT_SECONDS))
