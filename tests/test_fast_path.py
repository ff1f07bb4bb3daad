"""The metering routes' lean path (tokenadmin.usage.fast): it serves the requests it
understands, answers them byte for byte as the FastAPI routes do, and leaves every other
request to those routes, whose refusals it never imitates."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from random import Random
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.helpers import Api, funded_org
from tests.scenarios import reserve
from tokenadmin import metrics
from tokenadmin.errors import TokenAdminError, Unavailable
from tokenadmin.idempotency.service import Answer, in_flight
from tokenadmin.usage import service
from tokenadmin.usage.fast import FastSwitch

SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
SNAPSHOT = Path(__file__).with_name("test_fast_path_openapi.json")
RID = "0b3e1c4e-5d2a-4f7b-9c61-2a8f3e4d5c6b"


def _switch(app: FastAPI) -> FastSwitch:
    switch: FastSwitch = app.state.fast_metering
    return switch


# --- the OpenAPI description ---------------------------------------------------------------


def test_the_openapi_of_the_metering_routes_is_what_it_was_before_the_fast_path(
    app: FastAPI,
) -> None:
    """The snapshot was written from the routes before the fast path existed; the routes
    stay as the fast path's documentation and fallback."""
    spec = app.openapi()
    operations = {
        path: spec["paths"][path]
        for path in (
            "/v1/usage",
            "/v1/usage/batch",
            "/v1/reservations",
            "/v1/reservations/{reservation_id}/commit",
            "/v1/reservations/{reservation_id}/release",
        )
    }
    assert operations == json.loads(SNAPSHOT.read_text())


# --- byte for byte, against a metering that answers what it is told ------------------------


@dataclass
class Told:
    """A stand-in for the Coalescer: records the operations it gets and answers them in one
    of several ways, so both paths can be compared on every kind of answer."""

    mode: str = "fresh"
    operations: list[list[service.Operation]] = field(default_factory=list)

    def _answer(self, index: int, operation: service.Operation) -> Answer:
        if self.mode == "refused" or (self.mode == "mixed" and index % 3 == 2):
            details = {"requested": operation.tokens, "remaining": 5, "who": "ána\n\x1f"}
            error = {"code": "insufficient_tokens", "message": "Nö.", "details": details}
            return Answer(402, {"error": error})
        body: dict[str, Any] = {
            "accepted": True,
            "user_id": "3f1c7a52-0c57-4d8e-9d64-4a3a1b2c3d4e",
            "email": "ána.ßtraße@exämple.com",
            "kind": str(operation.kind or "inference"),
            "tokens": operation.tokens or 7,
            "allowance": 2**53,
            "used": 0,
            "reserved": 0,
            "remaining": 2**53,
            "journal_entry_id": 12345678901,
        }
        if operation.action != "usage":
            body = {"id": RID, "status": "open", "committed": None, **body}
        replayed = self.mode == "replayed" or (self.mode == "mixed" and index % 3 == 1)
        return Answer(201 if operation.action == "reserve" else 200, body, replayed)

    def _raise(self) -> None:
        if self.mode == "in_flight":
            raise in_flight("k-1")
        if self.mode == "unavailable":
            raise Unavailable("The database can't be reached; send it again.")

    async def submit(self, caller: service.Caller, operation: service.Operation) -> Answer:
        self.operations.append([operation])
        self._raise()
        return self._answer(0, operation)

    async def run(
        self, caller: service.Caller, operations: Sequence[service.Operation]
    ) -> list[Answer]:
        self.operations.append(list(operations))
        self._raise()
        return [self._answer(i, op) for i, op in enumerate(operations)]

    async def close(self) -> None:
        pass


@dataclass
class Sent:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    operations: list[list[service.Operation]]
    served: bool


async def _send(
    app: FastAPI,
    client: httpx.AsyncClient,
    path: str,
    body: bytes | None,
    headers: dict[str, str],
    *,
    fast: bool,
    mode: str = "fresh",
) -> Sent:
    told = Told(mode)
    app.state.coalescer = told
    switch = _switch(app)
    switch.enabled = fast
    before = switch.served
    response = await client.post(path, content=body, headers=headers)
    raw = [
        (name.lower(), value)
        for name, value in response.headers.raw
        if name.lower() != b"x-request-id"
    ]
    return Sent(
        response.status_code,
        raw,
        response.content,
        told.operations,
        switch.served > before,
    )


