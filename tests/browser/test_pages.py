"""The administrator's pages in a real browser: distribute, import, journal, settings,
the user page, and the operator's page."""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import Page, expect

from tests.browser.conftest import Site, screenshot, sign_in


def _balance(page: Page, kind: str = "inference") -> str:
    return page.locator(f"#balance [data-kind={kind}] [data-role=balance]").inner_text()


def test_distribute_previews_an_equal_split_then_applies_it_at_once(page: Page, site: Site) -> None:
    sign_in(page, site, site.admin_email)
    page.goto(f"{site.url}/orgs/{site.org_id}/distribute")
    assert _balance(page) == "2,200,000"
    page.get_by_label("Equal split of the balance").check()
    page.get_by_label("Maximum per user").fill("500,000")
    page.get_by_role("button", name="Preview").click()
    preview = page.locator("#preview")
    expect(preview.locator("[data-role=per-user]")).to_have_text("500,000")
    expect(preview.locator("[data-role=balance-after]")).to_have_text("200,000")
    row = preview.locator("tr[data-email='ben@acme.example']")
    expect(row.locator("[data-role=after]")).to_have_text("700,000")
    assert _balance(page) == "2,200,000", "a preview saves nothing"
    screenshot(page, "distribute-preview")

    page.get_by_role("button", name="Apply to 4 users").click()
    expect(page.get_by_role("status")).to_have_text("Added 500,000 Max Tokens to each of 4 users.")
    assert _balance(page) == "200,000"
    page.goto(f"{site.url}/orgs/{site.org_id}?q=ben")
    expect(
        page.locator("#users tr[data-email='ben@acme.example'] [data-field=max_tokens]")
    ).to_have_text("700,000")


def test_a_distribution_over_the_balance_is_refused_as_a_whole(page: Page, site: Site) -> None:
    sign_in(page, site, site.admin_email)
    page.goto(f"{site.url}/orgs/{site.org_id}/distribute")
    page.get_by_role("radio", name="Fixed amount per user").check()
    page.get_by_role("textbox", name="Fixed amount per user").fill("1M")
    page.get_by_role("button", name="Preview").click()
    expect(page.locator("#refusals")).to_contain_text("over its capacity")
    expect(page.get_by_role("button", name="Apply to 4 users")).to_be_disabled()
    assert _balance(page) == "2,200,000"
