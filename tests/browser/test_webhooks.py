"""The Webhooks page in a real browser: an administrator adds an endpoint (a receiver the test
runs on 127.0.0.1), sees its secret once, sees the server's delivery of an event in the
delivery log with the receiver's answer, and resends it."""

from __future__ import annotations

import asyncio
import re
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, ViewportSize, expect
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from tests.browser.conftest import DESKTOP, PHONE, Site, screenshot, sign_in, write
from tests.browser.test_layout import WIDER_THAN_THE_WINDOW
from tokenadmin.act import Act
from tokenadmin.database import Database
from tokenadmin.events import service as events
from tokenadmin.models import WebhookAttempt

WAIT_SECONDS = 60
"""A bound for a server that never delivers (its job runs every second): a hung run fails."""


class Receiver(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.bodies: list[bytes] = []
        self.arrived = threading.Condition()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hooks"

    def wait_for(self, count: int) -> None:
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.bodies) >= count, WAIT_SECONDS)


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(b"got it")
        with self.server.arrived:
            self.server.bodies.append(body)
            self.server.arrived.notify_all()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _emit(site: Site) -> None:
    async def work(session: AsyncSession) -> bool:
        return await events.emit(
            session,
            Act("seed", datetime.now(UTC)),
            uuid.UUID(site.org_id),
            "balance.low",
            key=uuid.uuid4().hex,
            message="Only 90,000 inference tokens are left unallocated.",
            data={"kind": "inference", "balance": 90_000},
        )

    assert write(site, work)


def _settled(site: Site, attempts: int) -> None:
    """Wait until the server has written the answers of `attempts` POSTs (the receiver has
    them a moment before the server records them)."""

    async def wait() -> None:
        db = Database(site.database_url, pool_size=1)
        try:
            async with asyncio.timeout(WAIT_SECONDS):
                while True:
                    logged = await db.read(
                        lambda s: s.scalar(select(func.count()).select_from(WebhookAttempt))
                    )
                    if (logged or 0) >= attempts:
                        return
                    await asyncio.sleep(0.05)
        finally:
            await db.dispose()

    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, wait()).result()


def test_an_admin_adds_a_webhook_sees_the_secret_once_and_resends_a_delivery(
    page: Page, site: Site, receiver: Receiver
) -> None:
    sign_in(page, site, site.admin_email)
    page.get_by_role("link", name="Webhooks").click()
    expect(page.locator("#webhooks")).to_contain_text("No webhooks yet")
    page.get_by_label("URL").fill("http://hooks.example.com/x")
    page.get_by_role("button", name="Add webhook").click()
    expect(page.locator("#add-error")).to_contain_text("https")

    page.get_by_label("URL").fill(receiver.url)
    page.get_by_label("Description").fill("ops channel")
    page.get_by_role("button", name="Add webhook").click()
    secret = page.locator("#new-secret [data-role=secret]")
    expect(secret).to_have_text(re.compile(r"^whsec_[A-Za-z0-9_-]{43}$"))
    expect(page.locator("#new-secret")).to_contain_text("shown only this once")
    shown = secret.inner_text()
    screenshot(page, "webhooks")

    # Shown once: the page again (and its delivery log) never has it.
    page.get_by_role("link", name="Webhooks").click()
    expect(page.locator("#webhooks")).to_contain_text(receiver.url)
    expect(page.locator("#new-secret")).to_have_count(0)
    assert shown not in page.content()

    _emit(site)
    receiver.wait_for(1)
    _settled(site, 1)
    page.get_by_role("link", name=f"Delivery log of {receiver.url}").click()
    row = page.locator("#deliveries tbody tr").first
    expect(row).to_have_attribute("data-state", "delivered")
    expect(row).to_contain_text("balance.low")
    expect(row.locator("[data-role=attempt]")).to_have_count(1)
    expect(row.locator("[data-role=attempt]")).to_contain_text("200")
    expect(row.locator("[data-role=attempt]")).to_contain_text("got it")
    assert shown not in page.content()
    screenshot(page, "webhook-deliveries")

    row.get_by_role("button", name="Resend").click()
    expect(page.get_by_role("status")).to_contain_text("due again")
    receiver.wait_for(2)
    _settled(site, 2)
    assert receiver.bodies[0] == receiver.bodies[1]  # the same event, the same body
    page.reload()
    row = page.locator("#deliveries tbody tr").first
    expect(row).to_have_attribute("data-state", "delivered")
    expect(row.locator("[data-role=attempt]")).to_have_count(2)
    expect(row.locator("[data-role=attempt]").nth(1)).to_contain_text("(resend 1)")


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["1440x900", "390x844"])
def test_the_webhook_pages_fit_the_window(
    browser: Browser, site: Site, receiver: Receiver, viewport: ViewportSize
) -> None:
    context = browser.new_context(viewport=viewport)
    context.set_default_timeout(10_000)
    page = context.new_page()
    try:
        sign_in(page, site, site.admin_email)
        page.goto(f"{site.url}/orgs/{site.org_id}/webhooks")
        long_url = receiver.url + "/" + "a-rather-long-path-segment" * 4
        page.get_by_label("URL").fill(long_url)
        page.get_by_label("Description").fill("the operations channel of a long name")
        page.get_by_role("button", name="Add webhook").click()
        expect(page.locator("#new-secret")).to_be_visible()
        _emit(site)
        receiver.wait_for(1)
        _settled(site, 1)
        pages = {
            "webhooks": f"/orgs/{site.org_id}/webhooks",
            "delivery log": page.locator("#webhooks a").first.get_attribute("href") or "",
        }
        for name, path in pages.items():
            page.goto(site.url + path)
            measured = page.evaluate(WIDER_THAN_THE_WINDOW)
            assert measured["scroll"] <= measured["width"], (name, measured)
        expect(page.locator("#deliveries tbody tr").first).to_have_attribute(
            "data-state", "delivered"
        )
    finally:
        context.close()
