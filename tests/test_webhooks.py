"""Signed webhooks: endpoints made through the API (the secret answered once), events POSTed
by the `webhooks.deliver` job to a real HTTP receiver on 127.0.0.1 and verified with the
snippet of docs/webhooks.md, retries with backoff for a day under an injected clock, every
attempt logged, resends, refused URLs, and who may manage them."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import textwrap
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from tests.cli.conftest import Tokenadmin
from tests.client_support import async_client, funded
from tests.conftest import START
from tests.helpers import Api, funded_org
from tokenadmin.act import Act
from tokenadmin.client import Conflict, InvalidRequest
from tokenadmin.clock import FakeClock
from tokenadmin.database import Database
from tokenadmin.events import service as events
from tokenadmin.models import Event, WebhookAttempt, WebhookDelivery
from tokenadmin.webhooks import delivery

ROOT = Path(__file__).parent.parent


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """An HTTP/1.1 server on a free port of 127.0.0.1 that records each request and
    answers `status`."""

    status: int = 200
    requests: list[Received] = field(default_factory=list)
    port: int = 0
    server: asyncio.Server | None = None
    meanwhile: Callable[[], Awaitable[object]] | None = None
    """Run before each answer: what happens while a POST waits for its answer."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/tokenadmin"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                request_line, *lines = head.strip().split("\r\n")
                headers = {}
                for line in lines:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.requests.append(Received(request_line.split(" ")[1], headers, body))
                if self.meanwhile is not None:
                    await self.meanwhile()
                answer = b"thanks" if self.status < 300 else b"x" * 5000
                writer.write(
                    f"HTTP/1.1 {self.status} Whatever\r\nContent-Type: text/plain\r\n"
                    f"Content-Length: {len(answer)}\r\n\r\n".encode()
                    + answer
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    server = Receiver()
    await server.start()
    yield server
    await server.stop()


def documented_verify(
    path: str = "docs/webhooks.md", after: str = "### Verifying"
) -> Callable[..., bool]:
    """The `verify` of a document's Python snippet (the first after `after`), as a reader
    copies it: docs/webhooks.md's, or the README's."""
    text = (ROOT / path).read_text()
    section = text.split(after, 1)[1]
    snippet = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert snippet is not None
    scope: dict[str, Any] = {}
    exec(textwrap.dedent(snippet.group(1)), scope)
    verify: Callable[..., bool] = scope["verify"]
    return verify


async def admin_api(api: Api, org_id: str) -> Api:
    return api.as_key(await api.key(org_id, "admin"))


def hooks(org_id: str) -> str:
    return f"/v1/organizations/{org_id}/webhooks"


async def emit(
    db: Database,
    clock: FakeClock,
    org_id: str,
    kind: str = "balance.low",
    *,
    user_id: str | None = None,
    key: str | None = None,
) -> None:
    async def work(session: Any) -> bool:
        return await events.emit(
            session,
            Act("test", clock.now()),
            uuid.UUID(org_id),
            kind,
            key=key or uuid.uuid4().hex,
            message="Only 90,000 inference tokens are left unallocated.",
            data={"kind": "inference", "balance": 90_000},
            user_id=None if user_id is None else uuid.UUID(user_id),
        )

    assert await db.write(work)


async def deliveries(admin: Api, org_id: str, hook_id: str) -> list[dict[str, Any]]:
    page = await admin.get(f"{hooks(org_id)}/{hook_id}/deliveries")
    found: list[dict[str, Any]] = page["deliveries"]
    assert page["total"] == len(found)
    return found


async def test_a_signed_event_reaches_the_receiver_and_verifies_with_the_documented_code(
    api: Api, db: Database, clock: FakeClock, receiver: Receiver
) -> None:
    org_id = await funded_org(api)
    admin = await admin_api(api, org_id)
    created = await admin.post(
        hooks(org_id), {"url": receiver.url, "description": "ops"}, expect=201
    )
    secret = created["secret"]
    assert re.fullmatch(r"whsec_[A-Za-z0-9_-]{43}", secret)
    assert (created["kinds"], created["enabled"], created["description"]) == (None, True, "ops")

    # Shown once: neither the list nor the endpoint itself says it again.
    listed = await admin.get(hooks(org_id))
    assert [hook["id"] for hook in listed] == [created["id"]]
    got = await admin.get(f"{hooks(org_id)}/{created['id']}")
    assert "secret" not in listed[0]
    assert "secret" not in got
    assert secret not in json.dumps([listed, got])

    await emit(db, clock, org_id)
    assert await delivery.deliver(db, clock) == 1
    [received] = receiver.requests
    assert received.path == "/hooks/tokenadmin"
    body = json.loads(received.body)
    assert body["type"] == "balance.low"
    assert body["organization_id"] == org_id
    assert (body["user_id"], body["data"]) == (None, {"kind": "inference", "balance": 90_000})
    assert body["message"] == "Only 90,000 inference tokens are left unallocated."
    assert body["created_at"] == "2026-03-15T12:00:00Z"
    assert received.headers["content-type"] == "application/json"
    assert received.headers["tokenadmin-event-id"] == body["id"]
    timestamp = int(START.timestamp())
    assert received.headers["tokenadmin-timestamp"] == str(timestamp)
    signed = received.headers["tokenadmin-signature"]
    assert signed.startswith(f"t={timestamp},v1=")

    for verify in (documented_verify(), documented_verify("README.md", "**Signed webhooks**")):
        assert verify(secret, received.body, signed, now=timestamp + 10)
        assert not verify(secret, received.body + b" ", signed, now=timestamp)
        assert not verify("whsec_another", received.body, signed, now=timestamp)
        assert not verify(secret, received.body, signed, now=timestamp + 301)  # replayed later

    [sent] = await deliveries(admin, org_id, created["id"])
    assert (sent["state"], sent["attempts"], sent["last_status_code"]) == ("delivered", 1, 200)
    assert sent["event_kind"] == "balance.low"
    assert sent["event_id"] == body["id"]
    [attempt] = sent["attempt_log"]
    assert (attempt["status_code"], attempt["response_excerpt"], attempt["error"]) == (
        200,
        "thanks",
        None,
    )
    # Delivered once: later runs send nothing more, and make no client to send it with
    # (its TLS context costs tens of milliseconds, each run in each process).
    clock.advance(minutes=5)
    with mock.patch.object(httpx, "AsyncClient", side_effect=AssertionError("a client")):
        assert await delivery.deliver(db, clock) == 0
    assert len(receiver.requests) == 1


async def test_a_failing_receiver_is_retried_with_backoff_for_a_day_then_given_up(
    api: Api, db: Database, clock: FakeClock, receiver: Receiver
) -> None:
    receiver.status = 500
    org_id = await funded_org(api)
    admin = await admin_api(api, org_id)
    hook = await admin.post(hooks(org_id), {"url": receiver.url}, expect=201)
    await emit(db, clock, org_id)

    attempted_at = []
    while True:
        if await delivery.deliver(db, clock):
            attempted_at.append(clock.now())
        [state] = await deliveries(admin, org_id, hook["id"])
        if state["state"] != "pending":
            break
        due = state["next_attempt_at"]
        # One second before it is due, nothing is sent.
        clock.set(_moment(due) - timedelta(seconds=1))
        assert await delivery.deliver(db, clock) == 0
        clock.set(_moment(due))

    waits = [(b - a).total_seconds() for a, b in itertools.pairwise(attempted_at)]
    assert waits[:8] == [30, 60, 120, 240, 480, 960, 1920, 3600]
    assert set(waits[7:-1]) == {3600}
    assert attempted_at[-1] - attempted_at[0] == timedelta(days=1)  # the last, at the day's end
    assert state["state"] == "failed"
    assert state["attempts"] == len(attempted_at) == len(receiver.requests)
    log = state["attempt_log"]
    assert len(log) == len(attempted_at)
    assert {a["status_code"] for a in log} == {500}
    assert all(len(a["response_excerpt"]) == 1024 for a in log)  # the first kilobyte
    # Every attempt carries the same event id, for the receiver to deduplicate.
    assert len({r.headers["tokenadmin-event-id"] for r in receiver.requests}) == 1

    # A resend is a new sequence of attempts, due at once.
    receiver.status = 204
    resent = await admin.post(f"/v1/webhook-deliveries/{state['id']}/resend", expect=200)
    assert (resent["state"], resent["sequence"], resent["attempts"]) == ("pending", 2, 0)
    assert await delivery.deliver(db, clock) == 1
    [again] = await deliveries(admin, org_id, hook["id"])
    assert (again["state"], again["sequence"], again["attempts"]) == ("delivered", 2, 1)
    assert [a["sequence"] for a in again["attempt_log"]][-2:] == [1, 2]
    assert again["attempt_log"][-1]["status_code"] == 204


def _moment(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def test_a_receiver_that_cannot_be_reached_is_logged_with_the_error(
    api: Api, db: Database, clock: FakeClock, receiver: Receiver
) -> None:
    org_id = await funded_org(api)
    admin = await admin_api(api, org_id)
    url = receiver.url
    await receiver.stop()  # nothing listens on its port any more
    hook = await admin.post(hooks(org_id), {"url": url}, expect=201)
    await emit(db, clock, org_id)
    assert await delivery.deliver(db, clock) == 1
    [state] = await deliveries(admin, org_id, hook["id"])
    assert (state["state"], state["last_status_code"]) == ("pending", None)
    [attempt] = state["attempt_log"]
    assert attempt["status_code"] is None
    assert "ConnectError" in attempt["error"]
    await receiver.start()  # for the fixture's stop


async def test_only_events_since_the_endpoint_of_its_kinds_and_organization_are_sent(
    api: Api, db: Database, clock: FakeClock, receiver: Receiver
) -> None:
    org_id = await funded_org(api)
    other_org = await funded_org(api)
    admin = await admin_api(api, org_id)
    await emit(db, clock, org_id, "balance.low")  # before the endpoint: never sent
    clock.advance(seconds=1)
    kinds = ["token_request.made", "purchase.expired", "purchase.expired"]
    hook = await admin.post(hooks(org_id), {"url": receiver.url, "kinds": kinds}, expect=201)
    assert hook["kinds"] == ["token_request.made", "purchase.expired"]
    await emit(db, clock, org_id, "balance.low")  # not its kind
    await emit(db, clock, org_id, "purchase.expired")
    await emit(db, clock, other_org, "purchase.expired")  # another organization's
    await delivery.deliver(db, clock)
    assert [json.loads(r.body)["type"] for r in receiver.requests] == ["purchase.expired"]
    assert json.loads(receiver.requests[0].body)["organization_id"] == org_id

    # Disabled, it is sent nothing; enabled again, the events of its time off are skipped.
    patched = await admin.patch(f"{hooks(org_id)}/{hook['id']}", {"enabled": False}, expect=200)
    assert patched["enabled"] is False
    await emit(db, clock, org_id, "token_request.made")
    await delivery.deliver(db, clock)
    clock.advance(seconds=1)
    await admin.patch(f"{hooks(org_id)}/{hook['id']}", {"enabled": True, "kinds": []}, expect=200)
    await emit(db, clock, org_id, "period.began")
    await delivery.deliver(db, clock)
    types = [json.loads(r.body)["type"] for r in receiver.requests]
    assert types == ["purchase.expired", "period.began"]


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("ftp://hooks.example.com/x", "http(s) URL"),
        ("hooks.example.com/x", "http(s) URL"),
        ("http://hooks.example.com/x", "https"),
        ("http://10.0.0.8/x", "https"),
        ("https://user:secret@hooks.example.com/x", "user name and password"),
        ("https://hooks.example.com/x#part", "fragment"),
        ("https://hooks.example.com:99999/x", "not a URL"),
        ("https:///x", "with a host"),
    ],
)
async def test_bad_urls_are_refused_and_nothing_is_made(
    api: Api, db: Database, url: str, says: str
) -> None:
    org_id = await funded_org(api)
    admin = await admin_api(api, org_id)
    refused = await admin.post(hooks(org_id), {"url": url}, expect=422)
    assert refused["error"]["code"] == "invalid_webhook_url"
    assert says in refused["error"]["message"]
    assert await admin.get(hooks(org_id)) == []


