"""The Python client: the async client against the app, the sync one against mocks and a server."""

from __future__ import annotations

import inspect
import json
import re
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.client_support import (
    BASE_URL,
    Failure,
    FlakyAsyncTransport,
    FlakyTransport,
    async_client,
    funded,
    live_server,
    scripted,
)
from tokenadmin import __version__
from tokenadmin.app import create_app
from tokenadmin.client import (
    AllowanceRow,
    AsyncClient,
    Client,
    Conflict,
    Forbidden,
    IdempotencyKeyReused,
    InsufficientTokens,
    InvalidRequest,
    Kind,
    NotFound,
    RateLimited,
    RetryPolicy,
    ServerError,
    TokenAdminAPIError,
    TokenAdminConnectionError,
    Unauthenticated,
    UsageEvent,
    VersionConflict,
)
from tokenadmin.client._core import Call, retry_after
from tokenadmin.config import Settings

ACCEPTED = {
    "accepted": True,
    "user_id": "8d7a2c7e-0000-4000-8000-000000000001",
    "email": "ana@example.com",
    "kind": "inference",
    "tokens": 10,
    "allowance": 200_000,
    "used": 10,
    "reserved": 0,
    "remaining": 199_990,
    "journal_entry_id": 1,
}


def refusal(status: int, code: str, **details: Any) -> httpx.Response:
    body = {"error": {"code": code, "message": f"refused: {code}", "details": details}}
    return httpx.Response(status, json=body)


# --- the async client against the app (SQLite and PostgreSQL) -------------------------------


@pytest.fixture
async def tokens(app: FastAPI, operator_key: str) -> AsyncIterator[AsyncClient]:
    async with async_client(app, operator_key) as client:
        yield client


