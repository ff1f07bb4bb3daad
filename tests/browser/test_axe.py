"""axe-core, the accessibility checker (tests/browser/package.json pins it; `npm ci --prefix
tests/browser` installs it), finds no serious or critical violation on any main page, for
every role, at 1440×900 and 390×844.

Without tests/browser/node_modules these tests are skipped, unless
TOKENADMIN_REQUIRE_BROWSER=1 (as in CI), where they fail.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Browser, ViewportSize

from tests.browser.conftest import (
    AXE,
    DESKTOP,
    PHONE,
    REQUIRE_BROWSER,
    Site,
    deactivate,
    main_pages,
    severe_violations,
    sign_in,
)


@pytest.fixture(scope="module")
def axe_script() -> Path:
    if not AXE.exists():
        message = f"axe-core not found at {AXE} (npm ci --prefix tests/browser)"
        if REQUIRE_BROWSER:
            pytest.fail(message)
        pytest.skip(message)
    return AXE


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["1440x900", "390x844"])
def test_no_page_has_a_serious_or_critical_accessibility_violation(
    browser: Browser, site: Site, axe_script: Path, viewport: ViewportSize
) -> None:
    deactivate(site, "di@acme.example")  # the table's "deactivated" tag and row are checked too
    context = browser.new_context(viewport=viewport)
    context.set_default_timeout(10_000)
    page = context.new_page()
    found: list[str] = []
    try:
        for role, email in [
            ("anonymous", None),
            ("admin", site.admin_email),
            ("member", site.member_email),
            ("operator", site.operator_email),
        ]:
            context.clear_cookies()
            if email is not None:
                sign_in(page, site, email)
            for name, path in main_pages(site, role):
                page.goto(site.url + path)
                found += [f"{role} · {name}: {v}" for v in severe_violations(page)]
    finally:
        context.close()
    assert not found, "axe-core found:\n" + "\n".join(found)
