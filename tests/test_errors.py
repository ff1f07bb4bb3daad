"""Refusals: one JSON error shape, the right status, and nothing changed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.types import Message, Receive, Scope, Send

from tests.helpers import Api, funded_org
from tests.scenarios import error_of, get_user, last_entry_id, org_api
from tests.servers import free_port
from tokenadmin.act import Act
from tokenadmin.api_key import service as api_key_service
from tokenadmin.app import BodyLimit, create_app
from tokenadmin.clock import FakeClock
from tokenadmin.config import Settings
from tokenadmin.dashboard.web import SESSION_COOKIE
from tokenadmin.database import Database

USAGE = {"kind": "inference", "tokens": 10}


async def _org_and_user(api: Api) -> tuple[str, dict[str, Any]]:
    org = await funded_org(api)
    return org, await api.user(org, "ana@example.com")


async def _operator_key(db: Database, clock: FakeClock, *scopes: str) -> str:
    _, secret = await db.write(
        lambda s: api_key_service.create(
            s, Act("test", clock.now()), org_id=None, name="limited", scopes=list(scopes)
        )
    )
    return secret


# --- authentication --------------------------------------------------------------------------


async def test_requests_without_a_key_are_refused_with_401(
    api: Api, client: httpx.AsyncClient
) -> None:
    org, _ = await _org_and_user(api)
    for method, path in (
        ("GET", f"/v1/organizations/{org}/balance"),
        ("POST", "/v1/usage"),
        ("POST", "/v1/organizations"),
    ):
        response = await client.request(method, path, json={})
        details = error_of(response, 401, "unauthenticated")
        assert "Bearer" in response.json()["error"]["message"]
        assert details["hint"]


@pytest.mark.parametrize(
    "authorization",
    ["Bearer ta_not-a-real-key", "Bearer ", "Basic dXNlcjpwYXNz", "ta_no_scheme"],
    ids=["unknown-key", "empty-key", "basic-auth", "no-scheme"],
)
async def test_requests_with_a_bad_key_are_refused_with_401(
    api: Api, client: httpx.AsyncClient, authorization: str
) -> None:
    org, ana = await _org_and_user(api)
    mark = await last_entry_id(api, org)
    response = await client.post(
        "/v1/usage",
        json={"user": ana["id"], **USAGE},
        headers={"Authorization": authorization, "Idempotency-Key": "k"},
    )
    error_of(response, 401, "unauthenticated")
    assert await last_entry_id(api, org) == mark


async def test_a_revoked_key_stops_working_at_once(api: Api) -> None:
    org, ana = await _org_and_user(api)
    created = await api.post(
        f"/v1/organizations/{org}/api-keys", {"name": "svc", "scopes": ["usage"]}, expect=201
    )
    service = api.as_key(created["key"])
    await service.use(ana["id"], 10, expect=200)
    await api.call("DELETE", f"/v1/organizations/{org}/api-keys/{created['id']}", expect=200)

    error_of(await service.use(ana["id"], 10), 401, "unauthenticated")
    assert (await get_user(api, ana["id"]))["inference"]["used"] == 10


# --- authorization ---------------------------------------------------------------------------


async def test_a_read_key_cannot_write(api: Api) -> None:
    org, ana = await _org_and_user(api)
    reader = await org_api(api, org, "read")
    mark = await last_entry_id(api, org)

    assert (await reader.balance(org))["inference"]["allocated"] == 200_000
    refusals = [
        await reader.call(
            "POST", f"/v1/organizations/{org}/users", json={"email": "x@example.com", "name": "X"}
        ),
        await reader.call("PATCH", f"/v1/users/{ana['id']}", json={"max_tokens": 300_000}),
        await reader.allowances(org, {"user": ana["id"], "max_tokens": 300_000}),
        await reader.use(ana["id"], 10),
        await reader.call("POST", f"/v1/users/{ana['id']}/deactivate"),
        await reader.call(
            "POST", f"/v1/organizations/{org}/api-keys", json={"name": "k", "scopes": ["admin"]}
        ),
    ]

    for response in refusals:
        error_of(response, 403, "forbidden")
    assert await last_entry_id(api, org) == mark
    assert (await get_user(api, ana["id"]))["max_tokens"] == 200_000


async def test_a_usage_key_cannot_change_allowances_or_users(api: Api) -> None:
    org, ana = await _org_and_user(api)
    service = await org_api(api, org, "usage")
    mark = await last_entry_id(api, org)

    details = error_of(
        await service.allowances(org, {"user": ana["id"], "max_tokens": 300_000}), 403, "forbidden"
    )
    assert details["scope"] == "admin"
    error_of(
        await service.call("PATCH", f"/v1/users/{ana['id']}", json={"max_tokens": 300_000}),
        403,
        "forbidden",
    )
    error_of(
        await service.call("PATCH", f"/v1/organizations/{org}", json={"overallocation": True}),
        403,
        "forbidden",
    )
    assert await last_entry_id(api, org) == mark


async def test_an_organization_key_cannot_create_organizations_or_record_purchases(
    api: Api,
) -> None:
    org, _ = await _org_and_user(api)
    admin = await org_api(api, org, "admin", "usage", "read")
    mark = await last_entry_id(api, org)

    error_of(await admin.call("POST", "/v1/organizations", json={"name": "Mine"}), 403, "forbidden")
    error_of(
        await admin.call(
            "POST", f"/v1/organizations/{org}/purchases", json={"inference_amount": 10**9}
        ),
        403,
        "forbidden",
    )
    assert await last_entry_id(api, org) == mark
    assert (await api.balance(org))["inference"]["capacity"] == 1_000_000
    assert [o["name"] for o in await api.get("/v1/organizations")] == ["Acme"]


async def test_an_operator_key_without_the_admin_scope_cannot_write(
    api: Api, db: Database, clock: FakeClock
) -> None:
    org, _ = await _org_and_user(api)
    reader = api.as_key(await _operator_key(db, clock, "read"))
    mark = await last_entry_id(api, org)

    error_of(await reader.call("POST", "/v1/organizations", json={"name": "X"}), 403, "forbidden")
    error_of(
        await reader.call(
            "POST", f"/v1/organizations/{org}/purchases", json={"inference_amount": 10**9}
        ),
        403,
        "forbidden",
    )
    assert await last_entry_id(api, org) == mark


async def test_a_key_without_the_usage_scope_cannot_meter(api: Api) -> None:
    org, ana = await _org_and_user(api)
    admin = await org_api(api, org, "admin")
    details = error_of(await admin.use(ana["id"], 10), 403, "forbidden")
    assert details["scope"] == "usage"
    error_of(
        await admin.call("POST", "/v1/reservations", json={"user": ana["id"], **USAGE}),
        403,
        "forbidden",
    )
    assert (await get_user(api, ana["id"]))["inference"]["used"] == 0


# --- request bodies --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [b'{"user": "a", "kind": ', b"not json", b'{"user": "a",}', b"[1, 2]", b'"text"'],
    ids=["truncated", "not-json", "trailing-comma", "array", "string"],
)
async def test_a_body_that_is_not_a_json_object_is_refused_with_400(
    api: Api, client: httpx.AsyncClient, body: bytes
) -> None:
    org, _ = await _org_and_user(api)
    mark = await last_entry_id(api, org)
    headers = {**api.headers("k1"), "Content-Type": "application/json"}
    response = await client.post("/v1/usage", content=body, headers=headers)
    error_of(response, 400, "malformed_json")
    response = await client.post(f"/v1/organizations/{org}/users", content=body, headers=headers)
    error_of(response, 400, "malformed_json")
    assert await last_entry_id(api, org) == mark


async def test_every_refusal_names_the_field_to_fix_or_none(
    api: Api, client: httpx.AsyncClient
) -> None:
    org, ana = await _org_and_user(api)
    mark = await last_entry_id(api, org)
    counts: dict[str, Any] = {"prompt_tokens": 1_000, "completion_tokens": 400}

    mismatch = error_of(await api.use(ana["id"], 1_500, **counts), 422, "invalid_request")
    [problem] = mismatch["errors"]
    assert problem["field"] == "tokens"
    assert "1,000 + 400 is 1,400, not 1,500" in problem["message"]
    event = {"user": ana["id"], "kind": "inference", "tokens": 1_500, **counts}
    batch = await api.call(
        "POST", "/v1/usage/batch", json={"events": [{**event, "idempotency_key": "e1"}]}
    )
    assert [e["field"] for e in error_of(batch, 422, "invalid_request")["errors"]] == [
        "events.0.tokens"
    ]

    headers = {**api.headers("k1"), "Content-Type": "application/json"}
    empty = await client.post("/v1/usage", content=b"", headers=headers)
    assert error_of(empty, 422, "invalid_request") == {}
    assert empty.json()["error"]["message"] == "The request needs a JSON object as its body."
    broken = await client.post("/v1/usage", content=b'{"user": "a",}', headers=headers)
    assert error_of(broken, 400, "malformed_json") == {}  # no character offset as a field
    assert "at character 13" in broken.json()["error"]["message"]
    assert await last_entry_id(api, org) == mark


async def test_usage_cannot_set_fields_it_does_not_own(api: Api) -> None:
    org, ana = await _org_and_user(api)
    other = await funded_org(api)
    mark = await last_entry_id(api, org)
    for extra in (
        {"org_id": other},
        {"used": 0},
        {"version": 7},
        {"role": "admin"},
        {"remaining": 10**9},
        {"journal_entry_id": 1},
    ):
        details = error_of(await api.use(ana["id"], 10, **extra), 422, "invalid_request")
        assert [e["field"] for e in details["errors"]] == list(extra)
    assert await last_entry_id(api, org) == mark
    assert await last_entry_id(api, other) > 0


async def test_a_user_update_cannot_set_fields_it_does_not_own(api: Api) -> None:
    org, ana = await _org_and_user(api)
    other = await funded_org(api)
    mark = await last_entry_id(api, org)
    for extra in (
        {"org_id": other},
        {"inference_used": 0},
        {"used": 0},
        {"version": 99},
        {"status": "deactivated"},
        {"email": "mallory@example.com"},
        {"inference_reserved": 0},
    ):
        details = error_of(
            await api.call("PATCH", f"/v1/users/{ana['id']}", json={"name": "Ana", **extra}),
            422,
            "invalid_request",
        )
        assert [e["field"] for e in details["errors"]] == list(extra)
    stored = await get_user(api, ana["id"])
    assert (stored["org_id"], stored["version"], stored["status"], stored["email"]) == (
        org,
        1,
        "active",
        "ana@example.com",
    )
    assert await last_entry_id(api, org) == mark


async def test_creation_cannot_set_balances_or_owners(api: Api) -> None:
    org, ana = await _org_and_user(api)
    other = await funded_org(api)
    mark = await last_entry_id(api, org)
    cases = [
        (
            f"/v1/organizations/{org}/users",
            {"email": "x@example.com", "name": "X", "org_id": other},
        ),
        (f"/v1/organizations/{org}/users", {"email": "x@example.com", "name": "X", "version": 5}),
        (f"/v1/organizations/{org}/users", {"email": "x@example.com", "name": "X", "used": 5}),
        ("/v1/organizations", {"name": "Rich", "capacity_inference": 10**12}),
        ("/v1/organizations", {"name": "Rich", "allocated_inference": 0}),
        (
            f"/v1/organizations/{org}/allowances",
            {"changes": [{"user": ana["id"], "inference_used": 0}]},
        ),
        (f"/v1/organizations/{org}/purchases", {"inference_amount": 5, "org_id": other}),
    ]
    for path, body in cases:
        error_of(await api.call("POST", path, json=body), 422, "invalid_request")
    error_of(
        await api.call("PATCH", f"/v1/organizations/{org}", json={"capacity_inference": 10**12}),
        422,
        "invalid_request",
    )
    assert await last_entry_id(api, org) == mark
    assert (await api.get(f"/v1/organizations/{org}/users"))["total"] == 1
    assert len(await api.get("/v1/organizations")) == 2


async def test_a_body_over_the_limit_is_refused_with_413(
    api: Api, client: httpx.AsyncClient
) -> None:
    org, _ = await _org_and_user(api)
    mark = await last_entry_id(api, org)
    headers = {**api.headers("big"), "Content-Type": "application/json"}
    response = await client.post("/v1/usage", content=b" " * 2_000_001, headers=headers)
    details = error_of(response, 413, "request_too_large")
    assert details == {}
    assert await last_entry_id(api, org) == mark


async def _chunks(size: int) -> AsyncIterator[bytes]:
    for _ in range(size // 100_000 + 1):
        yield b" " * 100_000


async def test_a_chunked_body_over_the_limit_is_refused_with_413(
    api: Api, client: httpx.AsyncClient
) -> None:
    await _org_and_user(api)
    headers = {**api.headers("big"), "Content-Type": "application/json"}
    response = await client.post("/v1/usage", content=_chunks(2_100_000), headers=headers)
    error_of(response, 413, "request_too_large")


@pytest.mark.parametrize("chunked", [False, True], ids=["declared", "chunked"])
async def test_a_dashboard_form_over_the_limit_is_refused_with_a_page(
    client: httpx.AsyncClient, chunked: bool
) -> None:
    form = b"email=ana%40example.com&password=" + b"x" * 2_000_001
    headers = {"Accept": "text/html", "Content-Type": "application/x-www-form-urlencoded"}
    content = _pieces(form) if chunked else form
    page = await client.post("/login", content=content, headers=headers)
    assert page.status_code == 413, page.text[:300]
    assert page.headers["content-type"].startswith("text/html")
    assert "request_too_large" in page.text
    assert "Request bodies are limited to" in page.text


async def _pieces(content: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(content), 100_000):
        yield content[start : start + 100_000]


# --- routes ----------------------------------------------------------------------------------


async def test_unknown_routes_and_methods_answer_json(api: Api) -> None:
    details = error_of(await api.call("GET", "/v1/nothing-here"), 404, "not_found")
    assert details == {}
    error_of(await api.call("GET", "/nothing"), 404, "not_found")
    error_of(await api.call("DELETE", "/v1/usage"), 405, "method_not_allowed")
    error_of(await api.call("PUT", "/v1/organizations"), 405, "method_not_allowed")


def _allowed(response: httpx.Response) -> set[str]:
    return set(response.headers.get("allow", "").replace(" ", "").split(","))


async def test_a_method_not_allowed_answer_lists_the_allowed_methods(
    api: Api, client: httpx.AsyncClient
) -> None:
    response = await api.call("TRACE", "/v1/organizations")
    error_of(response, 405, "method_not_allowed")
    assert _allowed(response) == {"GET", "POST"}
    page = await client.request("PUT", "/login", headers={"Accept": "text/html"})
    assert page.status_code == 405
    assert page.headers["content-type"].startswith("text/html")
    assert _allowed(page) == {"GET", "POST"}


async def test_unknown_objects_are_not_found(api: Api) -> None:
    await _org_and_user(api)
    missing = "00000000-0000-0000-0000-000000000000"
    error_of(await api.call("GET", f"/v1/organizations/{missing}"), 404, "not_found")
    error_of(await api.call("GET", f"/v1/users/{missing}"), 404, "not_found")
    error_of(
        await api.call("PATCH", f"/v1/users/{missing}", json={"max_tokens": 1}), 404, "not_found"
    )
    error_of(
        await api.call(
            "POST",
            f"/v1/organizations/{missing}/users",
            json={"email": "x@example.com", "name": "X"},
        ),
        404,
        "not_found",
    )
    details = error_of(await api.call("GET", "/v1/users/not-a-uuid"), 422, "invalid_request")
    assert details["errors"][0]["field"] == "path.user_id"


async def test_refusals_share_one_shape_across_statuses(api: Api) -> None:
    org, ana = await _org_and_user(api)
    await api.use(ana["id"], 200_000, expect=200)
    bo = await api.user(org, "bo@example.com")
    taken = await api.call(
        "POST", f"/v1/organizations/{org}/users", json={"email": "bo@example.com", "name": "B"}
    )
    details = error_of(taken, 409, "email_taken")
    assert details["email"] == "bo@example.com"
    error_of(await api.use(ana["id"], 1), 402, "insufficient_tokens")
    error_of(
        await api.call("PATCH", f"/v1/users/{bo['id']}", json={"expected_version": 0, "name": "B"}),
        409,
        "version_conflict",
    )
    error_of(
        await api.call("POST", "/v1/organizations", json={"name": "Z", "time_zone": "Mars/Base"}),
        422,
        "invalid_time_zone",
    )
    error_of(
        await api.call("POST", f"/v1/organizations/{org}/users", json={"email": "no", "name": "N"}),
        422,
        "invalid_request",
    )


# --- the database out of reach ---------------------------------------------------------------


async def test_a_503_says_when_to_send_again_in_json_and_on_a_page() -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"  # nothing listens there
    app = create_app(Settings(database_url=url), run_sweeper=False)
    transport = httpx.ASGITransport(app=app)
    key = {"Authorization": "Bearer ta_unknown"}
    usage = {"user": "ana@example.com", "kind": "inference", "tokens": 1}
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://t.test") as client:
            for response in (
                await client.get("/healthz"),
                await client.get("/v1/organizations", headers=key),
                await client.post("/v1/usage", json=usage, headers={**key, "Idempotency-Key": "k"}),
                await client.post("/v1/organizations", json={"name": "A"}, headers=key),
            ):
                error_of(response, 503, "unavailable")
                assert response.headers["Retry-After"] == "1", response.request.url
                assert response.headers["X-Request-ID"], response.request.url
            client.cookies.set(SESSION_COOKIE, "a-session")
            page = await client.get("/", headers={"Accept": "text/html"})
            assert page.status_code == 503, page.text[:300]
            assert page.headers["content-type"].startswith("text/html")
            assert page.headers["Retry-After"] == "1"
            assert page.headers["X-Request-ID"]
    finally:
        await app.state.db.dispose()


async def test_a_request_abandoned_mid_body_never_reaches_the_app() -> None:
    """A write that reads no body (deactivate, release, revoke) must not be applied for a
    client that left before its body ended: no one would get the answer."""
    reached: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        reached.append(scope)

    messages: list[Message] = [
        {"type": "http.request", "body": b"{", "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive() -> Message:
        return messages.pop(0)

    async def send(message: Message) -> None:
        raise AssertionError(f"nothing is answered: {message}")

    scope: Scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/users/0/deactivate",
        "headers": [(b"content-length", b"1000")],
    }
    await BodyLimit(app, max_bytes=2_000_000)(scope, receive, send)
    assert reached == []


async def test_a_static_file_sent_a_write_answers_405_with_what_it_allows(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/static/app.css")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD"


def test_the_openapi_says_the_health_check_may_answer_503() -> None:
    app = create_app(Settings(database_url="sqlite:///unused.db"), run_sweeper=False)
    answers = app.openapi()["paths"]["/healthz"]["get"]["responses"]
    assert answers["503"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorOut"
    }