async def test_async_client_runs_the_whole_flow(app: FastAPI, tokens: AsyncClient) -> None:
    assert (await tokens.health())["status"] == "ok"
    org = await tokens.create_organization("Acme", time_zone="Europe/Berlin")
    assert org.time_zone == "Europe/Berlin"
    org = await tokens.update_organization(org.id, name="Acme Corp")
    assert (await tokens.get_organization(org.id)).name == "Acme Corp"
    assert [o.id for o in await tokens.list_organizations()] == [org.id]

    purchase = await tokens.record_purchase(
        org.id, inference_amount=1_000_000, training_amount=100_000, payer="Finance"
    )
    new_expiry = datetime(2027, 1, 1, tzinfo=UTC)
    moved = await tokens.change_purchase_expiry(org.id, purchase.id, new_expiry)
    assert moved.expires_at == new_expiry
    assert [p.expires_at for p in await tokens.list_purchases(org.id)] == [new_expiry]

    ana = await tokens.create_user(org.id, "ana@example.com", "Ana")
    ben = await tokens.create_user(org.id, "ben@example.com", "Ben", role="admin")
    assert (ana.max_tokens, ana.max_train_tokens) == (200_000, 0)
    admins = await tokens.list_users(org.id, role="admin")
    assert ([u.email for u in admins.users], admins.total) == (["ben@example.com"], 1)
    by_email = await tokens.list_users(org.id, sort="email", order="desc", limit=1, offset=1)
    assert [u.email for u in by_email.users] == ["ana@example.com"]

    rows: list[AllowanceRow | dict[str, Any]] = [
        AllowanceRow(user="ana@example.com", max_tokens=300_000, max_train_tokens=20_000),
        {"user": str(ben.id), "max_train_tokens": 10_000},
    ]
    preview = await tokens.change_allowances(org.id, rows, dry_run=True)
    assert (preview.dry_run, preview.applied, preview.accepted) == (True, False, True)
    assert preview.balance_after["inference"].balance == 1_000_000 - 500_000
    assert (await tokens.get_user(ana.id)).max_tokens == 200_000
    applied = await tokens.change_allowances(org.id, rows, reason="Q2 plan")
    assert applied.applied
    assert (await tokens.get_user(ana.id)).max_tokens == 300_000

    used = await tokens.record_usage(
        "ana@example.com",
        "inference",
        1_500,
        model="m1",
        prompt_tokens=1_000,
        completion_tokens=500,
        metadata={"request": "r-1"},
    )
    assert (used.accepted, used.remaining) == (True, 298_500)
    batch = await tokens.record_usage_batch(
        [
            UsageEvent(user=str(ana.id), kind=Kind.inference, tokens=100, idempotency_key="b-1"),
            {"user": "ben@example.com", "kind": "training", "tokens": 50, "dataset": "docs"},
            {"user": "ana@example.com", "kind": "inference", "tokens": 10**9},
        ]
    )
    assert (batch.accepted, batch.refused) == (2, 1)
    assert batch.results[2].error is not None
    assert batch.results[2].error["code"] == "insufficient_tokens"

    held = await tokens.reserve(ana.id, "inference", 10_000, ttl_seconds=60)
    assert (held.status, held.reserved) == ("open", 10_000)
    committed = await tokens.commit_reservation(held.id, tokens=4_000)
    assert (committed.status, committed.committed, committed.reserved) == ("committed", 4_000, 0)
    again = await tokens.reserve(ana.id, Kind.inference, 7_000)
    released = await tokens.release_reservation(again.id)
    assert (released.status, released.reserved) == ("released", 0)

    mine = await tokens.get_user_balance(ana.id)
    assert (mine.inference.used, mine.inference.remaining) == (5_600, 294_400)
    balance = await tokens.get_balance(org.id)
    assert (balance.inference.allocated, balance.inference.used) == (500_000, 5_600)
    assert (balance.training.allocated, balance.training.used) == (30_000, 50)
    history = await tokens.get_usage_history(ana.id, granularity="month")
    assert sum(p.inference for p in history.points) == 5_600
    journal = await tokens.list_journal(org.id, user=ana.id, kind="inference", action="usage")
    assert sorted(e.amount for e in journal.entries) == [100, 1_500]
    first = await tokens.list_journal(org.id, limit=1)
    older = await tokens.list_journal(org.id, before_id=first.next_before_id, limit=1)
    assert older.entries[0].id < first.entries[0].id

    created = await tokens.create_api_key(org.id, "backend", ["usage"])
    assert [k.id for k in await tokens.list_api_keys(org.id)] == [created.id]
    async with async_client(app, created.key) as backend:
        assert (await backend.record_usage(ana.email, "inference", 10)).remaining == 294_390
        revoked = await tokens.revoke_api_key(org.id, created.id)
        assert revoked.revoked_at is not None
        with pytest.raises(Unauthenticated):
            await backend.record_usage(ana.email, "inference", 10)

    off = await tokens.deactivate_user(ben.id)
    assert off.status == "deactivated"
    with pytest.raises(TokenAdminAPIError) as refused:
        await tokens.record_usage(ben.id, "training", 1)
    assert refused.value.code == "user_deactivated"
    back = await tokens.reactivate_user(ben.id, max_tokens=250_000)
    assert (back.status, back.max_tokens) == ("active", 250_000)


async def test_refusals_raise_typed_errors_with_code_and_details(tokens: AsyncClient) -> None:
    org = await funded(tokens)
    ana = await tokens.create_user(org.id, "ana@example.com", "Ana")

    with pytest.raises(InsufficientTokens) as short:
        await tokens.record_usage(ana.id, "inference", 200_001, idempotency_key="too-much")
    assert (short.value.status, short.value.code) == (402, "insufficient_tokens")
    assert short.value.details["remaining"] == 200_000
    assert short.value.details["requested"] == 200_001
    assert short.value.idempotency_key == "too-much"
    assert "200,001" in short.value.message

    with pytest.raises(VersionConflict) as conflict:
        await tokens.update_user(ana.id, max_tokens=250_000, expected_version=ana.version + 7)
    assert isinstance(conflict.value, Conflict)
    assert conflict.value.status == 409

    with pytest.raises(InvalidRequest) as below:
        await tokens.change_allowances(org.id, [{"user": ana.email, "max_tokens": 10}])
    assert below.value.status == 422
    assert below.value.details["refused"][0]["email"] == "ana@example.com"

    with pytest.raises(IdempotencyKeyReused):
        await tokens.record_usage(ana.id, "inference", 5, idempotency_key="too-much")
    with pytest.raises(NotFound):
        await tokens.get_user(uuid.uuid4())
    with pytest.raises(InvalidRequest) as invalid:
        await tokens.record_usage(ana.id, "inference", 0)
    assert invalid.value.code == "invalid_amount"
    assert (await tokens.get_user_balance(ana.id)).inference.used == 0


