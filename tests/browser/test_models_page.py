"""The Models page in a real browser: an administrator overrides a rate, limits the models
the organization may call and sets its upstream, whose key the page never shows again; a
member creates a personal API key, shown once, and revokes it."""

from __future__ import annotations

import asyncio
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from playwright.sync_api import Page, expect
from sqlalchemy.ext.asyncio import AsyncSession

from tests.browser.conftest import Site, screenshot, sign_in
from tokenadmin.act import Act
from tokenadmin.catalog import service as catalog_service
from tokenadmin.database import Database


async def _platform_models(database_url: str) -> None:
    db = Database(database_url, pool_size=1)
    act = Act("seed", datetime.now(UTC))

    async def seed(session: AsyncSession) -> None:
        await catalog_service.set_model(
            session, act, None, "gpt-small", prompt_rate="0.5", completion_rate="1.5"
        )
        await catalog_service.set_model(
            session, act, None, "gpt-large", prompt_rate="2", completion_rate="6"
        )

    try:
        await db.write(seed)
    finally:
        await db.dispose()


def _seed_models(site: Site) -> None:
    # Playwright's sync API runs an event loop in this thread: seed from another one.
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, _platform_models(site.database_url)).result()


def test_an_admin_edits_rates_access_and_a_write_only_upstream_key(page: Page, site: Site) -> None:
    _seed_models(site)
    sign_in(page, site, site.admin_email)
    page.get_by_role("link", name="Models").click()
    large = page.locator("#models tr[data-model='gpt-large']")
    expect(large).to_have_attribute("data-source", "platform")
    expect(page.get_by_label("Prompt rate of gpt-small")).to_have_value("0.5")

    page.get_by_label("Prompt rate of gpt-large").fill("1.25")
    page.get_by_role("button", name="Save the rates of gpt-large").click()
    expect(page.get_by_role("status")).to_have_text("The rates are saved.")
    expect(large).to_have_attribute("data-source", "organization")
    expect(page.get_by_label("Prompt rate of gpt-large")).to_have_value("1.25")

    page.get_by_label("Completion rate of gpt-small").fill("0.1234567")
    page.get_by_role("button", name="Save the rates of gpt-small").click()
    expect(page.locator("#rates-error")).to_contain_text("decimal places")

    page.get_by_label("Only the models ticked below").check()
    page.get_by_label("Allow gpt-small").uncheck()
    page.get_by_role("button", name="Save access").click()
    expect(page.get_by_role("status")).to_have_text("The models your users may call are saved.")
    expect(page.get_by_label("Allow gpt-small")).not_to_be_checked()
    expect(page.get_by_label("Allow gpt-large")).to_be_checked()

    page.get_by_label("Base URL").fill("https://llm.example/v1")
    page.get_by_label("API key").fill("sk-very-secret-upstream")
    page.get_by_role("button", name="Save upstream").click()
    expect(page.get_by_role("status")).to_have_text("The upstream is saved.")
    expect(page.locator("[data-role=key-state]")).to_have_text("set")
    expect(page.get_by_label("API key")).to_have_value("")
    expect(large.locator("[data-role=upstream]")).to_have_text("configured")
    assert "sk-very-secret-upstream" not in page.content()
    screenshot(page, "models")

    page.get_by_role("button", name="Use the platform's rates of gpt-large").click()
    expect(large).to_have_attribute("data-source", "platform")
    expect(page.get_by_label("Prompt rate of gpt-large")).to_have_value("2")


def test_a_member_creates_a_personal_key_shown_once_and_revokes_it(page: Page, site: Site) -> None:
    sign_in(page, site, site.member_email)
    page.get_by_label("New key name").fill("laptop")
    page.get_by_role("button", name="Create API key").click()
    secret = page.locator("#new-key [data-role=secret]").inner_text()
    assert secret.startswith("ta_")
    row = page.locator("#my-keys tr[data-key='laptop']")
    expect(row).to_contain_text(secret[:10])
    page.goto(f"{site.url}/me")
    expect(page.locator("#new-key")).to_have_count(0)
    assert secret not in page.content()

    row.get_by_role("button", name="Revoke laptop").click()
    expect(page.get_by_role("status")).to_have_text("The API key is revoked; it no longer works.")
    expect(row.locator(".tag")).to_have_text("revoked")
    # The member has no Models page.
    response = page.goto(f"{site.url}/orgs/{site.org_id}/models")
    assert response is not None
    assert response.status == 404
    assert uuid.UUID(site.org_id)
