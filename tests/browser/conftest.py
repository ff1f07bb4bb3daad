"""Browser tests: real Chromium (Debian's /usr/bin/chromium) driven by Playwright against a
real server process. Screenshots of the main pages go to tests/artifacts/screenshots/.

Without Chromium these tests are skipped, unless TOKENADMIN_REQUIRE_BROWSER=1 (as in CI),
where they fail.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import uuid
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    Page,
    Playwright,
    ViewportSize,
    sync_playwright,
)
from sqlalchemy.ext.asyncio import AsyncSession

from tests.servers import Preloader, server_environment, started_servers
from tokenadmin.act import Act
from tokenadmin.auth import service as auth_service
from tokenadmin.database import Database
from tokenadmin.organization import service as organization_service
from tokenadmin.user import service as user_service

CHROMIUM = os.environ.get("TOKENADMIN_CHROMIUM", "/usr/bin/chromium")
REQUIRE_BROWSER = os.environ.get("TOKENADMIN_REQUIRE_BROWSER") == "1"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = Path(__file__).parent.parent / "artifacts" / "screenshots"
PASSWORD = "browser-test-password"
T = TypeVar("T")
DESKTOP: ViewportSize = {"width": 1440, "height": 900}
PHONE: ViewportSize = {"width": 390, "height": 844}


@dataclass
class Site:
    """A running server with a seeded organization."""

    url: str
    database_url: str
    org_id: str
    admin_email: str
    member_email: str
    operator_email: str
    other_org_id: str
    users: dict[str, str]
    """email → user id of the seeded organization's users."""


async def _seed(database_url: str) -> Site:
    db = Database(database_url, pool_size=1)
    act = Act("seed", datetime.now(UTC))
    users: dict[str, str] = {}

    async def seed(session: AsyncSession) -> tuple[str, str]:
        await auth_service.create_operator(
            session,
            email="ops@platform.example",
            name="Olga Operator",
            password=PASSWORD,
            now=act.now,
        )
        org = await organization_service.create(session, act, name="Acme Browser Co")
        await organization_service.record_purchase(
            session,
            act,
            org,
            inference_amount=3_000_000,
            training_amount=500_000,
            purchased_on=None,
            expires_at=None,
            payer="Finance",
            note="seed",
        )
        people = [
            ("ada@acme.example", "Ada Admin", "admin"),
            ("ben@acme.example", "Ben Member", "member"),
            ("cy@acme.example", "Cy Member", "member"),
            ("di@acme.example", "Di Member", "member"),
        ]
        for email, name, role in people:
            user = await user_service.create(
                session,
                act,
                org,
                user_service.NewUser(
                    email=email, name=name, role=role, password=PASSWORD, max_train_tokens=10_000
                ),
            )
            users[email] = str(user.id)
        other = await organization_service.create(session, act, name="Other Org")
        await organization_service.record_purchase(
            session,
            act,
            other,
            inference_amount=1_000_000,
            training_amount=0,
            purchased_on=None,
            expires_at=None,
            payer="",
            note="",
        )
        await user_service.create(
            session, act, other, user_service.NewUser(email="zed@other.example", name="Zed")
        )
        return str(org.id), str(other.id)

    try:
        org_id, other_id = await db.write(seed)
    finally:
        await db.dispose()
    return Site(
        url="",
        database_url=database_url,
        org_id=org_id,
        admin_email="ada@acme.example",
        member_email="ben@acme.example",
        operator_email="ops@platform.example",
        other_org_id=other_id,
        users=users,
    )


@pytest.fixture(scope="session")
def seeded_template(
    tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path
) -> tuple[Path, Site]:
    """The seeded database, made once (five argon2 password hashes and the writes took a
    second or more of each test's set-up); each test runs on a copy of its own."""
    path = tmp_path_factory.mktemp("browser") / "seeded.db"
    shutil.copy(sqlite_template, path)
    # Playwright's sync API may run an event loop in this thread: seed from another one.
    with ThreadPoolExecutor(max_workers=1) as pool:
        seeded = pool.submit(asyncio.run, _seed(f"sqlite:///{path}")).result()
    return path, seeded


@pytest.fixture(scope="session")
def preloader(seeded_template: tuple[Path, Site]) -> Iterator[Preloader]:
    """The code of the servers imported once for every browser test of this process: each
    test's server is forked from it (a second or two of set-up less per test, more on a
    loaded machine)."""
    _, seeded = seeded_template
    preloader = Preloader(server_environment(seeded.database_url))
    try:
        yield preloader
    finally:
        preloader.close()