@pytest.mark.parametrize("failure", ["503", "connect", "503-after", "timeout-after"])
async def test_usage_retried_after_a_failure_is_recorded_once_with_the_same_key(
    app: FastAPI, tokens: AsyncClient, operator_key: str, failure: Failure
) -> None:
    org = await funded(tokens)
    ana = await tokens.create_user(org.id, "ana@example.com", "Ana")
    flaky = FlakyAsyncTransport(httpx.ASGITransport(app=app), [failure], path="/v1/usage")

    async with async_client(app, operator_key, flaky) as client:
        accepted = await client.record_usage(ana.id, "inference", 1_234)

    assert accepted.used == 1_234
    keys = flaky.seen.keys("/v1/usage")
    assert len(keys) == 2
    assert keys[0] is not None
    assert keys[0] == keys[1]
    # When the first attempt reached the service, the retry is answered by replay.
    assert flaky.seen.replayed == [failure.endswith("-after")]
    assert (await tokens.get_user_balance(ana.id)).inference.used == 1_234
    entries = (await tokens.list_journal(org.id, action="usage")).entries
    assert [e.amount for e in entries] == [1_234]


async def test_a_retried_batch_records_each_event_once(
    app: FastAPI, tokens: AsyncClient, operator_key: str
) -> None:
    org = await funded(tokens)
    ana = await tokens.create_user(org.id, "ana@example.com", "Ana")
    flaky = FlakyAsyncTransport(httpx.ASGITransport(app=app), ["503-after"], "/v1/usage/batch")
    events = [{"user": ana.email, "kind": "inference", "tokens": n} for n in (10, 20, 30)]

    async with async_client(app, operator_key, flaky) as client:
        batch = await client.record_usage_batch(events)

    assert batch.accepted == 3
    assert all(r.replayed for r in batch.results)
    bodies = [json.loads(r.content) for r in flaky.seen.requests if r.url.path.endswith("batch")]
    assert len(bodies) == 2
    assert bodies[0] == bodies[1]
    assert (await tokens.get_user_balance(ana.id)).inference.used == 60


async def test_a_write_retried_after_a_timeout_is_applied_once(
    app: FastAPI, tokens: AsyncClient, operator_key: str
) -> None:
    org = await funded(tokens)
    path = f"/v1/organizations/{org.id}/users"
    flaky = FlakyAsyncTransport(httpx.ASGITransport(app=app), ["timeout-after"], path)

    async with async_client(app, operator_key, flaky) as client:
        ana = await client.create_user(org.id, "ana@example.com", "Ana", max_tokens=300_000)

    assert ana.max_tokens == 300_000
    assert flaky.seen.replayed == [True]
    assert (await tokens.list_users(org.id)).total == 1
    assert (await tokens.get_balance(org.id)).inference.allocated == 300_000


# --- the sync client's retries and errors, against scripted answers -------------------------


def test_5xx_is_retried_with_the_same_key_and_growing_backoff() -> None:
    client, script, sleeps = scripted(
        httpx.Response(503), httpx.Response(502), httpx.Response(200, json=ACCEPTED), backoff=0.5
    )

    assert client.record_usage("ana@example.com", "inference", 10).remaining == 199_990

    keys = script.keys()
    assert len(keys) == 3
    assert len(set(keys)) == 1
    assert uuid.UUID(str(keys[0])).version == 4
    assert len(sleeps) == 2
    assert 0.25 <= sleeps[0] <= 0.5
    assert 0.5 <= sleeps[1] <= 1.0


def test_retry_after_is_honoured() -> None:
    client, script, sleeps = scripted(
        httpx.Response(429, headers={"Retry-After": "2"}),
        httpx.Response(200, json=ACCEPTED),
        backoff=0.5,
    )
    client.record_usage("ana@example.com", "inference", 10)
    assert len(sleeps) == 1
    assert (
        2.0 <= sleeps[0] <= 3.0
    )  # what it asks, and a spread so clients don't all come back at once
    assert len(script.requests) == 2


def test_retry_after_may_be_an_http_date() -> None:
    response = httpx.Response(503, headers={"Retry-After": "Wed, 21 Oct 2026 07:28:03 GMT"})
    now = datetime(2026, 10, 21, 7, 28, 0, tzinfo=UTC)
    assert retry_after(response, now) == 3.0
    assert retry_after(httpx.Response(503, headers={"Retry-After": "soon"})) is None
    assert retry_after(httpx.Response(503)) is None