def _usage(**fields: Any) -> dict[str, Any]:
    return {"user": "Ana@Example.com", "kind": "inference", "tokens": 1_000, **fields}


def _event(n: int, **fields: Any) -> dict[str, Any]:
    return {**_usage(tokens=n + 1), "idempotency_key": f"e-{n}", **fields}


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


USAGE = "/v1/usage"
BATCH = "/v1/usage/batch"
RESERVE = "/v1/reservations"
COMMIT = f"/v1/reservations/{RID}/commit"
RELEASE = f"/v1/reservations/{RID}/release"

SERVED: list[tuple[str, str, bytes | None, dict[str, str | None]]] = [
    ("usage", USAGE, _json(_usage()), {}),
    ("usage by id", USAGE, _json(_usage(user=str(uuid.uuid4()))), {}),
    ("training", USAGE, _json(_usage(kind="training")), {}),
    ("largest amount", USAGE, _json(_usage(tokens=2**53)), {}),
    (
        "counts and a model",
        USAGE,
        _json(_usage(model="gpt-x", prompt_tokens=10, completion_tokens=5, dataset="d")),
        {},
    ),
    ("counts that add up", USAGE, _json(_usage(prompt_tokens=600, completion_tokens=400)), {}),
    (
        "counts charged by rates",
        USAGE,
        _json(
            {
                "user": "a@b.c",
                "kind": "inference",
                "model": "m",
                "prompt_tokens": 3,
                "completion_tokens": 0,
            }
        ),
        {},
    ),
    ("nulls", USAGE, _json(_usage(model=None, dataset=None, metadata=None)), {}),
    ("empty text", USAGE, _json(_usage(model="", dataset="")), {}),
    ("empty metadata", USAGE, _json(_usage(metadata={})), {}),
    (
        "metadata of every kind",
        USAGE,
        _json(
            _usage(
                metadata={"a": [1, 2.5, -0.0, 1e300, None, True], "é": {"b": "ü\n"}, "big": 2**80}
            )
        ),
        {},
    ),
    (
        "unicode user",
        USAGE,
        '{"user":"\u00e1na@ex.com","kind":"inference","tokens":1}'.encode(),
        {},
    ),
    ("duplicate fields", USAGE, b'{"user":"x","kind":"training","tokens":5,"tokens":6}', {}),
    ("spaces", USAGE, b' \n{ "user" : "x" , "kind":"inference", "tokens":5 }\n ', {}),
    ("charset", USAGE, _json(_usage()), {"content-type": "application/json; charset=utf-8"}),
    ("upper case type", USAGE, _json(_usage()), {"content-type": "Application/JSON"}),
    ("batch", BATCH, _json({"events": [_event(n) for n in range(7)]}), {}),
    (
        "batch with a key header",
        BATCH,
        _json({"events": [_event(0, metadata={"x": 1})]}),
        {"idempotency-key": "ignored"},
    ),
    ("batch of 1000", BATCH, _json({"events": [_event(n) for n in range(1000)]}), {}),
    ("reserve", RESERVE, _json(_usage(ttl_seconds=60)), {}),
    ("reserve, no key", RESERVE, _json(_usage(ttl_seconds=None)), {"idempotency-key": None}),
    ("reserve, longest", RESERVE, _json(_usage(ttl_seconds=86400)), {}),
    ("commit", COMMIT, _json({"tokens": 10}), {}),
    ("commit all", COMMIT, b"", {}),
    ("commit nothing said", COMMIT, _json({}), {}),
    ("commit null", COMMIT, _json({"tokens": None}), {}),
    ("commit zero", COMMIT, _json({"tokens": 0}), {}),
    (
        "commit, upper case id",
        COMMIT.upper()
        .replace("/V1/RESERVATIONS/", "/v1/reservations/")
        .replace("/COMMIT", "/commit"),
        b"",
        {},
    ),
    ("release", RELEASE, None, {}),
    ("release with a body it ignores", RELEASE, b"not json", {"content-type": "text/plain"}),
]

