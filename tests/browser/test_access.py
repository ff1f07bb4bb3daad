"""Nobody reaches another organization's pages, and members reach no admin page, by URL."""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect

from tests.browser.conftest import Site, screenshot, sign_in

ADMIN_PAGES = ("", "/distribute", "/import", "/journal", "/settings", "/export.csv", "/journal.csv")


def _refused(page: Page, url: str, secret: str) -> None:
    response = page.goto(url)
    assert response is not None
    assert response.status in (403, 404), f"{url} answered {response.status}"
    expect(page.get_by_role("heading", level=1)).to_have_text(re.compile("Not found|Not allowed"))
    assert secret not in page.content()


def test_a_member_sees_their_own_tokens_and_no_admin_page(page: Page, site: Site) -> None:
    sign_in(page, site, site.member_email)
    expect(page).to_have_url(f"{site.url}/me")
    allowances = page.locator("#allowances [data-kind=inference]")
    expect(allowances.locator("[data-role=allowance]")).to_have_text("200,000")
    expect(allowances.locator("[data-role=remaining]")).to_have_text("200,000")
    expect(page.locator("svg#chart-days title").first).to_contain_text("Usage per day")
    screenshot(page, "member-home")

    base = f"{site.url}/orgs/{site.org_id}"
    for path in ADMIN_PAGES:
        _refused(page, base + path, "cy@acme.example")
    _refused(page, f"{base}/users/{site.users['cy@acme.example']}", "cy@acme.example")
    _refused(page, f"{site.url}/orgs/{site.other_org_id}", "zed@other.example")
    _refused(page, f"{site.url}/operator", "Other Org")


def test_an_admin_cannot_reach_another_organizations_pages(page: Page, site: Site) -> None:
    sign_in(page, site, site.admin_email)
    other = f"{site.url}/orgs/{site.other_org_id}"
    for path in ADMIN_PAGES:
        _refused(page, other + path, "zed@other.example")
    _refused(page, f"{site.url}/operator", "Other Org")


def test_a_member_cannot_post_an_admin_write(page: Page, site: Site) -> None:
    sign_in(page, site, site.member_email)
    token = page.locator("meta[name=csrf-token]").get_attribute("content") or ""
    response = page.request.post(
        f"{site.url}/orgs/{site.org_id}/distribute",
        form={"csrf_token": token, "method": "fixed", "amount": "1000", "action": "apply"},
        headers={"accept": "text/html"},
    )
    assert response.status == 404
    page.goto(f"{site.url}/me")
    expect(page.locator("#allowances [data-kind=inference] [data-role=allowance]")).to_have_text(
        "200,000"
    )
