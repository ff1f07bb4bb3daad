"""Dashboard sign-in: sessions, CSRF, throttling of repeated failures, and their logs."""

from __future__ import annotations

import csv
import io
import logging
import re
from datetime import timedelta

import httpx
import pytest

from tests.helpers import Api, funded_org
from tokenadmin import sweeper
from tokenadmin.clock import FakeClock
from tokenadmin.database import Database

PASSWORD = "a long enough password"
HTML = {"Accept": "text/html"}


async def _login_form(client: httpx.AsyncClient) -> str:
    page = await client.get("/login", headers=HTML)
    assert page.status_code == 200
    match = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert match
    return match.group(1)


async def _sign_in(
    client: httpx.AsyncClient, email: str, password: str = PASSWORD
) -> httpx.Response:
    token = await _login_form(client)
    return await client.post(
        "/login",
        data={"email": email, "password": password, "csrf_token": token},
        headers=HTML,
    )


@pytest.fixture
async def admin(api: Api) -> str:
    org = await funded_org(api)
    await api.user(org, "ada@example.com", role="admin", password=PASSWORD)
    return org


async def test_signing_in_sets_a_session_cookie_that_scripts_cannot_read(
    client: httpx.AsyncClient, admin: str
) -> None:
    response = await _sign_in(client, "ada@example.com")
    assert response.status_code == 303
    assert response.headers["location"] == f"/orgs/{admin}"
    cookie = next(c for c in response.headers.get_list("set-cookie") if c.startswith("ta_session="))
    assert "HttpOnly" in cookie
    assert "SameSite=lax" in cookie
    assert "Secure" not in cookie  # served over plain HTTP here
    page = await client.get(f"/orgs/{admin}", headers=HTML)
    assert page.status_code == 200
    assert "ada@example.com" in page.text


async def test_behind_https_the_session_cookie_is_secure(app: object, admin: str) -> None:
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="https://tokenadmin.test") as client:
        response = await _sign_in(client, "ada@example.com")
        cookie = next(
            c for c in response.headers.get_list("set-cookie") if c.startswith("ta_session=")
        )
        assert "Secure" in cookie


async def test_a_sign_in_without_the_form_token_is_refused(
    client: httpx.AsyncClient, admin: str
) -> None:
    response = await client.post(
        "/login", data={"email": "ada@example.com", "password": PASSWORD}, headers=HTML
    )
    assert response.status_code == 403
    assert "ta_session" not in response.headers.get("set-cookie", "")


def _from(app: object, ip: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(ip, 50000))  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=transport, base_url="http://tokenadmin.test")


async def test_repeated_failures_are_slowed_down_and_logged_without_telling_if_the_email_exists(
    app: object, admin: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="tokenadmin.auth")
    answers = {}
    for email, ip in (("ada@example.com", "10.0.0.1"), ("nobody@example.com", "10.0.0.2")):
        async with _from(app, ip) as client:
            statuses = [
                (await _sign_in(client, email, "wrong password")).status_code for _ in range(6)
            ]
        answers[email] = statuses
    # The same answers whether the email exists or not: five refusals, then a wait.
    assert answers["ada@example.com"] == answers["nobody@example.com"]
    assert answers["ada@example.com"][:4] == [401] * 4
    assert 429 in answers["ada@example.com"]
    # Even the right password waits while the email is blocked, from anywhere.
    async with _from(app, "10.0.0.3") as client:
        blocked = await _sign_in(client, "ada@example.com")
    assert blocked.status_code == 429
    assert "Try again in" in blocked.text
    failures = [r.getMessage() for r in caplog.records if "failed sign-in" in r.getMessage()]
    assert "failed sign-in for ada@example.com from 10.0.0.1" in failures
    assert "failed sign-in for nobody@example.com from 10.0.0.2" in failures


async def test_many_emails_tried_from_one_address_are_slowed_down_too(
    app: object, admin: str
) -> None:
    async with _from(app, "10.0.0.9") as client:
        statuses = [
            (await _sign_in(client, f"guess{i}@example.com", "wrong password")).status_code
            for i in range(7)
        ]
    assert statuses[:4] == [401] * 4
    assert statuses[-1] == 429


