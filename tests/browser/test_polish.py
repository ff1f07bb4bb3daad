"""A member asks for tokens and the admin sees it; usage downloads as CSV; the
organization's run-out forecast."""

from __future__ import annotations

import asyncio
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from playwright.sync_api import Page, expect
from sqlalchemy.ext.asyncio import AsyncSession

from tests.browser.conftest import Site, screenshot, sign_in
from tests.browser.test_table import cell
from tokenadmin.act import Act
from tokenadmin.api_key import service as api_key_service
from tokenadmin.database import Database


async def _usage_key(site: Site) -> str:
    db = Database(site.database_url, pool_size=1)

    async def create(session: AsyncSession) -> str:
        act = Act("test", datetime.now(UTC))
        org_id = uuid.UUID(site.org_id)
        _, secret = await api_key_service.create(
            session, act, org_id=org_id, name="platform", scopes=["usage"]
        )
        return secret

    try:
        return await db.write(create)
    finally:
        await db.dispose()


def _use(page: Page, site: Site, key: str, email: str, kind: str, tokens: int) -> None:
    response = page.request.post(
        f"{site.url}/v1/usage",
        data={"user": email, "kind": kind, "tokens": tokens},
        headers={"Authorization": f"Bearer {key}", "Idempotency-Key": uuid.uuid4().hex},
    )
    assert response.ok, response.text()


def _csv_rows(page: Page, site: Site, link_name: str) -> list[str]:
    href = page.get_by_role("link", name=link_name).get_attribute("href")
    assert href is not None
    response = page.request.get(site.url + href)
    assert response.ok
    assert response.headers["content-type"].startswith("text/csv")
    return response.text().splitlines()


def test_a_request_reaches_the_admin_and_usage_downloads_as_csv(page: Page, site: Site) -> None:
    with ThreadPoolExecutor(max_workers=1) as pool:
        key = pool.submit(asyncio.run, _usage_key(site)).result()
    _use(page, site, key, site.member_email, "inference", 12_345)
    _use(page, site, key, site.member_email, "training", 700)

    sign_in(page, site, site.member_email)
    page.get_by_label("Tokens", exact=True).fill("lots")
    page.get_by_role("button", name="Send the request").click()
    expect(page.locator("#request-error")).to_contain_text("not an amount")
    page.get_by_label("Kind").select_option("inference")
    page.get_by_label("Tokens", exact=True).fill("300K")
    page.get_by_label("Reason").fill("a fine-tuning run")
    page.get_by_role("button", name="Send the request").click()
    expect(page.get_by_role("status")).to_contain_text("Your request is sent")
    expect(page.locator("#my-requests")).to_contain_text("300,000 inference tokens")
    expect(page.locator("#allowances [data-kind=inference] [data-role=allowance]")).to_have_text(
        "200,000"
    )

    today = datetime.now(UTC).strftime("%Y-%m-%d")
    days = _csv_rows(page, site, "Download per day (CSV)")
    assert days[0] == "date,inference,training"
    assert f"{today},12345,700" in days
    assert all(row.endswith(",0,0") for row in days[1:] if not row.startswith(today))
    months = _csv_rows(page, site, "per month (CSV)")
    assert months[0] == "date,inference,training"
    assert len(months) == 13  # the header and the last 12 months, this one included
    assert months[-1] == f"{today[:7]},12345,700"

    ben = site.users[site.member_email]
    other = page.request.get(f"{site.url}/orgs/{site.org_id}/users/{ben}/usage-per-day.csv")
    assert other.status == 404, "a member reads no one's CSV but their own"

    page.context.clear_cookies()
    sign_in(page, site, site.admin_email)
    requests = page.locator("#requests")
    request = requests.locator(f"li[data-email='{site.member_email}']")
    expect(request).to_contain_text("300,000")
    expect(request).to_contain_text("inference")
    expect(request).to_contain_text("a fine-tuning run")
    forecast = page.locator("#balance [data-kind=inference] [data-role=forecast]")
    expect(forecast).to_contain_text("At the current pace")
    expect(forecast.locator("[data-role=basis]")).to_contain_text("Based on")
    screenshot(page, "admin-home-requests")

    request.get_by_role("link", name="Ben Member").click()
    assert _csv_rows(page, site, "Download per day (CSV)") == days

    # The request is decided on the home: approved for another amount than asked, once.
    page.goto(f"{site.url}/orgs/{site.org_id}")
    request = page.locator(f"#requests li[data-email='{site.member_email}']")
    expect(request.get_by_label("Tokens to grant")).to_have_value("300,000")
    request.get_by_label("Tokens to grant").fill("250K")
    request.get_by_role("button", name="Approve").click()
    expect(page.get_by_role("status")).to_contain_text("Request approved")
    expect(page.locator("#requests")).to_have_count(0)
    page.goto(f"{site.url}/orgs/{site.org_id}?q=ben")
    expect(cell(page, site, site.member_email, "max_tokens")).to_have_text("450,000")

    page.context.clear_cookies()
    sign_in(page, site, site.member_email)
    mine = page.locator("#my-requests li[data-kind=inference]")
    expect(mine).to_contain_text("approved")
    expect(mine).to_contain_text("250,000 tokens granted")