def test_backoff_has_jitter_and_a_ceiling() -> None:
    policy = RetryPolicy(max_retries=10, backoff=1.0, backoff_max=4.0)
    delays = [policy.delay(attempt) for attempt in range(6)]
    assert 0.5 <= delays[0] <= 1.0
    assert all(2.0 <= d <= 4.0 for d in delays[2:])
    assert 3.5 <= policy.delay(0, retry_after=3.5) <= 5.25
    assert policy.delay(0, retry_after=3600) <= 1.0  # an hour is not waited for in a call
    with pytest.raises(ValueError, match="negative"):
        RetryPolicy(max_retries=-1)


@pytest.mark.parametrize("code", ["idempotency_key_in_flight", "retry"])
def test_409s_that_ask_for_a_retry_are_retried(code: str) -> None:
    client, script, _ = scripted(refusal(409, code), httpx.Response(200, json=ACCEPTED))
    client.record_usage("ana@example.com", "inference", 10)
    assert len(script.requests) == 2
    assert len(set(script.keys())) == 1


@pytest.mark.parametrize(
    ("status", "code", "error_class"),
    [
        (400, "malformed_json", InvalidRequest),
        (401, "unauthenticated", Unauthenticated),
        (402, "insufficient_tokens", InsufficientTokens),
        (403, "forbidden", Forbidden),
        (404, "not_found", NotFound),
        (409, "version_conflict", VersionConflict),
        (409, "already_active", Conflict),
        (413, "request_too_large", InvalidRequest),
        (422, "idempotency_key_reused", IdempotencyKeyReused),
        (422, "below_minimum", InvalidRequest),
    ],
)
def test_other_4xx_raise_at_once_without_retrying(
    status: int, code: str, error_class: type[TokenAdminAPIError]
) -> None:
    client, script, sleeps = scripted(refusal(status, code, row=3))
    with pytest.raises(error_class) as raised:
        client.record_usage("ana@example.com", "inference", 10, idempotency_key="k-1")
    assert type(raised.value) is error_class
    error = raised.value
    assert (error.status, error.code, error.details) == (status, code, {"row": 3})
    assert error.message == f"refused: {code}"
    assert error.idempotency_key == "k-1"
    assert (len(script.requests), sleeps) == (1, [])


def test_retries_stop_after_max_retries() -> None:
    client, script, sleeps = scripted(*[httpx.Response(503)] * 3, max_retries=2)
    with pytest.raises(ServerError) as raised:
        client.deactivate_user(uuid.uuid4())
    assert raised.value.status == 503
    assert raised.value.code == "http_error"
    assert len(script.requests) == 3
    assert len(sleeps) == 2
    assert raised.value.idempotency_key == script.keys()[0]


def test_max_retries_zero_sends_once() -> None:
    client, script, _ = scripted(refusal(429, "too_many"), max_retries=0)
    with pytest.raises(RateLimited):
        client.get_balance(uuid.uuid4())
    assert len(script.requests) == 1


def test_connection_failures_are_retried_then_raised_with_the_key() -> None:
    client, script, _ = scripted(
        httpx.ConnectError, httpx.ReadTimeout, httpx.Response(200, json=ACCEPTED)
    )
    client.record_usage("ana@example.com", "inference", 10)
    assert len(script.requests) == 3
    assert len(set(script.keys())) == 1

    client, script, _ = scripted(*[httpx.ConnectError] * 4)
    with pytest.raises(TokenAdminConnectionError) as raised:
        client.record_usage("ana@example.com", "inference", 10, idempotency_key="req-7")
    assert raised.value.idempotency_key == "req-7"
    assert isinstance(raised.value.__cause__, httpx.ConnectError)
    assert "4 attempts" in str(raised.value)
    assert len(script.requests) == 4