async def test_the_wait_ends_and_the_right_password_works_again(
    client: httpx.AsyncClient, admin: str, clock: FakeClock
) -> None:
    for _ in range(5):
        await _sign_in(client, "ada@example.com", "wrong password")
    assert (await _sign_in(client, "ada@example.com")).status_code == 429
    clock.advance(minutes=16)
    assert (await _sign_in(client, "ada@example.com")).status_code == 303


async def test_sessions_expire_and_the_sweeper_forgets_them(
    client: httpx.AsyncClient, admin: str, clock: FakeClock, db: Database
) -> None:
    await _sign_in(client, "ada@example.com")
    clock.advance(hours=12, seconds=1)
    page = await client.get(f"/orgs/{admin}", headers=HTML)
    assert page.status_code == 303
    assert page.headers["location"].startswith("/login")
    report = await sweeper.sweep(db, clock, idempotency_ttl=timedelta(hours=48))
    assert report.sessions_ended == 1


async def test_signing_out_needs_the_csrf_token_and_ends_the_session(
    client: httpx.AsyncClient, admin: str
) -> None:
    await _sign_in(client, "ada@example.com")
    refused = await client.post("/logout", headers=HTML)
    assert refused.status_code == 403
    page = await client.get(f"/orgs/{admin}", headers=HTML)
    token = re.search(r'name="csrf-token" content="([^"]+)"', page.text)
    assert token
    foreign = await client.post(
        "/logout",
        data={"csrf_token": token.group(1)},
        headers={**HTML, "Origin": "https://evil.example"},
    )
    assert foreign.status_code == 403
    done = await client.post("/logout", data={"csrf_token": token.group(1)}, headers=HTML)
    assert done.status_code == 303
    after = await client.get(f"/orgs/{admin}", headers=HTML)
    assert after.status_code == 303


async def test_pages_need_a_session(client: httpx.AsyncClient, admin: str) -> None:
    page = await client.get(f"/orgs/{admin}", headers=HTML)
    assert page.status_code == 303
    assert page.headers["location"] == f"/login?next=/orgs/{admin}"


async def test_the_journal_page_and_its_csv_apply_the_same_filters(
    api: Api, client: httpx.AsyncClient, admin: str
) -> None:
    ana = await api.user(admin, "ana@example.com")
    await api.use(ana["id"], 7, expect=200)
    await api.use(ana["id"], 11, expect=200)
    assert (await _sign_in(client, "ada@example.com")).status_code == 303
    filters = {"action": "usage", "user": "ana@example.com", "kind": "inference"}

    page = await client.get(f"/orgs/{admin}/journal", params=filters, headers=HTML)
    download = await client.get(f"/orgs/{admin}/journal.csv", params=filters)

    assert page.status_code == download.status_code == 200
    rows = list(csv.DictReader(io.StringIO(download.text)))
    assert len(rows) == 2, download.text
    assert {row["action"] for row in rows} == {"usage"}
    assert page.text.count("ana@example.com") >= 2
    nothing = await client.get(f"/orgs/{admin}/journal.csv", params={"action": "commit"})
    assert nothing.status_code == 200
    assert list(csv.DictReader(io.StringIO(nothing.text))) == []


async def test_the_csv_import_takes_a_file_far_over_the_json_body_limit(
    client: httpx.AsyncClient, admin: str
) -> None:
    """The API's bodies are limited to 2 MB; the import reads files of up to 32 MB (an
    export of 100,000 users is about 7 MB), streamed as it reads them; beyond, 413."""
    assert (await _sign_in(client, "ada@example.com")).status_code == 303
    page = await client.get(f"/orgs/{admin}/import", headers=HTML)
    match = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert match
    form = {"csrf_token": match.group(1), "action": "preview"}

    async def upload(size: int) -> httpx.Response:
        content = b"not,the,columns\n" + b"x" * (size - 16)
        files = {"file": ("users.csv", content, "text/csv")}
        return await client.post(f"/orgs/{admin}/import", data=form, files=files, headers=HTML)

    read = await upload(20_000_000)
    assert read.status_code == 422, read.text[:300]  # read whole, and its columns refused
    assert "invalid_csv" in read.text or "column" in read.text.lower()
    refused = await upload(33 * 1024 * 1024)
    assert refused.status_code == 413, refused.text[:300]
    assert "Request bodies are limited to" in refused.text
