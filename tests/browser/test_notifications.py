"""Notifications in the browser: an administrator reads the organization's events (a
threshold passed, a token request made) newest first and filters them by kind; a member
reads their own on /me, and nobody else's; the alert thresholds are set on Settings."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from playwright.sync_api import Page, expect
from sqlalchemy.ext.asyncio import AsyncSession

from tests.browser.conftest import Site, screenshot, sign_in, write
from tokenadmin.act import Act
from tokenadmin.tokens import Kind
from tokenadmin.usage.service import Caller, Operation, meter


def _use(site: Site, email: str, tokens: int) -> None:
    async def work(session: AsyncSession) -> None:
        act = Act("test", datetime.now(UTC))
        caller = Caller(actor="test", org_id=uuid.UUID(site.org_id), idempotency_scope="test")
        operation = Operation("usage", user=email, kind=Kind.inference, tokens=tokens)
        (outcome,) = await meter(session, act, caller, [operation], default_ttl=60)
        assert not isinstance(outcome, Exception), outcome

    write(site, work)


def test_an_admin_reads_notifications_and_a_member_reads_their_own(page: Page, site: Site) -> None:
    _use(site, site.member_email, 170_000)  # Ben: 85 % of 200,000
    _use(site, "cy@acme.example", 200_000)  # Cy: 100 %

    sign_in(page, site, site.member_email)
    page.get_by_label("Kind").select_option("inference")
    page.get_by_label("Tokens", exact=True).fill("100K")
    page.get_by_label("Reason").fill("an evaluation run")
    page.get_by_role("button", name="Send the request").click()
    expect(page.get_by_role("status")).to_contain_text("Your request is sent")
    mine = page.locator("#my-events li")
    expect(mine).to_have_count(2)
    expect(mine.nth(0)).to_contain_text("Ben Member asked for 100,000 more Max Tokens")
    expect(mine.nth(1)).to_have_attribute("data-kind", "allowance.threshold")
    expect(mine.nth(1)).to_contain_text(
        "Ben Member has used 80% of their Max Tokens (170,000 of 200,000)."
    )
    expect(page.locator("#my-notifications")).not_to_contain_text("Cy Member")
    screenshot(page, "member-notifications")

    page.context.clear_cookies()
    sign_in(page, site, site.admin_email)
    page.get_by_role("link", name="Notifications").click()
    expect(page.get_by_role("heading", name="Notifications")).to_be_visible()
    rows = page.locator("#notifications tbody tr")
    expect(rows).to_have_count(4)  # Cy's 80 % and 100 %, Ben's 80 % and his request
    expect(rows.nth(0)).to_contain_text("Token request made")
    page.get_by_label("Kind").select_option("allowance.threshold")
    page.get_by_role("button", name="Filter").click()
    expect(rows).to_have_count(3)
    expect(page.locator("#notifications")).to_contain_text(
        "Ben Member has used 80% of their Max Tokens (170,000 of 200,000)."
    )
    expect(page.locator("#notifications")).to_contain_text(
        "Cy Member has used 100% of their Max Tokens (200,000 of 200,000)."
    )
    screenshot(page, "notifications")

    page.goto(f"{site.url}/orgs/{site.org_id}/settings")
    alerts = page.locator("#alerts")
    expect(alerts.get_by_label("Tell when a person has used these percents")).to_have_value(
        "80, 100"
    )
    alerts.get_by_label("Tell when a person has used these percents").fill("50, 90, 90")
    page.get_by_role("button", name="Save settings").click()
    expect(page.locator("#policy-error")).to_contain_text("alert thresholds")
    alerts.get_by_label("Tell when a person has used these percents").fill("90, 50")
    alerts.get_by_label("Tell when a kind's balance falls below").fill("20")
    page.get_by_role("button", name="Save settings").click()
    expect(page.get_by_role("status")).to_contain_text("The settings are saved.")
    expect(alerts.get_by_label("Tell when a person has used these percents")).to_have_value(
        "50, 90"
    )
    expect(alerts.get_by_label("Tell when a kind's balance falls below")).to_have_value("20")