def test_requests_carry_the_key_only_on_writes_and_always_the_user_agent() -> None:
    org_id = uuid.uuid4()
    page = {"users": [], "total": 0, "limit": 10, "offset": 20}
    client, script, _ = scripted(httpx.Response(200, json=page), httpx.Response(200, json=ACCEPTED))
    client.list_users(org_id, search="ana b", status="active", near_limit=0.9, limit=10, offset=20)
    client.record_usage("ana@example.com", "inference", 10, idempotency_key="caller-key")

    read, write = script.requests
    assert read.url.path == f"/v1/organizations/{org_id}/users"
    assert dict(read.url.params) == {
        "search": "ana b",
        "status": "active",
        "near_limit": "0.9",
        "limit": "10",
        "offset": "20",
    }
    assert "idempotency-key" not in read.headers
    assert write.headers["idempotency-key"] == "caller-key"
    assert json.loads(write.content) == {
        "user": "ana@example.com",
        "kind": "inference",
        "tokens": 10,
    }
    for request in script.requests:
        assert request.headers["user-agent"] == f"tokenadmin-python/{__version__}"
        assert request.headers["authorization"] == "Bearer ta_test"


def test_bodies_send_dates_kinds_and_a_null_expiry_as_json() -> None:
    purchase = {
        "id": str(uuid.uuid4()),
        "inference_amount": 5,
        "training_amount": 0,
        "purchased_on": "2026-03-01",
        "expires_at": None,
        "expired": False,
        "payer": "",
        "note": "",
        "created_at": "2026-03-01T00:00:00Z",
    }
    client, script, _ = scripted(*[httpx.Response(200, json=purchase)] * 2)
    client.record_purchase(
        "org-1", inference_amount=5, purchased_on=date(2026, 3, 1), expires_at=date(2026, 6, 1)
    )
    client.change_purchase_expiry("org-1", "p-1", None)
    created, cleared = (json.loads(r.content) for r in script.requests)
    assert created == {
        "inference_amount": 5,
        "training_amount": 0,
        "purchased_on": "2026-03-01",
        "expires_at": "2026-06-01",
    }
    assert cleared == {"expires_at": None}


def test_a_text_answer_is_read_as_the_text_itself() -> None:
    csv = "email,max_tokens\nana@example.com,200000\n"
    client, script, _ = scripted(
        httpx.Response(200, text=csv, headers={"content-type": "text/csv; charset=utf-8"})
    )
    assert client._send(Call("GET", "/v1/organizations/o/users.csv", str)) == csv
    assert script.requests[0].url.path == "/v1/organizations/o/users.csv"


def test_batch_events_keep_their_keys_through_retries() -> None:
    batch = {"accepted": 2, "refused": 0, "results": []}
    client, script, _ = scripted(httpx.Response(500), httpx.Response(200, json=batch))
    client.record_usage_batch(
        [
            UsageEvent(user="ana@example.com", kind=Kind.training, tokens=5, idempotency_key="e1"),
            {"user": "ana@example.com", "kind": "inference", "tokens": 7},
        ]
    )
    first, second = (json.loads(r.content)["events"] for r in script.requests)
    assert first == second
    assert first[0]["idempotency_key"] == "e1"
    assert uuid.UUID(first[1]["idempotency_key"])


def test_answers_that_are_not_the_api_raise_api_errors() -> None:
    client, _, _ = scripted(httpx.Response(502, text="<html>bad gateway</html>"), max_retries=0)
    with pytest.raises(ServerError) as gateway:
        client.health()
    assert gateway.value.code == "http_error"
    assert "bad gateway" in gateway.value.message

    client, _, _ = scripted(httpx.Response(200, json={"accepted": True}))
    with pytest.raises(TokenAdminAPIError) as odd:
        client.record_usage("ana@example.com", "inference", 10)
    assert odd.value.code == "unexpected_response"


def test_the_client_closes_only_the_http_client_it_made() -> None:
    given = httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(200, json={})))
    with Client(BASE_URL, "ta_test", http_client=given):
        pass
    assert not given.is_closed
    given.close()
    with Client(BASE_URL, "ta_test") as own:
        http = own._http
    assert http.is_closed


def _parameters(function: Callable[..., object]) -> list[tuple[str, object, object, object]]:
    signature = inspect.signature(function)
    return [
        (p.name, p.kind, p.default, p.annotation)
        for p in signature.parameters.values()
        if p.name != "self"
    ]


def _public(cls: type) -> set[str]:
    return {name for name in vars(cls) if not name.startswith("_")} - {"close", "aclose"}


