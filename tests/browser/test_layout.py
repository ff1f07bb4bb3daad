"""The dashboard fits the screen, at 1440×900 and at 390×844: no page is wider than the
window (wide tables scroll in their own box), the top bar stays small on a phone with every
link and Sign out reachable, balance figures stay inside their cards; and the favicon."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, ViewportSize, expect
from sqlalchemy.ext.asyncio import AsyncSession

from tests.browser.conftest import (
    DESKTOP,
    PHONE,
    Site,
    deactivate,
    main_pages,
    screenshot,
    sign_in,
    write,
)
from tokenadmin.act import Act
from tokenadmin.organization import service as organization_service

# The page's width, and (to say what to fix) the elements past the window's right edge that
# no scrolling box of theirs holds: a box scrolls what is inside it, except what is placed
# absolutely against an ancestor outside it (the hidden "Actions" label of issue 12).
WIDER_THAN_THE_WINDOW = """() => {
  const width = window.innerWidth;
  const scroller = (e) => {
    for (let a = e.parentElement; a && a !== document.body; a = a.parentElement) {
      if (getComputedStyle(a).overflowX !== "visible") return a;
    }
    return null;
  };
  const wide = [...document.querySelectorAll("body *")].filter((e) => {
    if (e.getBoundingClientRect().right <= width + 1) return false;
    const box = scroller(e);
    if (box === null) return true;
    const placed = ["absolute", "fixed"].includes(getComputedStyle(e).position);
    return placed && !(box === e.offsetParent || box.contains(e.offsetParent));
  });
  return {
    scroll: document.documentElement.scrollWidth,
    width,
    culprits: wide.slice(0, 5).map((e) =>
      `${e.tagName.toLowerCase()}${e.id ? "#" + e.id : ""}.${[...e.classList].join(".")}`
      + ` right=${Math.round(e.getBoundingClientRect().right)}`),
  };
}"""

FIGURES_OUTSIDE_THEIR_CARDS = """() => [...document.querySelectorAll(".balance .card")]
  .flatMap((card) => {
    const box = card.getBoundingClientRect();
    return [...card.querySelectorAll(".big, dd, dt")].filter((e) => {
      const r = e.getBoundingClientRect();
      return r.left < box.left - 0.5 || r.right > box.right + 0.5
        || e.scrollWidth > e.clientWidth + 1;
    }).map((e) => `${card.dataset.kind || "card"}: ${e.textContent.trim()}`);
  })"""


NAV = [
    "Users",
    "Distribute",
    "Import & export",
    "Policy",
    "Journal",
    "Notifications",
    "Models",
    "Webhooks",
    "Settings",
    "My tokens",
]
"""An administrator's main links, in order."""

OWN_TEXT = """(e) => [...e.childNodes].filter((n) => n.nodeType === Node.TEXT_NODE)
  .map((n) => n.textContent).join("").trim()"""
"""An element's text without its children's (a heading's own words, not its <small> aside)."""


def _big_purchase(site: Site) -> Callable[[AsyncSession], Awaitable[None]]:
    async def work(session: AsyncSession) -> None:
        org = await organization_service.get(session, uuid.UUID(site.org_id))
        await organization_service.record_purchase(
            session,
            Act("seed", datetime.now(UTC)),
            org,
            inference_amount=9_876_543_210_987,
            training_amount=123_456_789_012,
            purchased_on=None,
            expires_at=None,
            payer="Finance",
            note="a big one",
        )

    return work


def _check_pages(page: Page, site: Site, role: str) -> list[str]:
    problems = []
    for name, path in main_pages(site, role):
        page.goto(site.url + path)
        fit: dict[str, Any] = page.evaluate(WIDER_THAN_THE_WINDOW)
        if fit["scroll"] > fit["width"]:
            problems.append(
                f"{role} · {name}: the page is {fit['scroll']} px wide in a {fit['width']} px"
                f" window; widest: {', '.join(fit['culprits']) or '?'}"
            )
        for figure in page.evaluate(FIGURES_OUTSIDE_THEIR_CARDS):
            problems.append(f"{role} · {name}: a figure leaves its card: {figure}")
    return problems


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["1440x900", "390x844"])
def test_every_main_page_fits_the_window_with_its_figures_inside_their_cards(
    browser: Browser, site: Site, viewport: ViewportSize
) -> None:
    deactivate(site, "di@acme.example")
    # Figures as long as an organization's get: trillions of tokens, millions used.
    write(site, _big_purchase(site))
    context = browser.new_context(viewport=viewport)
    context.set_default_timeout(10_000)
    page = context.new_page()
    problems: list[str] = []
    try:
        problems += _check_pages(page, site, "anonymous")
        for role, email in [
            ("admin", site.admin_email),
            ("member", site.member_email),
            ("operator", site.operator_email),
        ]:
            context.clear_cookies()
            sign_in(page, site, email)
            problems += _check_pages(page, site, role)
    finally:
        context.close()
    assert not problems, "\n".join(problems)


def test_on_a_phone_the_top_bar_is_small_and_every_link_and_sign_out_are_reachable(
    browser: Browser, site: Site
) -> None:
    context = browser.new_context(viewport=PHONE)
    context.set_default_timeout(10_000)
    page = context.new_page()
    try:
        sign_in(page, site, site.admin_email)
        page.goto(f"{site.url}/orgs/{site.org_id}")
        bar = page.locator("header.topbar").bounding_box()
        assert bar is not None
        assert bar["height"] <= 0.2 * PHONE["height"], f"the top bar is {bar['height']} px high"
        screenshot(page, "phone-home")

        # Each link of the phone's nav row is reached and leads to a page of that name: the
        # same words in the link, the page's heading and the first part of its title.
        misnamed = []
        for name in NAV:
            link = page.get_by_role("navigation", name="Main").get_by_role(
                "link", name=name, exact=True
            )
            link.scroll_into_view_if_needed()
            expect(link).to_be_in_viewport()
            link.click()
            expect(link).to_have_attribute("aria-current", "page")
            heading = page.locator("h1").evaluate(OWN_TEXT)
            title = page.title()
            if heading != name or not title.startswith(f"{name} · "):
                misnamed.append(f"link {name!r}: heading {heading!r}, title {title!r}")
        assert not misnamed, "pages named unlike their links:\n" + "\n".join(misnamed)
        expect(page).to_have_url(f"{site.url}/me")
        sign_out = page.get_by_role("button", name="Sign out")
        expect(sign_out).to_be_in_viewport()
        sign_out.click()
        expect(page.get_by_role("heading", name="Sign in")).to_be_visible()

        favicon = page.request.get(f"{site.url}/favicon.ico")
        assert favicon.status == 200
        assert favicon.headers["content-type"].startswith("image/svg+xml")
        assert "max-age=" in favicon.headers["cache-control"]
        icon = page.locator("link[rel=icon]").get_attribute("href")
        assert icon is not None
        assert page.request.get(site.url + icon).ok
    finally:
        context.close()
