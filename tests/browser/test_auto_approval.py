"""Auto-approval in the browser: an administrator turns the rule on in Settings, and a
member's small request on /me is approved at once, in words, with the allowance raised."""

from __future__ import annotations

from playwright.sync_api import Page, expect

from tests.browser.conftest import Site, screenshot, sign_in


def test_an_admin_enables_auto_approval_and_a_small_request_is_approved_at_once(
    page: Page, site: Site
) -> None:
    sign_in(page, site, site.admin_email)
    page.goto(f"{site.url}/orgs/{site.org_id}/settings")
    rule = page.locator("#auto-approval")
    expect(rule.get_by_label("Approve requests within these limits at once")).not_to_be_checked()
    rule.get_by_label("Largest request approved at once").fill("lots")
    page.get_by_role("button", name="Save settings").click()
    expect(page.locator("#policy-error")).to_contain_text("Largest request approved at once")

    rule.get_by_label("Approve requests within these limits at once").check()
    rule.get_by_label("Largest request approved at once").fill("250K")
    rule.get_by_label("Requests approved at once per person and period").fill("1")
    rule.get_by_label("Only while at most this share").fill("80")
    page.get_by_role("button", name="Save settings").click()
    expect(page.get_by_role("status")).to_contain_text("The settings are saved.")
    expect(rule.get_by_label("Largest request approved at once")).to_have_value("250,000")
    screenshot(page, "settings-auto-approval")

    page.context.clear_cookies()
    sign_in(page, site, site.member_email)
    expect(page.locator("#auto-approval-note")).to_contain_text(
        "up to 250,000 tokens is approved at once (up to 1 a month"
    )
    page.get_by_label("Kind").select_option("inference")
    page.get_by_label("Tokens", exact=True).fill("100K")
    page.get_by_label("Reason").fill("an evaluation run")
    page.get_by_role("button", name="Send the request").click()

    expect(page.get_by_role("status")).to_contain_text("Your request is approved")
    approved = page.locator("#my-requests li[data-state=approved]")
    expect(approved).to_contain_text("100,000 inference tokens")
    expect(approved.locator(".state")).to_have_text("approved")
    expect(approved).to_contain_text("at once by the auto-approval rule")
    expect(page.locator("#allowances [data-kind=inference] [data-role=allowance]")).to_have_text(
        "300,000"
    )
    screenshot(page, "member-request-approved-at-once")