LEFT: list[tuple[str, str, bytes | None, dict[str, str | None]]] = [
    ("malformed", USAGE, b'{"user":', {}),
    ("not an object", USAGE, b"[1]", {}),
    ("null", USAGE, b"null", {}),
    ("empty", USAGE, b"", {}),
    ("unknown field", USAGE, _json(_usage(colour="red")), {}),
    ("zero", USAGE, _json(_usage(tokens=0)), {}),
    ("negative", USAGE, _json(_usage(tokens=-1)), {}),
    ("too many", USAGE, _json(_usage(tokens=2**53 + 1)), {}),
    ("a whole float", USAGE, _json(_usage(tokens=5.0)), {}),
    ("a fraction", USAGE, _json(_usage(tokens=5.5)), {}),
    ("a boolean", USAGE, _json(_usage(tokens=True)), {}),
    ("a string amount", USAGE, _json(_usage(tokens="5")), {}),
    ("null tokens", USAGE, _json(_usage(tokens=None)), {}),
    ("no tokens", USAGE, _json({"user": "x", "kind": "inference"}), {}),
    ("one count", USAGE, _json({"user": "x", "kind": "inference", "prompt_tokens": 5}), {}),
    ("counts that do not add up", USAGE, _json(_usage(prompt_tokens=1, completion_tokens=1)), {}),
    ("negative count", USAGE, _json(_usage(model="m", prompt_tokens=-1, completion_tokens=1)), {}),
    ("no user", USAGE, _json({"kind": "inference", "tokens": 1}), {}),
    ("empty user", USAGE, _json(_usage(user="")), {}),
    ("long user", USAGE, _json(_usage(user="a" * 321)), {}),
    ("user with NUL", USAGE, _json(_usage(user="a\x00b")), {}),
    ("user a number", USAGE, _json(_usage(user=5)), {}),
    ("user a surrogate", USAGE, b'{"user":"\\ud800","kind":"inference","tokens":1}', {}),
    ("kind unknown", USAGE, _json(_usage(kind="Inference")), {}),
    ("kind a list", USAGE, _json(_usage(kind=["inference"])), {}),
    ("long model", USAGE, _json(_usage(model="m" * 201)), {}),
    ("model a number", USAGE, _json(_usage(model=1)), {}),
    ("metadata a list", USAGE, _json(_usage(metadata=[1])), {}),
    ("metadata too big", USAGE, _json(_usage(metadata={"a": "é" * 700})), {}),
    ("metadata NUL key", USAGE, _json(_usage(metadata={"a\x00": 1})), {}),
    ("metadata NaN", USAGE, b'{"user":"x","kind":"inference","tokens":1,"metadata":{"a":NaN}}', {}),
    (
        "metadata overflow",
        USAGE,
        b'{"user":"x","kind":"inference","tokens":1,"metadata":{"a":1e999}}',
        {},
    ),
    ("metadata deep", USAGE, _json(_usage(metadata=json.loads('{"a":' * 40 + "1" + "}" * 40))), {}),
    ("no key", USAGE, _json(_usage()), {"idempotency-key": None}),
    ("empty key", USAGE, _json(_usage()), {"idempotency-key": ""}),
    ("long key", USAGE, _json(_usage()), {"idempotency-key": "k" * 256}),
    ("key with a tab", USAGE, _json(_usage()), {"idempotency-key": "a\tb"}),
    ("no content type", USAGE, _json(_usage()), {"content-type": None}),
    ("text", USAGE, _json(_usage()), {"content-type": "text/plain"}),
    ("json suffix", USAGE, _json(_usage()), {"content-type": "application/vnd.x+json"}),
    ("byte order mark", USAGE, b"\xef\xbb\xbf" + _json(_usage()), {}),
    ("utf-16", USAGE, json.dumps(_usage()).encode("utf-16"), {}),
    ("bad utf-8", USAGE, b'{"user":"\xff","kind":"inference","tokens":1}', {}),
    ("no key at all", USAGE, _json(_usage()), {"authorization": None}),
    ("not bearer", USAGE, _json(_usage()), {"authorization": "Basic abc"}),
    ("wrong key", USAGE, _json(_usage()), {"authorization": "Bearer ta_wrong"}),
    ("empty batch", BATCH, _json({"events": []}), {}),
    ("batch too big", BATCH, _json({"events": [_event(n) for n in range(1001)]}), {}),
    ("batch event without key", BATCH, _json({"events": [_usage()]}), {}),
    ("batch event bad key", BATCH, _json({"events": [_event(0, idempotency_key="")]}), {}),
    ("batch event bad", BATCH, _json({"events": [_event(0), _event(1, tokens=0)]}), {}),
    ("batch extra", BATCH, _json({"events": [_event(0)], "x": 1}), {}),
    ("batch not a list", BATCH, _json({"events": {"a": 1}}), {}),
    ("ttl zero", RESERVE, _json(_usage(ttl_seconds=0)), {}),
    ("ttl too long", RESERVE, _json(_usage(ttl_seconds=86401)), {}),
    ("ttl float", RESERVE, _json(_usage(ttl_seconds=60.0)), {}),
    ("reserve extra", RESERVE, _json(_usage(idempotency_key="x")), {}),
    ("commit negative", COMMIT, _json({"tokens": -1}), {}),
    ("commit list", COMMIT, b"[]", {}),
    ("commit null body", COMMIT, b"null", {}),
    ("commit extra", COMMIT, _json({"tokens": 1, "x": 2}), {}),
    ("commit spaces", COMMIT, b" ", {}),
    ("commit without hyphens", COMMIT.replace("-", ""), b"", {}),
    ("commit not an id", "/v1/reservations/0b3e1c4e-5d2a-4f7b-9c61-2a8f3e4d5cZZ/commit", b"", {}),
    ("commit braces", "/v1/reservations/{0b3e1c4e-5d2a-4f7b-9c61-2a8f3e4d5c6}/commit", b"", {}),
    ("release bad id", "/v1/reservations/nope/release", None, {}),
    ("trailing slash", USAGE + "/", _json(_usage()), {}),
]


