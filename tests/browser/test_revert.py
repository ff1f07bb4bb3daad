"""Reverting a save from the journal, in a real browser at 1440×900: the saved changes are
listed, the preview shows each row (and why one can't be reverted), and applying it puts
the allowances back."""

from __future__ import annotations

import re
import uuid

from playwright.sync_api import Page, expect
from sqlalchemy.ext.asyncio import AsyncSession

from tests.browser.conftest import (
    Site,
    deactivate,
    screenshot,
    severe_violations,
    sign_in,
    write,
)
from tokenadmin.models import User


def allowances(site: Site, *emails: str) -> dict[str, tuple[int, int]]:
    async def read(session: AsyncSession) -> dict[str, tuple[int, int]]:
        found = {}
        for email in emails:
            user = await session.get(User, uuid.UUID(site.users[email]))
            assert user is not None
            found[email] = (user.max_tokens, user.max_train_tokens)
        return found

    return write(site, read)


def test_a_save_is_reverted_from_the_journal_after_a_preview(page: Page, site: Site) -> None:
    org = f"{site.url}/orgs/{site.org_id}"
    sign_in(page, site, site.admin_email)
    before = allowances(site, "ben@acme.example", "cy@acme.example", "di@acme.example")
    page.goto(org)
    csrf = page.locator('meta[name="csrf-token"]').get_attribute("content")
    assert csrf is not None
    saved = page.request.post(
        f"{org}/allowances",
        data={
            "changes": [
                {"user": "ben@acme.example", "max_tokens": 400_000},
                {"user": "cy@acme.example", "max_tokens": 300_000, "max_train_tokens": 50_000},
                {"user": "di@acme.example", "max_tokens": 250_000},
            ]
        },
        headers={"X-CSRF-Token": csrf, "Accept": "application/json"},
    )
    assert saved.ok, saved.text()
    deactivate(site, "di@acme.example")

    page.goto(f"{org}/journal")
    newest = page.locator("#saved tbody tr").first
    expect(newest).to_contain_text("ada@acme.example")
    expect(newest.locator("td").nth(2)).to_contain_text("4")
    newest.get_by_role("link", name="Revert…").click()

    expect(page.get_by_role("heading", name="Revert a save")).to_be_visible()
    rows = page.locator("#revert-rows tbody tr")
    expect(rows).to_have_count(4)
    ben = page.locator('#revert-rows tr[data-email="ben@acme.example"]')
    expect(ben.locator('[data-role="now"]')).to_have_text("400,000")
    expect(ben.locator('[data-role="back-to"]')).to_have_text("200,000")
    expect(ben.locator('[data-role="why"]')).to_have_text("Yes")
    di = page.locator('#revert-rows tr[data-email="di@acme.example"]')
    expect(di.locator('[data-role="why"]')).to_contain_text("deactivated")
    expect(page.locator("#revert-kept")).to_contain_text("1 of 4 changes can't be reverted")
    text = page.locator("main").inner_text()
    assert "max_tokens" not in text
    assert "user_deactivated" not in text
    screenshot(page, "revert-preview")
    assert severe_violations(page) == []

    page.get_by_role("button", name=re.compile(r"^Revert 3 changes")).click()
    expect(page).to_have_url(re.compile(r"/journal\?reverted=3&kept=1$"))
    expect(page.locator("#notice")).to_have_text(
        "Reverted 3 changes. 1 could not be reverted and stay as they are."
    )
    assert severe_violations(page) == []
    reverted = page.locator("#saved tbody tr").nth(1)
    expect(reverted.locator('[data-role="revert"]')).to_contain_text("Reverted")
    expect(reverted.locator('[data-role="revert"]')).to_contain_text("by ada@acme.example")
    after = allowances(site, "ben@acme.example", "cy@acme.example")
    assert after == {k: before[k] for k in after}
    first, second = (
        page.locator("#saved tbody tr").nth(i).get_attribute("data-batch") for i in (0, 1)
    )

    # The reverted save can't be reverted again.
    page.goto(f"{org}/batches/{second}/revert")
    expect(page.locator("#revert-problem")).to_contain_text("already reverted by ada@acme.example")

    # The revert is a save too; its preview fits a phone, each change a block of lines.
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"{org}/batches/{first}/revert")
    ben = page.locator('#revert-rows tr[data-email="ben@acme.example"]')
    expect(ben.locator('[data-role="back-to"]')).to_have_text("400,000")
    expect(ben.locator('[data-role="back-to"]')).to_be_in_viewport()
    expect(page.get_by_role("button", name="Revert 3 changes")).to_be_in_viewport()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    screenshot(page, "revert-preview-phone")
