"""The administrator's pages in a real browser: import, journal, settings, the user page,
and the operator's page (distribute has its own, tests/browser/test_distribute.py)."""

from __future__ import annotations

from playwright.sync_api import FilePayload, Page, expect

from tests.browser.conftest import Site, screenshot, sign_in


def _csv(content: str) -> FilePayload:
    return {"name": "users.csv", "mimeType": "text/csv", "buffer": content.encode()}


def _balance(page: Page, kind: str = "inference") -> str:
    return page.locator(f"#balance [data-kind={kind}] [data-role=balance]").inner_text()


def test_an_import_with_a_bad_row_saves_nothing_until_fixed_then_applies(
    page: Page, site: Site
) -> None:
    sign_in(page, site, site.admin_email)
    page.goto(f"{site.url}/orgs/{site.org_id}/import")
    content = (
        "email,name,role,max_tokens,max_train_tokens\n"
        "eve@acme.example,Eve New,member,300000,\n"
        "ben@acme.example,,,lots,20000\n"
    )
    page.get_by_label("CSV file", exact=True).set_input_files(files=_csv(content))
    page.get_by_role("button", name="Preview the import").click()
    errors = page.locator("#row-errors")
    refused = errors.locator("tr[data-line='3']")
    expect(refused).to_contain_text("max_tokens")  # the file's own column, as the admin typed it
    code = refused.get_attribute("data-code")
    assert code
    expect(refused).not_to_contain_text(code)  # words, not the machine code
    expect(page.locator("#new-users tr[data-email='eve@acme.example']")).to_be_visible()
    expect(page.get_by_role("button", name="Apply the import")).to_be_disabled()
    screenshot(page, "import-preview")
    page.goto(f"{site.url}/orgs/{site.org_id}?q=eve")
    expect(page.locator("#users tr[data-email='eve@acme.example']")).to_have_count(0)

    page.go_back()
    page.get_by_label("CSV file", exact=True).set_input_files(
        files=_csv(content.replace("lots", "400K"))
    )
    page.get_by_role("button", name="Preview the import").click()
    expect(page.locator("#row-errors")).to_have_count(0)
    expect(page.locator("[data-role=balance-after-inference]")).to_have_text("1,700,000")
    changes = page.locator("#changes tr[data-email='ben@acme.example']")
    expect(changes.locator("td[data-field]")).to_have_text(["Max Tokens", "Max Train Tokens"])
    page.get_by_role("button", name="Apply the import").click()
    expect(page.get_by_role("status")).to_have_text("Imported: 1 new users, 1 users changed.")
    assert _balance(page) == "1,700,000"
    page.goto(f"{site.url}/orgs/{site.org_id}?q=acme")
    rows = page.locator("#users tbody")
    expect(rows.locator("tr[data-email='eve@acme.example'] [data-field=max_tokens]")).to_have_text(
        "300,000"
    )
    expect(rows.locator("tr[data-email='ben@acme.example'] [data-field=max_tokens]")).to_have_text(
        "400,000"
    )


def test_the_export_downloads_the_user_table(page: Page, site: Site) -> None:
    sign_in(page, site, site.admin_email)
    page.goto(f"{site.url}/orgs/{site.org_id}/import")
    with page.expect_download() as download:
        page.get_by_role("link", name="Download the user table (CSV)").click()
    text = download.value.path().read_text()
    lines = text.splitlines()
    assert lines[0].startswith("email,name,role,status,max_tokens")
    assert any(
        line.startswith("ben@acme.example,Ben Member,member,active,200000") for line in lines
    )
    assert len(lines) == 5


def test_the_journal_filters_by_user_and_exports_the_filtered_entries(
    page: Page, site: Site
) -> None:
    sign_in(page, site, site.admin_email)
    page.goto(f"{site.url}/orgs/{site.org_id}/journal")
    expect(page.locator("#journal [data-action=purchase]")).to_have_count(2)
    page.get_by_label("User (email)").fill("ben@acme.example")
    page.get_by_role("button", name="Filter").click()
    users = page.locator("#journal [data-role=user]")
    expect(users).to_have_count(2)  # created: one entry per kind
    expect(users).to_have_text(["ben@acme.example", "ben@acme.example"])
    screenshot(page, "journal")
    with page.expect_download() as download:
        page.get_by_role("link", name="Download these entries (CSV)").click()
    lines = download.value.path().read_text().splitlines()
    assert lines[0].startswith("id,created_at,actor,action,kind,user")
    assert len(lines) == 3
    assert all(",ben@acme.example," in line for line in lines[1:])


