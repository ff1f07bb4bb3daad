"""The user page's charts (last 30 days, last 12 months, per model) at desktop and phone
sizes, and the allowance change in place on the user page."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from playwright.sync_api import Browser, Page, expect
from sqlalchemy.ext.asyncio import AsyncSession

from tests.browser.conftest import DESKTOP, PHONE, Site, screenshot, sign_in, write
from tokenadmin.act import Act
from tokenadmin.allowance import service as allowance_service
from tokenadmin.tokens import Kind
from tokenadmin.usage import service as usage_service
from tokenadmin.user import service as user_service

# Every visible text of the charts: its box, and its font size as rendered (the computed
# size times the scale of the SVG's coordinates on screen).
CHART_TEXTS = """() => [...document.querySelectorAll("svg.chart text")]
  .filter((t) => getComputedStyle(t).display !== "none" && t.getBBox().width > 0)
  .map((t) => {
    const box = t.getBoundingClientRect();
    const size = parseFloat(getComputedStyle(t).fontSize) * t.getScreenCTM().a;
    return {text: t.textContent, cls: t.getAttribute("class") || "", size,
            left: box.left, right: box.right, top: box.top, bottom: box.bottom};
  })"""


def _meter(site: Site, email: str, uses: list[tuple[int, str | None]]) -> None:
    """Usage of inference tokens by `email`, each with the model named (or none)."""

    async def work(session: AsyncSession) -> None:
        act = Act("test", datetime.now(UTC))
        caller = usage_service.Caller("test", uuid.UUID(site.org_id), "test")
        operations = [
            usage_service.Operation(
                "usage",
                user=email,
                kind=Kind.inference,
                tokens=tokens,
                details=None if model is None else {"model": model},
            )
            for tokens, model in uses
        ]
        outcomes = await usage_service.meter(session, act, caller, operations, default_ttl=60)
        assert all(isinstance(o, usage_service.Used) for o in outcomes), outcomes

    write(site, work)


def _set_max_tokens(site: Site, email: str, amount: int) -> None:
    """Another administrator's change of a user's Max Tokens."""

    async def work(session: AsyncSession) -> None:
        act = Act("ravi@acme.example", datetime.now(UTC))
        user = await user_service.get(session, uuid.UUID(site.users[email]))
        request = allowance_service.Request(user, {Kind.inference: amount})
        await allowance_service.change(session, act, uuid.UUID(site.org_id), [request])

    write(site, work)


def _overlaps(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return bool(
        a["left"] < b["right"]
        and b["left"] < a["right"]
        and a["top"] < b["bottom"]
        and b["top"] < a["bottom"]
    )


def test_chart_labels_never_overlap_stay_readable_and_models_are_listed(
    browser: Browser, site: Site
) -> None:
    _meter(site, site.member_email, [(1_200, "large-chat"), (300, "small"), (50, None)])
    path = f"/orgs/{site.org_id}/users/{site.users[site.member_email]}"
    for name, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
        context = browser.new_context(viewport=viewport)
        context.set_default_timeout(10_000)
        page = context.new_page()
        try:
            sign_in(page, site, site.admin_email)
            page.goto(f"{site.url}{path}")
            days = page.get_by_role("img", name="Usage per day of ben@acme.example, last 30 days")
            expect(days).to_be_visible()
            # 30 bars a series, each named by its date and value.
            expect(days.locator("rect.series.inference")).to_have_count(31)  # and its legend
            expect(days.locator("rect.series.inference title").last).to_contain_text(
                "inference 1,550 tokens"
            )
            basis = page.locator("#allowances [data-kind=inference] [data-role=forecast-basis]")
            expect(basis).to_contain_text("Based on")
            months = page.get_by_role("img", name="Usage per month of ben@acme.example, past year")
            expect(months.locator("rect.series.training title")).to_have_count(12)

            texts = page.evaluate(CHART_TEXTS)
            assert texts
            small = [t for t in texts if t["size"] < 11]
            assert not small, f"{name}: text under 11 px: {small}"
            labels = [t for t in texts if "tick" in t["cls"]]
            clashes = [
                (a["text"], b["text"])
                for i, a in enumerate(labels)
                for b in labels[i + 1 :]
                if _overlaps(a, b)
            ]
            assert not clashes, f"{name}: overlapping labels {clashes}"
            width = page.evaluate("document.documentElement.clientWidth")
            assert all(t["left"] >= 0 and t["right"] <= width for t in texts), name

            per_model = page.locator("#usage-per-model tbody tr")
            expect(per_model).to_have_count(3)
            expect(per_model.nth(0)).to_contain_text("large-chat")
            expect(per_model.nth(0)).to_contain_text("1,200")
            expect(per_model.nth(2)).to_contain_text("No model named")
            # The figures as a table, the charts' text alternative.
            page.locator("#figures-days summary").click()
            expect(page.locator("#figures-days tbody tr")).to_have_count(30)
            screenshot(page, f"user-page-charts-{name}")
        finally:
            context.close()


def test_an_admin_changes_a_users_allowances_on_their_page_and_reads_refusals(
    page: Page, site: Site
) -> None:
    sign_in(page, site, site.admin_email)
    page.goto(f"{site.url}/orgs/{site.org_id}/users/{site.users['cy@acme.example']}")
    form = page.locator("#allowance-edit")
    max_tokens, max_train = form.get_by_label("Max Tokens"), form.get_by_label("Max Train Tokens")
    expect(max_tokens).to_have_value("200,000")
    expect(page.locator("#chart-days .empty")).to_have_text("No usage")  # no made-up scale

    max_tokens.fill("300K")
    max_train.fill("20,000")
    form.get_by_role("button", name="Save allowances").click()
    expect(page.get_by_role("status")).to_have_text("The allowances are saved.")
    expect(page.locator("#allowances [data-kind=inference] [data-role=allowance]")).to_have_text(
        "300,000"
    )
    expect(page.locator("#allowances [data-kind=training] [data-role=allowance]")).to_have_text(
        "20,000"
    )
    expect(page.locator("table.journal tbody tr").first).to_contain_text("Allowance changed")

    # Another admin raises Max Tokens meanwhile: this page's change of it is refused, with
    # who changed it, and nothing is overwritten.
    _set_max_tokens(site, "cy@acme.example", 500_000)
    max_tokens.fill("400K")
    form.get_by_role("button", name="Save allowances").click()
    expect(form).to_contain_text("changed")
    expect(page.locator("#allowances [data-kind=inference] [data-role=allowance]")).to_have_text(
        "500,000"
    )

    max_tokens.fill("150,000")
    form.get_by_role("button", name="Save allowances").click()
    expect(page.locator("#edit-max_tokens-error")).to_contain_text("the minimum is 200,000")
    expect(max_tokens).to_have_value("150,000")

    max_tokens.fill("300,000")
    max_train.fill("5M")  # the organization bought 500,000 training tokens
    form.get_by_role("button", name="Save allowances").click()
    refusal = page.locator("#edit-max_train_tokens-error")
    expect(refusal).to_contain_text("Max Train Tokens")
    expect(refusal).not_to_contain_text("exceeds_balance")
    expect(page.locator("#edit-max_tokens-error")).to_have_count(0)
    screenshot(page, "user-page-allowance-refused")

    # Members see their own page without the change.
    page.context.clear_cookies()
    sign_in(page, site, site.member_email)
    page.goto(f"{site.url}/me")
    expect(page.get_by_role("heading", level=1)).to_contain_text("My tokens")
    expect(page.locator("#allowances")).to_be_visible()
    expect(page.locator("#allowance-edit")).to_have_count(0)