def _headers(operator_key: str, extra: dict[str, str | None]) -> dict[str, str]:
    headers: dict[str, str | None] = {
        "authorization": f"Bearer {operator_key}",
        "idempotency-key": "k-1",
        "content-type": "application/json",
        **extra,
    }
    return {name: value for name, value in headers.items() if value is not None}


@SQLITE_ONLY
@pytest.mark.parametrize(
    "mode", ["fresh", "replayed", "refused", "mixed", "in_flight", "unavailable"]
)
async def test_the_fast_path_serves_what_it_understands_with_the_routes_very_answer(
    app: FastAPI, client: httpx.AsyncClient, operator_key: str, mode: str
) -> None:
    for case, path, body, extra in SERVED:
        headers = _headers(operator_key, dict(extra))
        fast = await _send(app, client, path, body, headers, fast=True, mode=mode)
        routed = await _send(app, client, path, body, headers, fast=False, mode=mode)

        assert fast.served, case
        assert not routed.served, case
        assert fast.operations == routed.operations, case  # the same operations, field for field
        assert (fast.status, fast.headers, fast.body) == (
            routed.status,
            routed.headers,
            routed.body,
        ), case


@SQLITE_ONLY
async def test_what_the_fast_path_does_not_understand_gets_the_routes_answer(
    app: FastAPI, client: httpx.AsyncClient, operator_key: str
) -> None:
    for case, path, body, extra in LEFT:
        headers = _headers(operator_key, dict(extra))
        fast = await _send(app, client, path, body, headers, fast=True)
        routed = await _send(app, client, path, body, headers, fast=False)

        assert not fast.served, case
        assert fast.operations == routed.operations, case
        assert (fast.status, fast.headers, fast.body) == (
            routed.status,
            routed.headers,
            routed.body,
        ), case


@SQLITE_ONLY
async def test_a_key_without_the_usage_scope_is_refused_by_the_route(
    app: FastAPI, client: httpx.AsyncClient, api: Api
) -> None:
    org = await funded_org(api)
    reader = await api.key(org, "read")
    headers = _headers(reader, {})
    fast = await _send(app, client, USAGE, _json(_usage()), headers, fast=True)
    routed = await _send(app, client, USAGE, _json(_usage()), headers, fast=False)

    assert not fast.served
    assert fast.status == 403
    assert not fast.operations
    assert (fast.status, fast.headers, fast.body) == (routed.status, routed.headers, routed.body)


# --- on a real database --------------------------------------------------------------------