async def test_loopback_http_urls_are_allowed_and_unknown_kinds_refused(api: Api) -> None:
    org_id = await funded_org(api)
    admin = await admin_api(api, org_id)
    for url in ("http://localhost:9000/h", "http://[::1]:9000/h", "https://hooks.example.com"):
        await admin.post(hooks(org_id), {"url": url}, expect=201)
    refused = await admin.post(
        hooks(org_id), {"url": "https://hooks.example.com", "kinds": ["balance.lower"]}, expect=422
    )
    assert refused["error"]["code"] == "unknown_event_kind"
    assert refused["error"]["details"]["kind"] == "balance.lower"
    assert len(await admin.get(hooks(org_id))) == 3


async def test_rotating_the_secret_answers_a_new_one_once_and_signs_with_it(
    api: Api, db: Database, clock: FakeClock, receiver: Receiver
) -> None:
    org_id = await funded_org(api)
    admin = await admin_api(api, org_id)
    hook = await admin.post(hooks(org_id), {"url": receiver.url}, expect=201)
    rotated = await admin.post(f"{hooks(org_id)}/{hook['id']}/rotate-secret", expect=200)
    assert rotated["secret"] != hook["secret"]
    assert rotated["id"] == hook["id"]
    await emit(db, clock, org_id)
    await delivery.deliver(db, clock)
    [received] = receiver.requests
    verify = documented_verify()
    now = int(START.timestamp())
    signed = received.headers["tokenadmin-signature"]
    assert verify(rotated["secret"], received.body, signed, now=now)
    assert not verify(hook["secret"], received.body, signed, now=now)


