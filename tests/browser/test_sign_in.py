from __future__ import annotations

from playwright.sync_api import Page, expect

from tests.browser.conftest import Site, screenshot, sign_in


def test_an_admin_signs_in_and_sees_the_balance_above_the_user_table(
    page: Page, site: Site
) -> None:
    sign_in(page, site, site.admin_email)
    expect(page).to_have_url(f"{site.url}/orgs/{site.org_id}")
    expect(page.get_by_role("heading", name="Acme Browser Co")).to_be_visible()
    balance = page.locator("#balance [data-kind=inference] [data-role=balance]")
    expect(balance).to_have_text("2,200,000")
    expect(page.locator("#users tbody tr")).to_have_count(4)
    screenshot(page, "admin-home")


def test_a_wrong_password_is_refused_without_saying_which_part_was_wrong(
    page: Page, site: Site
) -> None:
    sign_in(page, site, site.admin_email, "not the password")
    expect(page.get_by_role("alert")).to_have_text("The email or the password is not right.")
    sign_in(page, site, "nobody@acme.example", "not the password")
    expect(page.get_by_role("alert")).to_have_text("The email or the password is not right.")