async def test_metering_through_the_fast_path_replays_through_the_route_and_back(
    app: FastAPI, client: httpx.AsyncClient, api: Api
) -> None:
    org = await funded_org(api)
    await api.user(org, "ana@example.com")
    switch = _switch(app)
    body = _json(_usage(metadata={"request": "r-1"}))
    headers = {**api.headers("same-key"), "content-type": "application/json"}

    served = switch.served
    first = await client.post(USAGE, content=body, headers=headers)
    assert first.status_code == 200
    assert switch.served == served + 1
    assert first.json()["used"] == 1_000

    switch.enabled = False
    again = await client.post(USAGE, content=body, headers=headers)
    assert again.content == first.content
    assert again.headers["idempotent-replayed"] == "true"

    switch.enabled = True
    third = await client.post(USAGE, content=body, headers=headers)
    assert third.content == first.content
    assert [h for h in third.headers.raw if h[0].lower() != b"x-request-id"] == [
        h for h in again.headers.raw if h[0].lower() != b"x-request-id"
    ]
    assert switch.served == served + 2
    # Refused as a whole: the metering's own refusal, from the fast path.
    refused = await api.use("ana@example.com", 10**9)
    assert refused.status_code == 402
    assert refused.json()["error"]["code"] == "insufficient_tokens"
    assert switch.served == served + 3


async def test_reservations_and_batches_are_served_on_the_fast_path(
    app: FastAPI, client: httpx.AsyncClient, api: Api
) -> None:
    org = await funded_org(api)
    await api.user(org, "ana@example.com")
    switch = _switch(app)
    served = switch.served

    held = (await reserve(api, "ana@example.com", 5_000)).json()
    done = await api.call("POST", f"/v1/reservations/{held['id']}/commit", json={"tokens": 10})
    assert done.status_code == 200
    assert done.json()["committed"] == 10
    other = (await reserve(api, "ana@example.com", 5_000)).json()
    freed = await api.call("POST", f"/v1/reservations/{other['id']}/release")
    assert freed.status_code == 200
    assert freed.json()["status"] == "released"
    closed = await api.call("POST", f"/v1/reservations/{other['id']}/release")
    assert closed.status_code == 409
    events = [_event(n, user="ana@example.com") for n in range(3)]
    batch = await api.call("POST", BATCH, json={"events": [*events, _event(9, tokens=10**9)]})
    assert batch.status_code == 200
    assert (batch.json()["accepted"], batch.json()["refused"]) == (3, 1)

    assert switch.served == served + 6


