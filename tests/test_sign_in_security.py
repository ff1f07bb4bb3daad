"""Sign-in and dashboard security beyond tests/test_dashboard_auth.py: no user enumeration
(the same answer after the same work), waits that keep growing for a patient guesser,
logs of every refusal with who and from where, sessions that end, cookies behind an HTTPS
proxy, and the CSRF token and Origin check on every dashboard write."""

from __future__ import annotations

import logging
import re
from datetime import timedelta
from typing import Any

import httpx
import pytest
from argon2 import PasswordHasher
from fastapi import FastAPI
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from tests.helpers import Api, funded_org
from tests.test_route_matrix import (
    MATRIX,
    REQUESTS,
    Caller,
    Req,
    World,
    build_world,
    by_order,
    send,
    snapshot,
)
from tokenadmin.auth import passwords
from tokenadmin.auth import service as auth_service
from tokenadmin.clock import FakeClock
from tokenadmin.database import Database

PASSWORD = "the right password"
HTML = {"Accept": "text/html"}


def browser(app: Any, ip: str = "10.0.0.1", **kw: Any) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(ip, 50000))
    return httpx.AsyncClient(transport=transport, base_url="http://tokenadmin.test", **kw)


async def sign_in(
    client: httpx.AsyncClient, email: str, password: str = PASSWORD, **headers: str
) -> httpx.Response:
    form = await client.get("/login", headers=HTML)
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert token
    return await client.post(
        "/login",
        data={"email": email, "password": password, "csrf_token": token.group(1)},
        headers=HTML | headers,
    )


def normalized(page: str) -> str:
    """A sign-in page without what differs by design: its form token and the email typed."""
    page = re.sub(r'value="[^"]*"', 'value=""', page)
    return re.sub(r"Try again in \d+ seconds", "Try again in N seconds", page)


def cookie(response: httpx.Response, name: str) -> str:
    found = [c for c in response.headers.get_list("set-cookie") if c.startswith(f"{name}=")]
    assert found, response.headers.get_list("set-cookie")
    return found[0]


@pytest.fixture(autouse=True)
def quick_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Argon2 at its cheapest: these tests count and compare its work, they don't time it."""
    monkeypatch.setattr(
        passwords, "_hasher", PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
    )


@pytest.fixture
async def org(api: Api, db: Database, clock: FakeClock) -> str:
    """Acme, with an admin, a member, a deactivated member, a user without a password, and
    an operator account."""
    org_id = await funded_org(api)
    await api.user(org_id, "ada@example.com", role="admin", password=PASSWORD)
    await api.user(org_id, "max@example.com", password=PASSWORD)
    gone = await api.user(org_id, "dee@example.com", password=PASSWORD)
    await api.post(f"/v1/users/{gone['id']}/deactivate", expect=200)
    await api.user(org_id, "nopass@example.com")
    await db.write(
        lambda s: auth_service.create_operator(
            s, email="olga@ops.example", name="Olga", password=PASSWORD, now=clock.now()
        )
    )
    return org_id


# --- no user enumeration -----------------------------------------------------------------------


