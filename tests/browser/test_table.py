"""The admin home's user table in a real browser: edit in place, preview, save as one batch."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from playwright.sync_api import Browser, Locator, Page, expect
from sqlalchemy.ext.asyncio import AsyncSession

from tests.browser.conftest import Site, screenshot, sign_in
from tokenadmin.act import Act
from tokenadmin.bulk import seed_users
from tokenadmin.database import Database
from tokenadmin.organization import service as organization_service


def stored(site: Site, email: str) -> tuple[int, int]:
    """Max Tokens and Max Train Tokens as the database holds them."""
    path = site.database_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as connection:
        row = connection.execute(
            "SELECT max_tokens, max_train_tokens FROM users WHERE email = ?", (email,)
        ).fetchone()
    return int(row[0]), int(row[1])


def cell(page: Page, site: Site, email: str, field: str) -> Locator:
    return page.locator(f'tr[data-user="{site.users[email]}"] td[data-field="{field}"]')


def edit(page: Page, site: Site, email: str, field: str, typed: str) -> None:
    target = cell(page, site, email, field)
    target.locator("button.cell-value").click()
    target.locator("input").fill(typed)
    target.locator("input").press("Enter")


def save(page: Page) -> None:
    page.get_by_role("button", name="Save changes").click()


def whole_page(page: Page) -> None:
    """A viewport as tall as the page, so the save bar, which sticks to the bottom of the
    window, sits in its place under the table in a full-page screenshot."""
    height = page.evaluate("document.documentElement.scrollHeight")
    page.set_viewport_size(
        {"width": page.viewport_size["width"] if page.viewport_size else 1440, "height": height}
    )


def balance(page: Page, kind: str) -> Locator:
    return page.locator(f"#balance [data-kind={kind}] [data-role=balance]")


def test_edits_of_both_columns_in_two_rows_are_saved_once_and_all_stored(
    page: Page, site: Site
) -> None:
    sign_in(page, site, site.admin_email)
    edit(page, site, "ben@acme.example", "max_tokens", "250K")
    edit(page, site, "ben@acme.example", "max_train_tokens", "20,000")
    edit(page, site, "cy@acme.example", "max_tokens", "1.5M")
    edit(page, site, "cy@acme.example", "max_train_tokens", "15000")
    expect(page.locator("td.changed")).to_have_count(4)
    expect(cell(page, site, "cy@acme.example", "max_tokens")).to_contain_text("1,500,000")
    expect(page.locator("#savebar [data-role=count]")).to_have_text("4 unsaved changes")
    # 2,200,000 − 50,000 − 1,300,000; 460,000 − 10,000 − 5,000.
    expect(page.locator("#balance [data-kind=inference] [data-role=after]")).to_have_text("850,000")
    expect(page.locator("#balance [data-kind=training] [data-role=after]")).to_have_text("445,000")
    whole_page(page)
    screenshot(page, "table-editing")

    save(page)
    expect(page.locator("#savebar [data-role=message]")).to_have_text("Saved 4 changes.")
    expect(page.locator("td.changed")).to_have_count(0)
    expect(balance(page, "inference")).to_have_text("850,000")
    assert stored(site, "ben@acme.example") == (250_000, 20_000)
    assert stored(site, "cy@acme.example") == (1_500_000, 15_000)

    page.reload()
    expect(cell(page, site, "ben@acme.example", "max_tokens")).to_have_text("250,000")
    expect(cell(page, site, "ben@acme.example", "max_train_tokens")).to_have_text("20,000")
    expect(cell(page, site, "cy@acme.example", "max_tokens")).to_have_text("1,500,000")
    expect(cell(page, site, "cy@acme.example", "max_train_tokens")).to_have_text("15,000")
    expect(balance(page, "training")).to_have_text("445,000")


def test_only_the_row_that_causes_a_shortfall_is_refused_with_the_figures_of_the_card(
    page: Page, site: Site
) -> None:
    sign_in(page, site, site.admin_email)
    edit(page, site, "ben@acme.example", "max_tokens", "250K")  # +50,000: harmless
    edit(page, site, "ben@acme.example", "max_train_tokens", "12000")
    edit(page, site, "cy@acme.example", "max_tokens", "16M")  # +15,800,000: the culprit
    after = page.locator("#balance [data-kind=inference] [data-role=pending]")
    expect(after).to_have_class("pending over")
    # The dry run marks the culprit's cell only, in the words of the balance: 2,200,000
    # less Ben's 50,000 is left for Cy, who needs 15,800,000: 13,650,000 over, as the card.
    culprit = cell(page, site, "cy@acme.example", "max_tokens").locator(".note")
    expect(culprit).to_have_text(
        "Would be refused: Only 2,150,000 inference tokens left; Cy Member's Max Tokens of"
        " 16,000,000 needs 15,800,000 more."
    )
    expect(after.locator("[data-role=after]")).to_have_text("13,650,000 over the balance")
    expect(page.locator("#users .note")).to_have_count(1)

    save(page)
    cy_row = page.locator(f'tr[data-user="{site.users["cy@acme.example"]}"]')
    ben_row = page.locator(f'tr[data-user="{site.users["ben@acme.example"]}"]')
    expect(cy_row).to_have_class("active refused")
    expect(ben_row).to_have_class("active")
    expect(culprit).to_have_text(
        "Only 2,150,000 inference tokens left; Cy Member's Max Tokens of 16,000,000 needs"
        " 15,800,000 more."
    )
    expect(page.locator("#users .note")).to_have_count(1)
    expect(after.locator("[data-role=after]")).to_have_text("13,650,000 over the balance")
    left, needed = (
        int(n.replace(",", "")) for n in re.findall(r"[\d,]{5,}", culprit.inner_text())[::2]
    )
    assert needed - left == 13_650_000
    expect(page.locator("#savebar [data-role=message]")).to_contain_text("Nothing was saved")
    expect(page.locator("td.changed")).to_have_count(3)
    whole_page(page)
    screenshot(page, "table-refusal")
    assert stored(site, "ben@acme.example") == (200_000, 10_000)
    assert stored(site, "cy@acme.example") == (200_000, 10_000)

    # Fixing the refused cell clears its note; saving again applies every edit.
    edit(page, site, "cy@acme.example", "max_tokens", "300k")
    expect(page.locator("tr.refused")).to_have_count(0)
    expect(after.locator("[data-role=after]")).to_have_text("2,050,000")
    save(page)
    expect(page.locator("#savebar [data-role=message]")).to_have_text("Saved 3 changes.")
    assert stored(site, "ben@acme.example") == (250_000, 12_000)
    assert stored(site, "cy@acme.example") == (300_000, 10_000)


def test_two_admins_see_each_conflicting_cell_and_other_columns_merge(
    browser: Browser, page: Page, site: Site
) -> None:
    ben, di = "ben@acme.example", "di@acme.example"
    other = browser.new_context(viewport={"width": 1440, "height": 900})
    try:
        second = other.new_page()
        sign_in(page, site, site.admin_email)
        sign_in(second, site, site.admin_email)
        edit(page, site, ben, "max_tokens", "300000")
        save(page)
        expect(page.locator("#savebar [data-role=message]")).to_have_text("Saved 1 change.")

        # The second page changes the same cell: that cell, and only it, shows who changed
        # it, from what to what and when, with its own choice.
        edit(second, site, ben, "max_tokens", "500K")
        edit(second, site, ben, "max_train_tokens", "20000")
        edit(second, site, di, "max_tokens", "210000")
        save(second)
        note = cell(second, site, ben, "max_tokens").locator(".note.conflict")
        expect(note).to_contain_text(
            re.compile(
                r"^Ada Admin changed Max Tokens from 200,000 to 300,000 at \d\d:\d\d UTC;"
                r" yours is 500,000\."
            )
        )
        expect(second.locator("#users .note")).to_have_count(1)
        expect(second.locator(f'tr[data-user="{site.users[ben]}"]')).to_have_class(
            "active conflict"
        )
        expect(cell(second, site, ben, "max_train_tokens")).to_have_class("num editable changed")
        whole_page(second)
        screenshot(second, "table-conflict")
        assert stored(site, di) == (200_000, 10_000)

        second.get_by_role("button", name="Keep mine: Max Tokens for ben@acme.example").click()
        expect(note).to_have_count(0)
        save(second)
        expect(second.locator("#savebar [data-role=message]")).to_have_text("Saved 3 changes.")
        assert stored(site, ben) == (500_000, 20_000)
        assert stored(site, di) == (210_000, 10_000)

        # The first page is stale now. Di's Max Train Tokens was not changed since: it merges
        # silently. Ben's Max Tokens was: taking theirs shows their value, and Ben's Max
        # Train Tokens, untouched here, shows theirs as well.
        edit(page, site, di, "max_train_tokens", "12000")
        edit(page, site, ben, "max_tokens", "400000")
        save(page)
        mine = cell(page, site, ben, "max_tokens").locator(".note.conflict")
        expect(mine).to_contain_text("changed Max Tokens from 300,000 to 500,000")
        expect(page.locator("#users .note")).to_have_count(1)
        expect(cell(page, site, ben, "max_train_tokens")).to_have_text("20,000")
        page.get_by_role("button", name="Take theirs: Max Tokens for ben@acme.example").click()
        expect(cell(page, site, ben, "max_tokens")).to_have_text("500,000")
        save(page)
        expect(page.locator("#savebar [data-role=message]")).to_have_text("Saved 1 change.")
        expect(cell(page, site, di, "max_tokens")).to_have_text("210,000")
        assert stored(site, di) == (210_000, 12_000)
        assert stored(site, ben) == (500_000, 20_000)
    finally:
        other.close()


async def _hundred_thousand_users(site: Site) -> None:
    db = Database(site.database_url, pool_size=1)
    act = Act("seed", datetime.now(UTC))

    async def buy(session: AsyncSession) -> None:
        org = await organization_service.lock_for_change(session, act, uuid.UUID(site.org_id))
        await organization_service.record_purchase(
            session,
            act,
            org,
            inference_amount=20_000_000_000,
            training_amount=0,
            purchased_on=None,
            expires_at=None,
            payer="Finance",
            note="room for 100,000 users",
        )

    try:
        await db.write(buy)
        await seed_users(db, uuid.UUID(site.org_id), 100_000, act=act)
    finally:
        await db.dispose()


def test_search_and_pages_in_an_organization_of_100000_users(page: Page, site: Site) -> None:
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, _hundred_thousand_users(site)).result()

    sign_in(page, site, site.admin_email)
    expect(page.locator("#users-title small")).to_have_text("100,004")
    expect(page.locator(".pager")).to_contain_text("Page 1 of 2,001")
    expect(page.locator("#users tbody tr")).to_have_count(50)
    page.get_by_role("link", name="Next ›").click()
    expect(page.locator(".pager")).to_contain_text("51–100 of 100,004")
    page.get_by_label("Search users").fill("user099999")
    page.get_by_role("button", name="Apply").click()
    expect(page.locator("#users tbody tr")).to_have_count(1)
    expect(page.locator("#users tbody")).to_contain_text("user099999@bulk.example")
    row = page.locator("#users tbody tr").first
    row.locator("td[data-field=max_tokens]").click()
    row.locator("td[data-field=max_tokens] input").fill("300K")
    row.locator("td[data-field=max_tokens] input").press("Enter")
    save(page)
    expect(page.locator("#savebar [data-role=message]")).to_have_text("Saved 1 change.")
    assert stored(site, "user099999@bulk.example") == (300_000, 0)