async def test_a_delivery_still_being_tried_is_not_resent_and_removal_takes_its_log(
    api: Api, db: Database, clock: FakeClock, receiver: Receiver
) -> None:
    receiver.status = 503
    org_id = await funded_org(api)
    admin = await admin_api(api, org_id)
    hook = await admin.post(hooks(org_id), {"url": receiver.url}, expect=201)
    await emit(db, clock, org_id)
    await delivery.deliver(db, clock)
    [state] = await deliveries(admin, org_id, hook["id"])
    refused = await admin.post(f"/v1/webhook-deliveries/{state['id']}/resend", expect=409)
    assert refused["error"]["code"] == "delivery_pending"
    missing = await admin.post(f"/v1/webhook-deliveries/{uuid.uuid4()}/resend", expect=404)
    assert missing["error"]["code"] == "delivery_not_found"

    removed = await admin.call("DELETE", f"{hooks(org_id)}/{hook['id']}", expect=200)
    assert removed.json()["id"] == hook["id"]
    gone = await admin.get(f"{hooks(org_id)}/{hook['id']}", expect=404)
    assert gone["error"]["code"] == "webhook_not_found"
    clock.advance(minutes=1)
    assert await delivery.deliver(db, clock) == 0  # its pending delivery went with it


async def test_an_endpoint_removed_while_its_post_waits_for_the_answer_logs_nothing(
    api: Api, db: Database, clock: FakeClock, receiver: Receiver
) -> None:
    org_id = await funded_org(api)
    admin = await admin_api(api, org_id)
    hook = await admin.post(hooks(org_id), {"url": receiver.url}, expect=201)
    await emit(db, clock, org_id)

    async def remove() -> None:
        await admin.call("DELETE", f"{hooks(org_id)}/{hook['id']}", expect=200)

    receiver.meanwhile = remove
    assert await delivery.deliver(db, clock) == 1
    assert len(receiver.requests) == 1
    count = await db.read(lambda s: s.scalar(select(func.count()).select_from(WebhookAttempt)))
    assert count == 0