async def test_fast_answers_carry_the_request_id_and_are_logged_by_route(
    app: FastAPI, client: httpx.AsyncClient, api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    org = await funded_org(api)
    await api.user(org, "ana@example.com")
    route = "/v1/reservations/{reservation_id}/commit"

    def observed() -> float:
        value = metrics.REGISTRY.get_sample_value(
            "tokenadmin_http_request_duration_seconds_count",
            {"method": "POST", "route": route, "status": "2xx"},
        )
        return value or 0.0

    held = (await reserve(api, "ana@example.com", 5_000)).json()
    before = observed()
    headers = {**api.headers(), "X-Request-ID": "trace-42"}
    with caplog.at_level("INFO", logger="tokenadmin.access"):
        done = await client.post(f"/v1/reservations/{held['id']}/commit", headers=headers)
    assert done.status_code == 200
    assert done.headers["x-request-id"] == "trace-42"
    assert observed() == before + 1
    [line] = [r for r in caplog.records if getattr(r, "request_id", None) == "trace-42"]
    assert getattr(line, "route") == route  # noqa: B009
    assert getattr(line, "actor")  # noqa: B009


@dataclass
class _Raising:
    """A coalescer whose every submit raises `error`."""

    error: Exception

    async def submit(self, caller: service.Caller, operation: service.Operation) -> Answer:
        raise self.error

    async def close(self) -> None:
        pass


async def test_a_refusal_raised_by_the_metering_has_the_handlers_shape(
    app: FastAPI, client: httpx.AsyncClient, api: Api
) -> None:
    stopping = Unavailable("The service is stopping and did not apply this request.")
    app.state.coalescer = _Raising(stopping)
    response = await api.use("ana@example.com", 5)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.json()["error"]["code"] == "unavailable"
    assert isinstance(Unavailable("x"), TokenAdminError)


async def test_a_fault_on_the_fast_path_is_answered_500_with_its_request_id(
    app: FastAPI, api: Api
) -> None:
    # A metering POST enters the app at RequestLog (app.TokenAdminApp), inside a
    # ServerErrorMiddleware of its own: a fault there is answered as anywhere else.
    org = await funded_org(api)
    await api.user(org, "ana@example.com")
    app.state.coalescer = _Raising(RuntimeError("a fault of ours"))
    served = _switch(app).served
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t.test") as client:
        answer = await client.post(
            "/v1/usage",
            json={"user": "ana@example.com", "kind": "inference", "tokens": 5},
            headers={**api.headers(), "Idempotency-Key": "fault-1", "X-Request-ID": "fault-1"},
        )
    assert _switch(app).served == served + 1  # the lean path took it
    assert answer.status_code == 500
    assert answer.json()["error"]["code"] == "internal_error"
    assert answer.headers["X-Request-ID"] == "fault-1"


async def test_a_metering_post_skips_fastapis_own_layers_and_others_do_not(
    app: FastAPI, client: httpx.AsyncClient, api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    org = await funded_org(api)
    await api.user(org, "ana@example.com")
    checked: list[str] = []

    def enabled() -> bool:
        checked.append("checked")
        return False

    telemetry: Any = app._native_telemetry  # FastAPI's check, once per request it handles
    monkeypatch.setattr(telemetry, "enabled", enabled)
    assert (await api.use("ana@example.com", 5)).status_code == 200
    assert (await client.post("/v1/usage/batch", headers=api.headers(), json={})).status_code
    assert checked == []
    assert (await client.get("/healthz")).status_code == 200
    assert (await client.get("/v1/usage", headers=api.headers())).status_code == 405
    assert checked == ["checked", "checked"]


VALUES: dict[str, list[Any]] = {
    "user": ["ana@example.com", "ANA@x", "", "a" * 320, "a" * 321, "a\x00", 5, None, ["a"], "é"],
    "kind": ["inference", "training", "Training", "", None, 1, {"a": 1}],
    "tokens": [1, 0, -1, 2**53, 2**53 + 1, 1.0, 1.5, True, "1", None, 10**30],
    "model": ["m", "", "m" * 200, "m" * 201, None, 3, "a\x00"],
    "prompt_tokens": [0, 1, 999, -1, 2.0, None, False, 2**53],
    "completion_tokens": [0, 1, 1, -5, None, "2"],
    "dataset": ["d", "", None, "d" * 201, []],
    "metadata": [{}, None, {"a": 1}, [], "x", {"a": {"b": [1, 2.5, None]}}, {"k": "v" * 5000}],
    "ttl_seconds": [1, 86400, 0, 86401, None, 60.0, "60"],
    "idempotency_key": ["k", "", "k" * 255, "k" * 256, "a\nb", 5, None],
    "colour": ["red"],
}


def _fuzzed(random: Random, allowed: Sequence[str]) -> dict[str, Any]:
    body: dict[str, Any] = {"user": "ana@example.com", "kind": "inference", "tokens": 5}
    if "idempotency_key" in allowed:
        body["idempotency_key"] = f"e-{random.randrange(10**6)}"
    for _ in range(random.randrange(4)):
        name = random.choice([*allowed, "colour"])
        if random.random() < 0.2:
            body.pop(name, None)
        else:
            body[name] = random.choice(VALUES[name])
    return body


@SQLITE_ONLY
async def test_random_bodies_get_the_same_answer_on_both_paths(
    app: FastAPI, client: httpx.AsyncClient, operator_key: str
) -> None:
    random = Random(14)
    fields = ["user", "kind", "tokens", "model", "prompt_tokens", "completion_tokens"]
    fields += ["dataset", "metadata"]
    served = left = 0
    for _ in range(300):
        path = random.choice([USAGE, BATCH, RESERVE, COMMIT])
        if path == USAGE:
            body: Any = _fuzzed(random, fields)
        elif path == RESERVE:
            body = _fuzzed(random, [*fields, "ttl_seconds"])
        elif path == BATCH:
            count = random.choice([1, 2, 5])
            body = {"events": [_fuzzed(random, [*fields, "idempotency_key"]) for _ in range(count)]}
        else:
            body = random.choice([{}, {"tokens": 5}, {"tokens": None}, {"tokens": -1}, [], None])
        headers = _headers(operator_key, {})
        raw = _json(body)
        fast = await _send(app, client, path, raw, headers, fast=True, mode="mixed")
        routed = await _send(app, client, path, raw, headers, fast=False, mode="mixed")

        assert fast.operations == routed.operations, raw
        assert (fast.status, fast.headers, fast.body) == (
            routed.status,
            routed.headers,
            routed.body,
        ), raw
        served += fast.served
        left += not fast.served
    assert served > 50
    assert left > 50