@pytest.fixture
def site(
    tmp_path: Path, seeded_template: tuple[Path, Site], preloader: Preloader
) -> Iterator[Site]:
    """A fresh copy of the seeded database and a server of its own for each test, so tests
    never share state."""
    template, seeded = seeded_template
    path = tmp_path / "browser.db"
    shutil.copy(template, path)
    site = dataclasses.replace(seeded, database_url=f"sqlite:///{path}", users=dict(seeded.users))
    with started_servers(site.database_url, 1, preloader=preloader) as servers:
        site.url = servers[0].url
        yield site


# Package scope, not session: Playwright's sync API keeps an event loop running in this
# thread while it is open, which would stop every asyncio test that runs after these.
@pytest.fixture(scope="package")
def playwright_instance() -> Iterator[Playwright]:
    if not Path(CHROMIUM).exists():
        message = f"Chromium not found at {CHROMIUM} (apt-get install chromium)"
        if REQUIRE_BROWSER:
            pytest.fail(message)
        pytest.skip(message)
    with sync_playwright() as playwright:
        yield playwright


@pytest.fixture(scope="package")
def browser(playwright_instance: Playwright) -> Iterator[Browser]:
    browser = playwright_instance.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
    yield browser
    browser.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    context = browser.new_context(viewport=DESKTOP)
    context.set_default_timeout(10_000)
    yield context
    context.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.new_page()


def sign_in(page: Page, site: Site, email: str, password: str = PASSWORD) -> None:
    page.goto(f"{site.url}/login")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_load_state("networkidle")


def write(site: Site, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run `work` in one transaction on the site's database, from a thread of its own
    (Playwright's sync API runs an event loop in this one)."""

    async def run() -> T:
        db = Database(site.database_url, pool_size=1)
        try:
            return await db.write(work)
        finally:
            await db.dispose()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, run()).result()


def deactivate(site: Site, email: str) -> None:
    """Deactivate a user of the seeded organization, as an administrator would."""

    async def work(session: AsyncSession) -> None:
        act = Act("seed", datetime.now(UTC))
        org = await organization_service.get(session, uuid.UUID(site.org_id))
        user = await user_service.get(session, uuid.UUID(site.users[email]))
        await user_service.deactivate(session, act, org, user)

    write(site, work)


def main_pages(site: Site, role: str) -> list[tuple[str, str]]:
    """(name, path) of the main pages a role sees, for the checks of every page (layout,
    accessibility): "anonymous", "admin", "member" or "operator"."""
    org = f"/orgs/{site.org_id}"
    if role == "anonymous":
        return [("sign in", "/login")]
    if role == "member":
        return [("my tokens", "/me")]
    if role == "operator":
        return [
            ("all organizations", "/operator"),
            ("background jobs", "/operator/jobs"),
            ("organization home", org),
        ]
    return [
        ("users", org),
        ("journal", f"{org}/journal"),
        ("notifications", f"{org}/notifications"),
        ("distribute", f"{org}/distribute"),
        ("import & export", f"{org}/import"),
        ("settings", f"{org}/settings"),
        ("policy", f"{org}/policy"),
        ("webhooks", f"{org}/webhooks"),
        ("models", f"{org}/models"),
        ("user page", f"{org}/users/{site.users[site.member_email]}"),
        ("my tokens", "/me"),
        ("not found", f"{org}/users/{uuid.UUID(int=0)}"),
    ]


AXE = Path(__file__).parent / "node_modules" / "axe-core" / "axe.min.js"
"""axe-core, the accessibility checker: package.json pins it, `npm ci --prefix
tests/browser` installs it."""
SEVERE = {"serious", "critical"}


def describe_violation(violation: dict[str, Any]) -> str:
    """One axe-core finding: its rule, impact and help, and the elements it was found on."""
    targets = ", ".join(" ".join(node["target"]) for node in violation["nodes"][:5])
    more = len(violation["nodes"]) - 5
    return (
        f"{violation['id']} ({violation['impact']}) {violation['help']}"
        f" — {targets}{f' and {more} more' if more > 0 else ''}"
    )


def severe_violations(page: Page) -> list[str]:
    """axe-core's serious and critical findings on the page, described; none to find
    without axe-core, outside CI (TOKENADMIN_REQUIRE_BROWSER=1 fails instead)."""
    if not AXE.exists():
        assert not REQUIRE_BROWSER, f"axe-core not found at {AXE} (npm ci --prefix tests/browser)"
        return []
    page.add_script_tag(path=str(AXE))
    result: dict[str, Any] = page.evaluate("() => axe.run(document, {resultTypes: ['violations']})")
    return [describe_violation(v) for v in result["violations"] if v["impact"] in SEVERE]


def screenshot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