async def test_only_the_organizations_administrators_and_operators_manage_its_webhooks(
    api: Api,
) -> None:
    org_id = await funded_org(api)
    other_org = await funded_org(api)
    body = {"url": "https://hooks.example.com/t"}
    made = await api.post(hooks(org_id), body, expect=201)  # an operator
    for scope in ("read", "usage"):
        keyed = api.as_key(await api.key(org_id, scope))
        assert (await keyed.get(hooks(org_id), expect=403))["error"]["code"] == "forbidden"
        await keyed.post(hooks(org_id), body, expect=403)
    stranger = await admin_api(api, other_org)
    await stranger.get(hooks(org_id), expect=404)
    await stranger.get(f"{hooks(org_id)}/{made['id']}", expect=404)
    # Another organization's endpoint, named under one's own: not found either.
    await stranger.get(f"{hooks(other_org)}/{made['id']}", expect=404)
    await stranger.patch(f"{hooks(other_org)}/{made['id']}", {"enabled": False}, expect=404)
    await stranger.post(f"{hooks(other_org)}/{made['id']}/rotate-secret", expect=404)
    await stranger.call("DELETE", f"{hooks(other_org)}/{made['id']}", expect=404)
    assert (await api.get(f"{hooks(org_id)}/{made['id']}"))["enabled"] is True


async def delivered_delivery(db: Database, clock: FakeClock, org_id: str, webhook_id: str) -> str:
    """A delivered delivery of a new event to the webhook (as if the job had sent it), for
    the tests that resend one without a receiver; its id."""
    await emit(db, clock, org_id)

    async def insert(session: Any) -> str:
        event = (
            await session.scalars(
                select(Event).where(Event.org_id == uuid.UUID(org_id)).order_by(Event.id.desc())
            )
        ).first()
        row = WebhookDelivery(
            endpoint_id=uuid.UUID(webhook_id),
            org_id=uuid.UUID(org_id),
            event_id=event.id,
            state="delivered",
            sequence=1,
            attempts=1,
            first_attempt_at=clock.now(),
            last_status_code=200,
            created_at=clock.now(),
            finished_at=clock.now(),
        )
        session.add(row)
        await session.flush()
        return str(row.id)

    made: str = await db.write(insert)
    return made


