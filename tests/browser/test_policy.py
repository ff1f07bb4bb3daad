"""The allocation policy page in a real browser: an administrator picks a preset, sees the
rows it would move before saving, saves, runs it, and reads the moves in its log."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from playwright.sync_api import Browser, Page, ViewportSize, expect
from sqlalchemy.ext.asyncio import AsyncSession

from tests.browser.conftest import (
    DESKTOP,
    PHONE,
    Site,
    screenshot,
    severe_violations,
    sign_in,
    write,
)
from tokenadmin.act import Act
from tokenadmin.tokens import Kind
from tokenadmin.usage import service as usage_service


def _use(site: Site, email: str, tokens: int) -> None:
    async def work(session: AsyncSession) -> None:
        act = Act("test", datetime.now(UTC))
        caller = usage_service.Caller("test", uuid.UUID(site.org_id), "test")
        operation = usage_service.Operation("usage", user=email, kind=Kind.inference, tokens=tokens)
        outcomes = await usage_service.meter(session, act, caller, [operation], default_ttl=60)
        assert all(isinstance(o, usage_service.Used) for o in outcomes), outcomes

    write(site, work)


def test_an_admin_previews_a_preset_before_saving_then_runs_it_and_reads_the_log(
    page: Page, site: Site
) -> None:
    _use(site, "ben@acme.example", 180_000)  # 90 % of the minimum 200,000
    sign_in(page, site, site.admin_email)
    page.goto(f"{site.url}/orgs/{site.org_id}")
    page.get_by_role("link", name="Policy", exact=True).click()
    expect(page.locator("h1")).to_contain_text("Policy")

    inference = page.get_by_role("group", name="Max Tokens · inference tokens")
    inference.get_by_role("checkbox", name="The policy runs for Max Tokens").check()
    inference.get_by_role("radio", name="Conservative").check()
    page.get_by_role("button", name="Preview").click()

    preview = page.locator("#preview-table")
    row = preview.locator("tr[data-email='ben@acme.example']")
    expect(row).to_be_visible()
    expect(row).to_contain_text("Auto-increase")
    expect(row).to_contain_text("200,000 →")
    expect(row.locator("[data-role=after]")).to_have_text("220,000")  # +10 %
    expect(preview.locator("tbody tr")).to_have_count(1)
    # Not saved yet: the saved policy is still off, so it would move nothing.
    expect(page.locator("#saved-preview-table")).to_contain_text("No allowance would change")
    screenshot(page, "policy-preview")

    page.get_by_role("button", name="Save policy").click()
    expect(page.get_by_role("status")).to_have_text("Policy saved.")
    saved = page.get_by_role("group", name="Max Tokens · inference tokens")
    expect(saved.get_by_role("radio", name="Conservative")).to_be_checked()

    # The server runs the policy by itself too (policies.run, every second on test servers):
    # the move is in the log whether that job or Run now made it, and made once.
    run_now = page.get_by_role("button", name="Run now")
    if run_now.is_enabled():
        run_now.click()
        expect(page.get_by_role("status")).to_contain_text("The policy ran")
    else:
        page.reload()
    logged = page.locator("#log-table tr[data-email='ben@acme.example']")
    expect(logged).to_have_count(1)
    expect(logged).to_contain_text("Auto-increase")
    expect(logged).to_contain_text("200,000 → 220,000")
    expect(page.locator("#saved-preview-table")).to_contain_text("No allowance would change")
    screenshot(page, "policy-log")


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["1440x900", "390x844"])
def test_the_policy_page_with_a_preview_fits_the_window_and_passes_axe(
    browser: Browser, site: Site, viewport: ViewportSize
) -> None:
    _use(site, "ben@acme.example", 180_000)
    context = browser.new_context(viewport=viewport)
    try:
        page = context.new_page()
        sign_in(page, site, site.admin_email)
        page.goto(f"{site.url}/orgs/{site.org_id}/policy")
        inference = page.get_by_role("group", name="Max Tokens · inference tokens")
        inference.get_by_role("checkbox", name="The policy runs for Max Tokens").check()
        page.get_by_role("button", name="Preview").click()
        expect(page.locator("#preview-table tr[data-email='ben@acme.example']")).to_be_visible()
        width = page.evaluate("() => document.documentElement.scrollWidth")
        assert width <= viewport["width"], (width, viewport)
        assert severe_violations(page) == []
    finally:
        context.close()