def test_the_user_page_shows_allowances_charts_and_the_journal(page: Page, site: Site) -> None:
    sign_in(page, site, site.admin_email)
    page.goto(f"{site.url}/orgs/{site.org_id}/users/{site.users['cy@acme.example']}")
    expect(page.get_by_role("heading", level=1)).to_contain_text("Cy Member")
    training = page.locator("#allowances [data-kind=training]")
    expect(training.locator("[data-role=allowance]")).to_have_text("10,000")
    expect(
        page.get_by_role("img", name="Usage per month of cy@acme.example, past year")
    ).to_be_visible()
    expect(page.locator("table.journal tbody tr")).to_have_count(2)
    screenshot(page, "user-page")

    # A user who is not there: the page says so in words; the code is for machines only.
    page.goto(f"{site.url}/orgs/{site.org_id}/users/00000000-0000-0000-0000-000000000000")
    expect(page.get_by_role("heading", level=1)).to_have_text("Not found")
    expect(page.locator("main")).to_contain_text("User not found.")
    expect(page.locator("main")).not_to_contain_text("not_found")
    expect(page.locator("[data-code=not_found]")).to_have_count(1)
    # Still signed in: the top bar keeps the way home and Sign out.
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Users").click()
    expect(page).to_have_url(f"{site.url}/orgs/{site.org_id}")
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()


def test_settings_create_an_api_key_shown_once_and_refuse_an_unknown_time_zone(
    page: Page, site: Site
) -> None:
    sign_in(page, site, site.admin_email)
    page.goto(f"{site.url}/orgs/{site.org_id}/settings")
    page.get_by_label("New key name").fill("platform back end")
    page.get_by_role("button", name="Create API key").click()
    secret = page.locator("#new-key [data-role=secret]").inner_text()
    assert secret.startswith("ta_")
    expect(page.locator("#keys tr[data-key='platform back end']")).to_contain_text("usage")
    screenshot(page, "settings")
    page.goto(f"{site.url}/orgs/{site.org_id}/settings")
    expect(page.locator("#new-key")).to_have_count(0)
    assert secret not in page.content()

    page.get_by_label("Time zone").fill("Mars/Olympus")
    page.get_by_role("button", name="Save settings").click()
    expect(page.locator("#policy-error")).to_contain_text("Unknown time zone 'Mars/Olympus'")
    page.get_by_label("Time zone").fill("Europe/Berlin")
    page.get_by_role("button", name="Save settings").click()
    expect(page.get_by_role("status")).to_have_text("The settings are saved.")
    expect(page.get_by_label("Time zone")).to_have_value("Europe/Berlin")


def test_the_operator_creates_an_organization_and_records_a_purchase(
    page: Page, site: Site
) -> None:
    sign_in(page, site, site.operator_email)
    expect(page).to_have_url(f"{site.url}/operator")
    page.get_by_label("Name", exact=True).fill("Newco")
    page.get_by_label("Time zone").fill("Europe/Paris")
    page.get_by_role("button", name="Create organization").click()
    expect(page.get_by_role("status")).to_have_text("Organization Newco created.")
    row = page.locator("#orgs tr[data-org='Newco']")
    expect(row.locator("[data-role=balance-inference]")).to_have_text("0")

    page.get_by_label("Organization", exact=True).select_option(label="Newco")
    page.get_by_label("Inference tokens").fill("5M")
    page.get_by_label("Training tokens").fill("250,000")
    page.get_by_label("Valid through").fill("2099-12-31")
    page.get_by_role("button", name="Record purchase").click()
    expect(page.get_by_role("status")).to_have_text("Purchase recorded for Newco.")
    expect(row.locator("[data-role=balance-inference]")).to_have_text("5,000,000")
    expect(row.locator("[data-role=balance-training]")).to_have_text("250,000")
    screenshot(page, "operator")
    row.get_by_role("link", name="Newco").click()
    expect(page.get_by_role("heading", name="Newco", level=1)).to_be_visible()
