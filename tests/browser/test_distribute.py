"""Distributing the balance in a real browser: both kinds in one preview and one apply, the
preview landed on with Apply in view at 1440×900 and at 390×844, and the purchase expiring
soon that the distribution depends on named in words."""

from __future__ import annotations

import asyncio
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

from playwright.sync_api import Browser, Locator, Page, ViewportSize, expect
from sqlalchemy.ext.asyncio import AsyncSession

from tests.browser.conftest import Site, screenshot, sign_in
from tokenadmin.act import Act
from tokenadmin.database import Database
from tokenadmin.organization import service as organization_service

PHONE: ViewportSize = {"width": 390, "height": 844}


def _buy_expiring(site: Site, inference: int, expires_at: datetime) -> None:
    """A purchase of `inference` tokens expiring at `expires_at`, recorded as an operator
    would (from another thread: Playwright's loop runs in this one)."""

    async def buy() -> None:
        db = Database(site.database_url, pool_size=1)

        async def work(session: AsyncSession) -> None:
            act = Act("test", datetime.now(UTC))
            org = await organization_service.lock_for_change(session, act, uuid.UUID(site.org_id))
            await organization_service.record_purchase(
                session,
                act,
                org,
                inference_amount=inference,
                training_amount=0,
                purchased_on=None,
                expires_at=expires_at,
                payer="Finance",
                note="expiring",
            )

        try:
            await db.write(work)
        finally:
            await db.dispose()

    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, buy()).result()


def _preview_both_kinds(page: Page, site: Site, inference_fixed: str | None = None) -> Locator:
    """Max Tokens: an equal split (or `inference_fixed` to each); Max Train Tokens: 50,000
    to each. Preview."""
    page.goto(f"{site.url}/orgs/{site.org_id}/distribute")
    inference = page.get_by_role("group", name="Max Tokens · inference tokens")
    if inference_fixed is None:
        inference.get_by_role("radio", name="Equal split of the balance").check()
    else:
        inference.get_by_role("radio", name="Fixed amount per user").check()
        inference.get_by_role("textbox", name="Fixed amount per user").fill(inference_fixed)
    training = page.get_by_role("group", name="Max Train Tokens · training tokens")
    training.get_by_role("radio", name="Fixed amount per user").check()
    training.get_by_role("textbox", name="Fixed amount per user").fill("50K")
    page.get_by_role("button", name="Preview").click()
    preview = page.locator("#preview")
    expect(preview).to_be_visible()
    return preview


def _in_viewport(page: Page, target: Locator) -> None:
    box = target.bounding_box()
    size = page.viewport_size
    assert box is not None
    assert size is not None
    left, top = box["x"], box["y"]
    right, bottom = left + box["width"], top + box["height"]
    assert (left >= 0, right <= size["width"]) == (True, True), (box, size)
    assert (top >= 0, bottom <= size["height"]) == (True, True), (box, size)


def _balance(page: Page, kind: str) -> str:
    return page.locator(f"#balance [data-kind={kind}] [data-role=balance]").inner_text()


def test_both_kinds_preview_in_view_with_apply_warn_of_an_expiring_purchase_and_apply_at_once(
    page: Page, site: Site, browser: Browser
) -> None:
    # 3,000,000 / 500,000 bought, four users of 200,000 / 10,000: with 2,000,000 more
    # expiring in ten days, an equal split hands out 5,000,000, 2,000,000 more than is left
    # once it expires.
    expires_at = (datetime.now(UTC) + timedelta(days=10)).replace(microsecond=0)
    _buy_expiring(site, 2_000_000, expires_at)
    warning = (
        f"The purchase of 2,000,000 inference tokens expiring on {expires_at.day}"
        f" {expires_at:%b %Y} funds part of this; after it expires the organization would be"
        " 2,000,000 over."
    )

    phone = browser.new_context(viewport=PHONE)
    try:
        small = phone.new_page()
        sign_in(small, site, site.admin_email)
        # 2,000,000 to each of 4 is over the balance: refused as a whole, Apply disabled.
        preview = _preview_both_kinds(small, site, inference_fixed="2M")
        expect(preview.locator("#refusals")).to_contain_text("nothing will be saved")
        expect(preview.get_by_role("button", name="Apply to 4 users")).to_be_disabled()
        preview = _preview_both_kinds(small, site)
        apply = preview.get_by_role("button", name="Apply to 4 users")
        expect(apply).to_be_enabled()
        _in_viewport(small, apply)
        _in_viewport(small, preview.get_by_role("heading", name="Preview"))
        expect(preview.locator("#expiring")).to_contain_text(warning)
    finally:
        phone.close()

    sign_in(page, site, site.admin_email)
    preview = _preview_both_kinds(page, site)
    apply = preview.get_by_role("button", name="Apply to 4 users")
    _in_viewport(page, apply)
    _in_viewport(page, preview.locator("#expiring"))
    expect(preview.locator("#expiring")).to_contain_text(warning)
    summary = preview.locator("#kind-summary")
    expect(summary.locator("[data-kind=inference][data-role=per-user]")).to_have_text("1,050,000")
    expect(summary.locator("[data-kind=training][data-role=per-user]")).to_have_text("50,000")
    expect(summary.locator("[data-kind=inference][data-role=balance-after]")).to_have_text("0")
    expect(summary.locator("[data-kind=training][data-role=balance-after]")).to_have_text("260,000")
    ben = preview.locator("#preview-table tr[data-email='ben@acme.example']")
    expect(ben.locator("[data-kind=inference] [data-role=after]")).to_have_text("1,250,000")
    expect(ben.locator("[data-kind=training] [data-role=after]")).to_have_text("60,000")
    assert (_balance(page, "inference"), _balance(page, "training")) == ("4,200,000", "460,000")
    for code in ("max_tokens", "max_train_tokens", "inference_method", "preview_token"):
        assert code not in preview.inner_text()
    screenshot(page, "distribute-preview")

    apply.click()
    expect(page.get_by_role("status")).to_have_text(
        "Added 1,050,000 Max Tokens and 50,000 Max Train Tokens to each of 4 users."
    )
    assert (_balance(page, "inference"), _balance(page, "training")) == ("0", "260,000")
    page.goto(f"{site.url}/orgs/{site.org_id}?q=ben")
    row = page.locator("#users tr[data-email='ben@acme.example']")
    expect(row.locator("[data-field=max_tokens]")).to_have_text("1,250,000")
    expect(row.locator("[data-field=max_train_tokens]")).to_have_text("60,000")
