"""Email notifications: the `email.send` job emails each new event to the organization's
active administrators, and an event about a member to that member too, through a real SMTP
sink (aiosmtpd) on 127.0.0.1; once per recipient; retried when the server refuses, for a
day; only events since email was configured; on only with both SMTP settings."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from datetime import timedelta
from email import message_from_bytes
from email.message import Message
from typing import Any, cast

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from pydantic import ValidationError
from sqlalchemy import select

from tests.conftest import START
from tests.helpers import Api, funded_org
from tokenadmin.act import Act
from tokenadmin.clock import FakeClock
from tokenadmin.config import Settings
from tokenadmin.database import Database
from tokenadmin.events import service as events
from tokenadmin.jobs.scheduler import Scheduler
from tokenadmin.models import EmailNotification
from tokenadmin.webhooks import email
from tokenadmin.webhooks.email import SmtpServer

SENDER = "tokenadmin@acme.example"


class Sink:
    """An SMTP server's message handler: keeps each message, or refuses them all."""

    def __init__(self) -> None:
        self.received: list[tuple[list[str], Message]] = []
        self.refuse = False

    async def handle_DATA(  # noqa: N802 -- the name aiosmtpd calls
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        if self.refuse:
            return "451 Try again later"
        content = envelope.content
        assert isinstance(content, bytes)
        self.received.append((list(envelope.rcpt_tos), message_from_bytes(content)))
        return "250 Message accepted"

    def to(self, recipient: str) -> list[Message]:
        return [message for rcpt, message in self.received if recipient in rcpt]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def sink() -> Iterator[tuple[Sink, SmtpServer]]:
    handler = Sink()
    port = _free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    yield handler, SmtpServer.of(f"smtp://127.0.0.1:{port}")
    controller.stop()


async def emit(
    db: Database, clock: FakeClock, org_id: str, kind: str, user_id: str | None = None
) -> None:
    async def work(session: Any) -> bool:
        return await events.emit(
            session,
            Act("test", clock.now()),
            uuid.UUID(org_id),
            kind,
            key=uuid.uuid4().hex,
            message=f"Something to know: {kind}.",
            data={"percent": 80},
            user_id=None if user_id is None else uuid.UUID(user_id),
        )

    assert await db.write(work)


async def _people(api: Api) -> tuple[str, dict[str, Any]]:
    org_id = await funded_org(api)
    await api.user(org_id, "ada@acme.example", role="admin")
    await api.user(org_id, "bo@acme.example", role="admin")
    gone = await api.user(org_id, "cy@acme.example", role="admin")
    await api.post(f"/v1/users/{gone['id']}/deactivate", expect=200)
    member = await api.user(org_id, "mia@acme.example")
    await api.user(org_id, "ned@acme.example")
    return org_id, member


async def test_events_are_emailed_to_the_active_admins_and_the_member_concerned_once(
    api: Api, db: Database, clock: FakeClock, sink: tuple[Sink, SmtpServer]
) -> None:
    handler, server = sink
    org_id, member = await _people(api)
    await email.send(db, clock, server=server, sender=SENDER)  # the first run: email is on
    await emit(db, clock, org_id, "allowance.threshold", user_id=member["id"])
    await emit(db, clock, org_id, "balance.low")
    assert await email.send(db, clock, server=server, sender=SENDER) == 5

    assert [len(handler.to(r)) for r in ("ada@acme.example", "bo@acme.example")] == [2, 2]
    assert handler.to("cy@acme.example") == []  # deactivated
    assert handler.to("ned@acme.example") == []  # a member the events do not concern
    [mine] = handler.to("mia@acme.example")
    assert mine["Subject"] == "tokenadmin: Something to know: allowance.threshold."
    assert mine["From"] == SENDER
    assert mine["To"] == "mia@acme.example"
    assert mine["Tokenadmin-Event-Id"]
    text = mine.get_payload(decode=True)
    assert isinstance(text, bytes)
    assert b"Event: allowance.threshold" in text
    assert b"percent: 80" in text

    clock.advance(minutes=1)
    assert await email.send(db, clock, server=server, sender=SENDER) == 0
    assert len(handler.received) == 5
    rows = await db.read(lambda s: _rows(s))
    assert {row.state for row in rows} == {"sent"}


async def _rows(session: Any) -> list[EmailNotification]:
    return list((await session.scalars(select(EmailNotification))).all())


async def test_only_events_after_email_was_configured_are_sent(
    api: Api, db: Database, clock: FakeClock, sink: tuple[Sink, SmtpServer]
) -> None:
    handler, server = sink
    org_id, _ = await _people(api)
    await emit(db, clock, org_id, "period.began")
    clock.advance(seconds=1)
    await email.send(db, clock, server=server, sender=SENDER)
    assert handler.received == []
    await emit(db, clock, org_id, "purchase.expired")
    await email.send(db, clock, server=server, sender=SENDER)
    assert [m["Subject"] for m in handler.to("ada@acme.example")] == [
        "tokenadmin: Something to know: purchase.expired."
    ]


async def test_a_refused_email_is_retried_with_backoff_and_given_up_after_a_day(
    api: Api, db: Database, clock: FakeClock, sink: tuple[Sink, SmtpServer]
) -> None:
    handler, server = sink
    org_id = await funded_org(api)
    await api.user(org_id, "ada@acme.example", role="admin")
    await email.send(db, clock, server=server, sender=SENDER)
    handler.refuse = True
    await emit(db, clock, org_id, "balance.low")
    started = clock.now()
    assert await email.send(db, clock, server=server, sender=SENDER) == 1
    [row] = await db.read(_rows)
    assert (row.state, row.attempts, row.next_attempt_at) == (
        "pending",
        1,
        started + timedelta(seconds=30),
    )
    assert row.last_error is not None
    assert "451" in row.last_error

    clock.advance(seconds=29)
    assert await email.send(db, clock, server=server, sender=SENDER) == 0
    clock.advance(seconds=1)
    assert await email.send(db, clock, server=server, sender=SENDER) == 1
    while True:
        [row] = await db.read(_rows)
        if row.state != "pending":
            break
        assert row.next_attempt_at is not None
        clock.set(row.next_attempt_at)
        await email.send(db, clock, server=server, sender=SENDER)
    assert row.state == "failed"
    assert clock.now() - started == timedelta(days=1)
    assert handler.received == []

    # A working server later gets nothing more of it: it was given up.
    handler.refuse = False
    clock.advance(hours=1)
    assert await email.send(db, clock, server=server, sender=SENDER) == 0


async def test_an_unreachable_smtp_server_is_an_attempt_that_failed(
    api: Api, db: Database, clock: FakeClock
) -> None:
    org_id = await funded_org(api)
    await api.user(org_id, "ada@acme.example", role="admin")
    nowhere = SmtpServer.of(f"smtp://127.0.0.1:{_free_port()}")
    await email.send(db, clock, server=nowhere, sender=SENDER)
    await emit(db, clock, org_id, "balance.low")
    assert await email.send(db, clock, server=nowhere, sender=SENDER) == 1
    [row] = await db.read(_rows)
    assert row.state == "pending"
    assert row.last_error is not None
    assert "ConnectionRefusedError" in row.last_error


def test_email_is_on_only_with_both_smtp_settings_and_a_smtp_url() -> None:
    def jobs(**fields: Any) -> set[str]:
        scheduler = Scheduler(cast(Database, None), FakeClock(START))
        email.register(scheduler, Settings(**fields))
        return set(scheduler.jobs)

    assert jobs() == set()
    assert jobs(smtp_url="smtp://127.0.0.1:1025") == set()
    assert jobs(smtp_url="smtp://127.0.0.1:1025", smtp_from=SENDER) == {"email.send"}
    with pytest.raises(ValidationError, match="smtp_url must be smtp://host"):
        Settings(smtp_url="http://mail.example.com")
    parsed = SmtpServer.of("smtps://me%40acme:p%3Ass@mail.acme.example?starttls=no")
    assert (parsed.host, parsed.port, parsed.tls, parsed.starttls) == (
        "mail.acme.example",
        465,
        True,
        False,
    )
    assert (parsed.user, parsed.password) == ("me@acme", "p:ss")
    assert SmtpServer.of("smtp://mail.acme.example?starttls=true").port == 25
    assert SmtpServer.of("smtp://mail.acme.example?starttls=true").starttls