def test_both_clients_offer_every_operation_with_the_same_parameters() -> None:
    names = _public(Client)
    assert names == _public(AsyncClient)
    for name in names:
        sync, asynchronous = getattr(Client, name), getattr(AsyncClient, name)
        assert _parameters(sync) == _parameters(asynchronous), name
        assert inspect.iscoroutinefunction(asynchronous), name
        assert not inspect.iscoroutinefunction(sync), name
        returned = inspect.signature(sync).return_annotation
        assert returned == inspect.signature(asynchronous).return_annotation, name
        assert inspect.getdoc(sync) == inspect.getdoc(asynchronous), name


def _call_of(name: str, arguments: dict[str, Any]) -> Call[Any]:
    """The Call that `Client.<name>(**arguments)` sends (it is not sent)."""
    client = Client(BASE_URL)
    client._send = lambda call: call  # type: ignore[assignment,method-assign,return-value]
    call: Call[Any] = getattr(client, name)(**arguments)
    client.close()
    return call


FILLERS: dict[str, Any] = {
    "rows": [{"user": "x"}],
    "events": [{"user": "x"}],
    "scopes": ["usage"],
    "metadata": {"k": "v"},
}


def _schema_fields(openapi: dict[str, Any], schema: Any) -> set[str]:
    """The properties of the first model a (possibly optional) body schema refers to."""
    text = json.dumps(schema)
    ref = text.split('"$ref": "', 1)[1].split('"', 1)[0]
    model = openapi["components"]["schemas"][ref.rsplit("/", 1)[1]]
    return set(model["properties"])


def test_the_client_covers_every_route_of_the_api_with_its_parameters(tmp_path: Path) -> None:
    app = create_app(Settings(database_url=f"sqlite:///{tmp_path}/x.db"), run_sweeper=False)
    openapi = app.openapi()
    routes = {
        (method.upper(), path): spec
        for path, methods in openapi["paths"].items()
        for method, spec in methods.items()
    }
    covered = set()
    for name in sorted(_public(Client)):
        parameters = inspect.signature(getattr(Client, name)).parameters
        call = _call_of(name, {p: FILLERS.get(p, "x") for p in parameters if p != "self"})
        matches = [
            (method, path)
            for method, path in routes
            if method == call.method
            and re.fullmatch(re.sub(r"\\{\w+\\}", "[^/]+", re.escape(path)), call.path)
        ]
        assert len(matches) == 1, (name, call.method, call.path, matches)
        spec = routes[matches[0]]
        queries = {p["name"] for p in spec.get("parameters", []) if p["in"] == "query"}
        assert set(call.params or {}) <= queries, name
        if call.json is not None:
            body_schema = spec["requestBody"]["content"]["application/json"]["schema"]
            assert set(call.json) <= _schema_fields(openapi, body_schema), name
        covered.add(matches[0])
    assert set(routes) - covered == set(), "routes without a client method"


def test_every_method_is_documented_in_client_md() -> None:
    text = (Path(__file__).parent.parent / "docs" / "client.md").read_text()
    missing = sorted(name for name in _public(Client) if f"`{name}" not in text)
    assert not missing, f"document these in docs/client.md: {missing}"


# --- the sync client against a real server --------------------------------------------------


@pytest.mark.slow
def test_sync_client_against_a_real_server(tmp_path: Path, sqlite_template: Path) -> None:
    database = tmp_path / "tokenadmin.db"
    database.write_bytes(sqlite_template.read_bytes())
    with live_server(database) as server:
        flaky = FlakyTransport(httpx.HTTPTransport(), ["503-after"], path="/v1/usage")
        http = httpx.Client(transport=flaky)
        with (
            http,
            Client(server.base_url, server.operator_key, http_client=http, backoff=0) as tokens,
        ):
            assert tokens.health()["database"] == "sqlite"
            org = tokens.create_organization("Acme")
            tokens.record_purchase(org.id, inference_amount=1_000_000)
            ana = tokens.create_user(org.id, "ana@example.com", "Ana")

            accepted = tokens.record_usage(ana.email, "inference", 2_000)

            assert accepted.remaining == 198_000
            assert flaky.seen.count("/v1/usage") == 2
            assert flaky.seen.replayed[-1] is True
            with pytest.raises(InsufficientTokens) as short:
                tokens.record_usage(ana.email, "inference", 198_001)
            assert short.value.details["remaining"] == 198_000
            assert tokens.get_balance(org.id).inference.used == 2_000
            assert [e.amount for e in tokens.list_journal(org.id, action="usage").entries] == [
                2_000
            ]
