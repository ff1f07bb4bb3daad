"""The `email.send` job: each new event, by email, to the organization's active
administrators and to the member it concerns (an event with a user: allowance.threshold,
token_request.decided), through the SMTP server of TOKENADMIN_SMTP_URL.

It runs only when TOKENADMIN_SMTP_URL and TOKENADMIN_SMTP_FROM are set, and sends the
events created since its first run with them set (notification_cursors), not every event
ever recorded. Each (event, recipient) is one row of `email_notifications`, so a recipient
gets an event once; an email the SMTP server refuses, or a server that can't be reached, is
tried again like a webhook (30 s doubling, at most an hour apart, for a day).

The standard library's smtplib, in a worker thread (asyncio.to_thread), sends them: a few
emails a minute at most, from one job at a time, need no asynchronous SMTP client and no
further dependency; one connection sends each round's emails.
"""

from __future__ import annotations

import asyncio
import logging
import smtplib
import ssl
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from urllib.parse import parse_qs, unquote, urlsplit

from sqlalchemy.ext.asyncio import AsyncSession
from uuid6 import uuid7

from tokenadmin import metrics
from tokenadmin.clock import Clock
from tokenadmin.config import Settings
from tokenadmin.database import Database
from tokenadmin.jobs.scheduler import Scheduler
from tokenadmin.models import EmailNotification, Event
from tokenadmin.webhooks import repository
from tokenadmin.webhooks.delivery import GIVE_UP_AFTER, backoff

log = logging.getLogger("tokenadmin.email")

JOB = "email.send"
CURSOR = "email"
FAN_OUT_BATCH = 500
SEND_BATCH = 100
TIMEOUT_SECONDS = 20.0
TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class SmtpServer:
    host: str
    port: int
    tls: bool
    """smtps://: TLS from the first byte."""
    starttls: bool
    user: str | None
    password: str | None

    @classmethod
    def of(cls, url: str) -> SmtpServer:
        """smtp://[user:password@]host[:port][?starttls=true], or smtps://... (TLS)."""
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise ValueError("smtp_url must be smtp://host[:port] or smtps://host[:port]")
        query = parse_qs(parts.query)
        return cls(
            host=parts.hostname,
            port=parts.port or (465 if parts.scheme == "smtps" else 25),
            tls=parts.scheme == "smtps",
            starttls=query.get("starttls", ["false"])[0].lower() in TRUE,
            user=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )


def message_of(event: Event, sender: str, recipient: str, at: datetime) -> EmailMessage:
    message = EmailMessage()
    subject = " ".join(event.message.split())
    message["Subject"] = f"tokenadmin: {subject[:150]}"
    message["From"] = sender
    message["To"] = recipient
    message["Date"] = format_datetime(at)
    message["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or None)
    message["Tokenadmin-Event-Id"] = str(event.id)
    lines = [
        event.message,
        "",
        f"Event: {event.kind}",
        f"At: {event.created_at:%Y-%m-%d %H:%M} UTC",
        f"Organization: {event.org_id}",
    ]
    lines += [f"{name}: {value}" for name, value in sorted(event.data.items())]
    message.set_content("\n".join(lines) + "\n")
    return message


def _send_all(server: SmtpServer, messages: list[EmailMessage]) -> list[str | None]:
    """Send each message over one connection; each one's error, or None. (A worker thread.)"""
    try:
        if server.tls:
            client: smtplib.SMTP = smtplib.SMTP_SSL(
                server.host,
                server.port,
                timeout=TIMEOUT_SECONDS,
                context=ssl.create_default_context(),
            )
        else:
            client = smtplib.SMTP(server.host, server.port, timeout=TIMEOUT_SECONDS)
    except (OSError, smtplib.SMTPException) as error:
        return [f"{type(error).__name__}: {error}"] * len(messages)
    errors: list[str | None] = []
    try:
        if server.starttls:
            client.starttls(context=ssl.create_default_context())
        if server.user is not None:
            client.login(server.user, server.password or "")
        for message in messages:
            try:
                client.send_message(message)
                errors.append(None)
            except smtplib.SMTPException as error:
                errors.append(f"{type(error).__name__}: {error}")
    except (OSError, smtplib.SMTPException) as error:
        errors += [f"{type(error).__name__}: {error}"] * (len(messages) - len(errors))
    finally:
        try:
            client.quit()
        except (OSError, smtplib.SMTPException):
            client.close()
    return errors


async def fan_out(db: Database, clock: Clock) -> int:
    """An email row per recipient of each event since the cursor that has none yet."""

    async def insert(session: AsyncSession) -> int:
        now = clock.now()
        since = await repository.cursor_since(session, CURSOR, now)
        rows = []
        for event in await repository.unmailed_events(session, since, FAN_OUT_BATCH):
            for recipient in await repository.recipients(session, event.org_id, event.user_id):
                rows.append(
                    {
                        "id": uuid7(),
                        "org_id": event.org_id,
                        "event_id": event.id,
                        "recipient": recipient,
                        "state": "pending",
                        "attempts": 0,
                        "next_attempt_at": now,
                        "created_at": now,
                    }
                )
        return await repository.insert_emails(session, rows)

    return await db.write(insert)


def _after(
    email: EmailNotification, error: str | None, at: datetime
) -> tuple[dict[str, object], str]:
    attempts = email.attempts + 1
    first = email.first_attempt_at or at
    columns: dict[str, object] = {
        "attempts": attempts,
        "first_attempt_at": first,
        "last_error": error,
    }
    if error is None:
        return {**columns, "state": "sent", "sent_at": at, "next_attempt_at": None}, "sent"
    if at >= first + GIVE_UP_AFTER:
        return {**columns, "state": "failed", "next_attempt_at": None}, "gave_up"
    return {**columns, "next_attempt_at": min(at + backoff(attempts), first + GIVE_UP_AFTER)}, (
        "failed_attempt"
    )


async def send_due(db: Database, clock: Clock, server: SmtpServer, sender: str) -> int:
    """Send the due emails (one round); how many were tried."""
    due = await db.read(lambda session: repository.due_emails(session, clock.now(), SEND_BATCH))
    if not due:
        return 0
    at = clock.now()
    messages = [message_of(event, sender, email.recipient, at) for email, event in due]
    errors = await asyncio.to_thread(_send_all, server, messages)
    results: list[str] = []

    async def write(session: AsyncSession) -> None:
        results.clear()
        for (email, _), error in zip(due, errors, strict=True):
            columns, result = _after(email, error, at)
            await repository.update_email(session, email.id, **columns)
            results.append(result)

    await db.write(write)
    for result in results:
        metrics.EMAILS.labels(result).inc()
    for (email, _), error in zip(due, errors, strict=True):
        if error is not None:
            log.warning("email to %s not sent: %s", email.recipient, error)
    return len(due)


async def send(db: Database, clock: Clock, *, server: SmtpServer, sender: str) -> int:
    """The job: fan out, then send what is due."""
    await fan_out(db, clock)
    return await send_due(db, clock, server, sender)


def register(scheduler: Scheduler, settings: Settings) -> None:
    """`email.send`, when SMTP is configured, every `sweep_interval_seconds` unless
    `job_intervals` names it."""
    if settings.smtp_url is None or settings.smtp_from is None:
        return
    server = SmtpServer.of(settings.smtp_url.get_secret_value())
    interval = settings.job_intervals.get(JOB, settings.sweep_interval_seconds)

    async def job(db: Database, clock: Clock) -> int:
        assert settings.smtp_from is not None
        return await send(db, clock, server=server, sender=settings.smtp_from)

    scheduler.register(JOB, interval, job)