async def test_the_client_manages_webhooks_and_resends_a_delivery(
    app: FastAPI, operator_key: str, db: Database, clock: FakeClock, receiver: Receiver
) -> None:
    async with async_client(app, operator_key) as tokens:
        org = await funded(tokens)
        made = await tokens.create_webhook(org.id, receiver.url, kinds=["balance.low"])
        assert made.secret.startswith("whsec_")
        assert [h.id for h in await tokens.list_webhooks(org.id)] == [made.id]
        changed = await tokens.update_webhook(org.id, made.id, description="ops", kinds=[])
        assert (changed.description, changed.kinds) == ("ops", None)
        assert (await tokens.get_webhook(org.id, made.id)).description == "ops"
        rotated = await tokens.rotate_webhook_secret(org.id, made.id)
        assert rotated.secret != made.secret

        await emit(db, clock, str(org.id))
        await delivery.deliver(db, clock)
        page = await tokens.list_webhook_deliveries(org.id, made.id, state="delivered")
        [sent] = page.deliveries
        assert sent.attempt_log[0].status_code == 200
        again = await tokens.resend_webhook_delivery(sent.id)
        assert (again.state, again.sequence) == ("pending", 2)
        with pytest.raises(Conflict) as refused:
            await tokens.resend_webhook_delivery(sent.id)
        assert refused.value.code == "delivery_pending"
        with pytest.raises(InvalidRequest) as bad:
            await tokens.create_webhook(org.id, "http://hooks.example.com/")
        assert bad.value.code == "invalid_webhook_url"

        removed = await tokens.delete_webhook(org.id, made.id)
        assert removed.id == made.id
        assert await tokens.list_webhooks(org.id) == []


# --- the command line ---------------------------------------------------------------------


def test_the_command_line_adds_lists_resends_and_removes_webhooks(
    database_url: str, db: Database
) -> None:
    tokenadmin = Tokenadmin(database_url)
    org = tokenadmin.org()
    added = tokenadmin(
        "webhooks", "add", "--org", "Acme", "--url", "https://hooks.example.com/t",
        "--kind", "balance.low", "--kind", "period.began", "--description", "ops",
    )  # fmt: skip
    secret = re.search(r"whsec_[A-Za-z0-9_-]{43}", added.stdout)
    assert secret is not None
    assert "shown only this once" in added.stdout
    [hook] = tokenadmin.json("webhooks", "list", "--org", org)
    assert (hook["kinds"], hook["description"], hook["enabled"]) == (
        ["balance.low", "period.began"],
        "ops",
        True,
    )
    listed = tokenadmin("webhooks", "list", "--org", "Acme")
    assert "https://hooks.example.com/t" in listed.stdout
    assert secret.group(0) not in listed.stdout

    rotated = tokenadmin.json("webhooks", "rotate-secret", hook["id"], "--org", org)
    assert rotated["secret"] != secret.group(0)

    clock = FakeClock(datetime.now(UTC))
    delivered = asyncio.run(_delivered(database_url, clock, org, hook["id"]))
    page = tokenadmin.json("webhooks", "deliveries", hook["id"], "--org", org)
    assert [d["id"] for d in page["deliveries"]] == [delivered]
    shown = tokenadmin("webhooks", "deliveries", hook["id"], "--org", org)
    assert "balance.low" in shown.stdout
    resent = tokenadmin.json("webhooks", "resend", delivered, "--org", org)
    assert (resent["state"], resent["sequence"]) == ("pending", 2)
    again = tokenadmin("webhooks", "resend", delivered, "--org", org, expect=2)
    assert "delivery_pending" in again.stderr

    bad = tokenadmin(
        "webhooks", "add", "--org", org, "--url", "http://hooks.example.com/", expect=2
    )
    assert "invalid_webhook_url" in bad.stderr
    unknown = tokenadmin(
        "webhooks", "add", "--org", org, "--url", "https://h.example.com", "--kind", "nope",
        expect=2,
    )  # fmt: skip
    assert "unknown_event_kind" in unknown.stderr
    assert (
        "not a webhook id" in tokenadmin("webhooks", "remove", "x", "--org", org, expect=2).stderr
    )

    removed = tokenadmin("webhooks", "remove", hook["id"], "--org", org)
    assert "Removed webhook" in removed.stdout
    assert tokenadmin.json("webhooks", "list", "--org", org) == []


async def _delivered(database_url: str, clock: FakeClock, org_id: str, webhook_id: str) -> str:
    database = Database(database_url, pool_size=1)
    try:
        return await delivered_delivery(database, clock, org_id, webhook_id)
    finally:
        await database.dispose()