class CountingHasher:
    """The argon2 hasher, counting the hashes and verifications it does."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.calls: list[str] = []

    def hash(self, password: str) -> str:
        self.calls.append("hash")
        result: str = self.real.hash(password)
        return result

    def verify(self, stored: str, password: str) -> bool:
        self.calls.append("verify:" + stored.rsplit("$", 2)[0])
        result: bool = self.real.verify(stored, password)
        return result


async def test_unknown_emails_wrong_passwords_and_unusable_accounts_get_one_answer_after_one_hash(
    app: FastAPI, org: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    hasher = CountingHasher(passwords._hasher)
    monkeypatch.setattr(passwords, "_hasher", hasher)
    parameters = passwords.hash_password("x").rsplit("$", 2)[0]  # $argon2id$v=19$m=…,t=…,p=…
    attempts = {
        "an unknown email": ("nobody@example.com", PASSWORD),
        "a wrong password": ("ada@example.com", "not the password"),
        "a deactivated user's right password": ("dee@example.com", PASSWORD),
        "a user without a password": ("nopass@example.com", PASSWORD),
        "an operator's wrong password": ("olga@ops.example", "not the password"),
    }
    pages, work = {}, {}
    for number, (what, (email, password)) in enumerate(attempts.items()):
        async with browser(app, f"10.0.1.{number}") as client:
            hasher.calls.clear()
            response = await sign_in(client, email, password)
            work[what] = list(hasher.calls)
            assert response.status_code == 401, (what, response.status_code)
            assert "ta_session" not in response.headers.get("set-cookie", "")
            pages[what] = normalized(response.text)
    assert len(set(pages.values())) == 1, "the answers differ"
    assert "The email or the password is not right." in pages["an unknown email"]
    # One argon2 computation each, with the same parameters: the same work, the same time.
    for what, calls in work.items():
        assert len(calls) == 1, (what, calls)
        assert calls[0] in ("hash", f"verify:{parameters}"), (what, calls)


async def test_a_throttled_email_answers_alike_whether_it_exists_or_not(
    app: FastAPI, org: str
) -> None:
    pages = {}
    for email in ("ada@example.com", "nobody@example.com"):
        statuses = []
        for number in range(7):
            async with browser(app, f"10.0.2.{number}") as client:
                response = await sign_in(client, email, "wrong guess")
                statuses.append(response.status_code)
        assert statuses == [401] * 5 + [429] * 2, (email, statuses)
        pages[email] = normalized(response.text)
    assert pages["ada@example.com"] == pages["nobody@example.com"]


# --- slowing down guessing ---------------------------------------------------------------------


def retry_after(response: httpx.Response) -> int:
    """The wait the page states, which the Retry-After header states too."""
    found = re.search(r"Try again in (\d+) seconds", response.text)
    assert found, response.text
    assert response.headers.get("retry-after") == found.group(1)
    return int(found.group(1))


async def test_a_patient_guesser_waits_longer_each_time_up_to_fifteen_minutes_from_any_address(
    app: FastAPI, org: str, clock: FakeClock
) -> None:
    start, guesses, waits = clock.now(), 0, []
    while clock.now() < start + timedelta(hours=2):
        # A new address each time: the email's own count slows the guessing down.
        async with browser(app, f"10.1.{guesses // 250}.{guesses % 250}") as client:
            response = await sign_in(client, "ada@example.com", f"guess {guesses}")
        if response.status_code == 429:
            wait = retry_after(response)
            waits.append(wait - 1)  # the page rounds the wait up to the next second
            clock.advance(seconds=wait)
        else:
            assert response.status_code == 401
            guesses += 1
    # 5 free guesses, then waits of 1 s, 2 s, 4 s ... up to 15 minutes, that do not start
    # again while the guessing goes on.
    assert waits[:11] == [2**n for n in range(10)] + [900]
    assert set(waits[10:]) == {900}
    assert guesses <= 5 + 10 + 8 + 1, guesses
    # The right password waits too, and works once the wait is over.
    async with browser(app, "10.2.0.1") as client:
        assert (await sign_in(client, "ada@example.com", "one more")).status_code == 401
        blocked = await sign_in(client, "ada@example.com")
        assert blocked.status_code == 429
        clock.advance(seconds=retry_after(blocked))
        assert (await sign_in(client, "ada@example.com")).status_code == 303


async def test_the_count_is_forgotten_after_fifteen_quiet_minutes(
    app: FastAPI, org: str, clock: FakeClock
) -> None:
    async with browser(app) as client:
        for _ in range(5):
            await sign_in(client, "ada@example.com", "wrong")
        clock.advance(minutes=15, seconds=2)
        statuses = [
            (await sign_in(client, "ada@example.com", "wrong")).status_code for _ in range(5)
        ]
    assert statuses == [401] * 5


async def test_a_forwarded_for_header_does_not_hide_the_address_of_a_guesser(
    app: FastAPI, org: str
) -> None:
    # `tokenadmin serve` (uvicorn) believes X-Forwarded-For only from a trusted proxy
    # (FORWARDED_ALLOW_IPS, 127.0.0.1 by default); the app itself never reads it.
    proxied = ProxyHeadersMiddleware(app, trusted_hosts=["127.0.0.1"])  # type: ignore[arg-type]
    statuses = []
    async with browser(proxied, "203.0.113.9") as client:
        for number in range(7):
            forged = {"X-Forwarded-For": f"198.51.100.{number}"}
            response = await sign_in(client, f"guess{number}@example.com", "wrong", **forged)
            statuses.append(response.status_code)
    assert statuses[:5] == [401] * 5
    assert statuses[-1] == 429


# --- logs ----------------------------------------------------------------------------------------


def auth_log(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "tokenadmin.auth"]


async def test_failed_and_throttled_sign_ins_are_logged_with_the_email_and_address_only(
    app: FastAPI, org: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tokenadmin.auth")
    async with browser(app, "10.3.0.1") as client:
        for _ in range(6):
            await sign_in(client, "ada@example.com", "hunter2 is not it")
        await sign_in(client, "ada@example.com")
    lines = auth_log(caplog)
    assert lines.count("failed sign-in for ada@example.com from 10.3.0.1") == 5
    assert lines.count("throttled sign-in for ada@example.com from 10.3.0.1 (email)") == 2
    assert not [line for line in lines if "hunter2" in line or PASSWORD in line]


async def test_an_email_cannot_forge_a_line_of_the_log(
    app: FastAPI, org: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tokenadmin.auth")
    forged = "x@example.com\nsigned in ada@example.com from 10.0.0.1"
    async with browser(app, "10.3.0.2") as client:
        await sign_in(client, forged, "wrong")
    lines = auth_log(caplog)
    assert lines == [r"failed sign-in for x@example.com\nsigned in ada@example.com from 10.0.0.1"
                     " from 10.3.0.2"]  # fmt: skip
    assert all("\n" not in line for line in lines)


async def test_denied_api_requests_are_logged_with_the_key_prefix_and_the_address(
    app: FastAPI, api: Api, org: str, caplog: pytest.LogCaptureFixture
) -> None:
    reader = await api.key(org, "read")
    other_org = await funded_org(api)
    stranger = await api.key(other_org, "admin")
    caplog.set_level(logging.WARNING, logger="tokenadmin.auth")
    async with browser(app, "10.4.0.1") as client:
        calls: list[tuple[str, str, str]] = [
            ("PATCH", f"/v1/organizations/{org}", reader),
            ("GET", f"/v1/organizations/{org}/users", stranger),
            ("GET", f"/v1/organizations/{org}/balance", "ta_wrongwrongwrongwrong"),
            ("GET", f"/v1/organizations/{org}/journal", ""),
        ]
        for method, path, key in calls:
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            response = await client.request(method, path, json={}, headers=headers)
            assert response.status_code in (401, 403, 404)
    assert auth_log(caplog) == [
        f"denied PATCH /v1/organizations/{org} (403 forbidden) to key {reader[:10]} from 10.4.0.1",
        f"denied GET /v1/organizations/{org}/users (404 not_found) to key {stranger[:10]}"
        " from 10.4.0.1",
        f"denied GET /v1/organizations/{org}/balance (401 unauthenticated) to key ta_wrongwr"
        " from 10.4.0.1",
        f"denied GET /v1/organizations/{org}/journal (401 unauthenticated) to no key or session"
        " from 10.4.0.1",
    ]
    assert not [r for r in caplog.records if reader in r.getMessage() or stranger in r.getMessage()]


async def test_denied_metering_requests_are_logged_too(
    app: FastAPI, api: Api, org: str, caplog: pytest.LogCaptureFixture
) -> None:
    reader = await api.key(org, "read")
    caplog.set_level(logging.WARNING, logger="tokenadmin.auth")
    async with browser(app, "10.4.0.2") as client:
        response = await client.post(
            "/v1/usage",
            json={"user": "max@example.com", "kind": "inference", "tokens": 1},
            headers={"Authorization": f"Bearer {reader}", "Idempotency-Key": "k"},
        )
    assert response.status_code == 403
    assert auth_log(caplog) == [
        f"denied POST /v1/usage (403 forbidden) to key {reader[:10]} from 10.4.0.2"
    ]


async def test_denied_dashboard_requests_are_logged_with_the_person_and_the_address(
    app: FastAPI, org: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with browser(app, "10.5.0.1") as client:
        assert (await sign_in(client, "max@example.com")).status_code == 303
        caplog.clear()  # the sign-in's own line; what follows are the denials
        assert (await client.get(f"/orgs/{org}", headers=HTML)).status_code == 404
        refused = await client.post("/me/requests", data={"kind": "inference", "amount": "1"})
        assert refused.status_code == 403
    async with browser(app, "10.5.0.2") as client:
        anonymous = await client.post(f"/orgs/{org}/users", data={"email": "x@example.com"})
        assert anonymous.status_code == 401
    assert auth_log(caplog) == [
        f"denied GET /orgs/{org} (404 not_found) to max@example.com from 10.5.0.1",
        "denied POST /me/requests (403 csrf_failed) to max@example.com from 10.5.0.1",
        f"denied POST /orgs/{org}/users (401 unauthenticated) to no key or session from 10.5.0.2",
    ]


@pytest.mark.parametrize(
    "next_path",
    [
        "//evil.example/",
        "/\\evil.example/",
        "/\\/evil.example/",
        "https://evil.example/",
        "/\t/evil.example/",
        "/\n/evil.example/",
        "javascript:alert(1)",
        "evil.example",
    ],
)
async def test_signing_in_never_leads_to_another_site(
    app: FastAPI, org: str, next_path: str
) -> None:
    async with browser(app) as client:
        form = await client.get("/login", params={"next": next_path}, headers=HTML)
        assert 'name="next" value=""' in form.text
        token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
        assert token
        response = await client.post(
            "/login",
            data={
                "email": "ada@example.com",
                "password": PASSWORD,
                "csrf_token": token.group(1),
                "next": next_path,
            },
            headers=HTML,
        )
    assert response.status_code == 303
    assert response.headers["location"] == f"/orgs/{org}"


async def test_signing_in_goes_back_to_the_page_asked_for(app: FastAPI, org: str) -> None:
    async with browser(app) as client:
        page = await client.get(f"/orgs/{org}/journal?kind=training", headers=HTML)
        assert page.headers["location"] == f"/login?next=/orgs/{org}/journal%3Fkind%3Dtraining"
        form = await client.get(page.headers["location"], headers=HTML)
        token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
        wanted = re.search(r'name="next" value="([^"]+)"', form.text)
        assert token
        assert wanted
        response = await client.post(
            "/login",
            data={
                "email": "ada@example.com",
                "password": PASSWORD,
                "csrf_token": token.group(1),
                "next": wanted.group(1),
            },
            headers=HTML,
        )
    assert response.headers["location"] == f"/orgs/{org}/journal?kind=training"


# --- sessions and cookies --------------------------------------------------------------------


async def test_a_session_ends_twelve_hours_after_sign_in_however_much_it_is_used(
    app: FastAPI, org: str, clock: FakeClock
) -> None:
    async with browser(app) as client:
        response = await sign_in(client, "ada@example.com")
        assert "Max-Age=43200" in cookie(response, "ta_session")
        for _ in range(11):
            clock.advance(hours=1)
            assert (await client.get(f"/orgs/{org}", headers=HTML)).status_code == 200
        clock.advance(minutes=59, seconds=59)
        assert (await client.get(f"/orgs/{org}", headers=HTML)).status_code == 200
        clock.advance(seconds=1)
        ended = await client.get(f"/orgs/{org}", headers=HTML)
        assert ended.status_code == 303
        assert ended.headers["location"] == f"/login?next=/orgs/{org}"


async def test_deactivating_a_user_or_taking_their_admin_role_acts_on_their_session_at_once(
    app: FastAPI, api: Api, org: str
) -> None:
    users = {
        u["email"]: u["id"] for u in (await api.get(f"/v1/organizations/{org}/users"))["users"]
    }
    async with browser(app, "10.6.0.1") as ada, browser(app, "10.6.0.2") as max_:
        await sign_in(ada, "ada@example.com")
        await sign_in(max_, "max@example.com")
        await api.patch(f"/v1/users/{users['ada@example.com']}", {"role": "member"}, expect=200)
        assert (await ada.get(f"/orgs/{org}", headers=HTML)).status_code == 404
        assert (await ada.get("/me", headers=HTML)).status_code == 200
        await api.post(f"/v1/users/{users['max@example.com']}/deactivate", expect=200)
        page = await max_.get("/me", headers=HTML)
        assert page.status_code == 303
        assert page.headers["location"].startswith("/login")


async def test_a_session_does_not_come_back_when_its_user_is_reactivated(
    app: FastAPI, api: Api, org: str
) -> None:
    users = {
        u["email"]: u["id"] for u in (await api.get(f"/v1/organizations/{org}/users"))["users"]
    }
    async with browser(app, "10.6.0.3") as client:
        await sign_in(client, "max@example.com")
        await api.post(f"/v1/users/{users['max@example.com']}/deactivate", expect=200)
        await api.post(f"/v1/users/{users['max@example.com']}/reactivate", expect=200)
        # A cookie taken while the account was in use must not work again.
        page = await client.get("/me", headers=HTML)
        assert page.status_code == 303


async def test_cookies_are_http_only_same_site_and_secure_behind_an_https_proxy(
    app: FastAPI, org: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tokenadmin.auth")
    # As `tokenadmin serve` runs it: uvicorn trusts X-Forwarded-* from 127.0.0.1 by default.
    proxied = ProxyHeadersMiddleware(app, trusted_hosts=["127.0.0.1"])  # type: ignore[arg-type]
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "198.51.100.20"}
    async with browser(proxied, "127.0.0.1", headers=forwarded) as client:
        form = await client.get("/login", headers=HTML)
        login_cookie = cookie(form, "ta_login_csrf")
        token = login_cookie.split(";")[0].split("=", 1)[1]
        # The browser speaks HTTPS to the proxy, so it sends the Secure cookie back.
        response = await client.post(
            "/login",
            data={"email": "ada@example.com", "password": PASSWORD, "csrf_token": token},
            headers=HTML | {"Cookie": f"ta_login_csrf={token}"},
        )
        assert response.status_code == 303, response.text
        session = cookie(response, "ta_session")
    for flags, same_site in ((login_cookie, "strict"), (session, "lax")):
        assert "HttpOnly" in flags
        assert f"SameSite={same_site}" in flags
        assert "Secure" in flags
    assert "signed in ada@example.com from 198.51.100.20" in auth_log(caplog)
    # Plain HTTP, or X-Forwarded-Proto from anyone but the proxy: no Secure flag, since a
    # browser would then not send the cookie back.
    async with browser(proxied, "203.0.113.1", headers=forwarded) as client:
        response = await sign_in(client, "ada@example.com")
        assert "Secure" not in cookie(response, "ta_session")


# --- CSRF and Origin on every dashboard write ----------------------------------------------------


def dashboard_writes() -> list[tuple[str, str]]:
    """Every dashboard write but the sign-in (which has a token of its own, tested below);
    signing out last."""
    return by_order(
        route
        for route in MATRIX
        if route[0] != "GET" and not route[1].startswith("/v1/") and route[1] != "/login"
    )


def writer(route: tuple[str, str]) -> str:
    """A caller allowed to make this write."""
    if route[1].startswith("/operator"):
        return "operator-session"
    return "a-member-session" if route[1].startswith("/me/") else "a-admin-session"


@pytest.fixture
async def world(api: Api, db: Database, clock: FakeClock) -> World:
    return await build_world(api, db, clock)


async def _as(client: httpx.AsyncClient, req: Req, caller: Caller, **headers: str) -> Any:
    """Send with the session of `caller`, its token as given by `caller.csrf`."""
    if headers:
        client.headers.update(headers)
    try:
        return await send(client, req, caller)
    finally:
        for name in headers:
            del client.headers[name]


async def test_every_dashboard_write_needs_this_sessions_token_and_this_sites_origin(
    client: httpx.AsyncClient, db: Database, world: World
) -> None:
    routes = dashboard_writes()
    assert len(routes) >= 12
    before = await snapshot(db)
    problems = []
    for route in routes:
        role = writer(route)
        caller = world.callers[role]
        other = world.callers["b-admin-session"]
        req = REQUESTS[route](world)
        attempts: dict[str, Any] = {
            "no token": (Caller(session=caller.session, csrf=""), {}),
            "another session's token": (Caller(session=caller.session, csrf=other.csrf), {}),
            "another site": (caller, {"Origin": "https://evil.example"}),
            "no site (Origin: null)": (caller, {"Origin": "null"}),
            "this site over another scheme and port": (
                caller,
                {"Origin": "http://tokenadmin.test:8443"},
            ),
        }
        for what, (who, headers) in attempts.items():
            response = await _as(client, req, who, **headers)
            code = None
            if response.headers.get("content-type", "").startswith("application/json"):
                code = response.json()["error"]["code"]
            elif "did not come from this dashboard" in response.text or "another site" in (
                response.text
            ):
                code = "csrf_failed"
            if response.status_code != 403 or code != "csrf_failed":
                problems.append(f"{route} with {what}: {response.status_code} {code}")
    assert not problems, "\n".join(problems)
    assert await snapshot(db) == before
    # The same requests from this site, with the session's token, go through.
    for route in routes:
        req = REQUESTS[route](world)
        response = await _as(
            client, req, world.callers[writer(route)], Origin="http://tokenadmin.test"
        )
        assert response.status_code in (200, 303), (route, response.status_code, response.text)


async def test_a_sign_in_from_another_site_or_with_another_browsers_token_is_refused(
    app: FastAPI, org: str, db: Database
) -> None:
    before = await snapshot(db)
    async with browser(app) as client:
        foreign = await sign_in(client, "ada@example.com", Origin="https://evil.example")
        assert foreign.status_code == 403
        assert "ta_session" not in foreign.headers.get("set-cookie", "")
    async with browser(app) as mine, browser(app) as theirs:
        await theirs.get("/login", headers=HTML)
        form = await mine.get("/login", headers=HTML)
        token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
        assert token
        # Their browser holds its own sign-in cookie: my form's token does not match it.
        response = await theirs.post(
            "/login",
            data={"email": "ada@example.com", "password": PASSWORD, "csrf_token": token.group(1)},
            headers=HTML,
        )
        assert response.status_code == 403
    assert await snapshot(db) == before
