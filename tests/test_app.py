from __future__ import annotations

import json
import logging
import pathlib
import re
import subprocess
import sys
from functools import partial

import httpx
import pytest
from fastapi import FastAPI

from tests.helpers import Api, funded_org
from tests.scenarios import error_of
from tokenadmin import logs
from tokenadmin.app import create_app
from tokenadmin.auth import service as auth_service
from tokenadmin.clock import FakeClock
from tokenadmin.config import Settings
from tokenadmin.database import Database
from tokenadmin.errors import Unauthenticated

NEW_ID = re.compile(r"[0-9a-f]{32}")


async def test_openapi_describes_every_v1_route(client: httpx.AsyncClient) -> None:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    assert "/v1/usage" in paths
    assert "/v1/organizations/{org_id}/allowances" in paths
    assert paths["/v1/usage"]["post"]["summary"]


async def test_healthz_answers_with_the_database_kind(
    client: httpx.AsyncClient, db: Database
) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["database"] == db.dialect


async def test_people_sign_in_with_email_and_password_without_hints(api: Api, db: Database) -> None:
    org = await funded_org(api)
    await api.user(org, "ana@example.com", password="correct horse battery")
    user = await db.read(
        lambda s: auth_service.authenticate(s, "ANA@example.com", "correct horse battery")
    )
    assert user.email == "ana@example.com"
    messages = set()
    for email, password in [
        ("ana@example.com", "wrong password!"),
        ("nobody@example.com", "x" * 12),
    ]:
        try:
            await db.read(partial(auth_service.authenticate, email=email, password=password))
        except Unauthenticated as error:
            messages.add((error.code, error.message))
        else:
            raise AssertionError("signed in with a wrong password")
    assert len(messages) == 1


# --- request ids and the log -----------------------------------------------------------------


async def test_every_answer_carries_a_request_id_its_own_when_it_sent_a_sane_one(
    api: Api, client: httpx.AsyncClient
) -> None:
    org = await funded_org(api)
    answers = [
        await client.get("/healthz"),
        await client.get(f"/v1/organizations/{org}", headers=api.headers()),
        await client.get("/v1/organizations"),  # 401
        await client.get("/v1/nothing-here"),  # 404
        await client.post("/v1/usage", json={}, headers=api.headers("k")),  # 422
        await client.post("/v1/usage", content=b"{", headers=api.headers("k")),  # 400
        await client.get("/", headers={"Accept": "text/html"}),  # the dashboard's redirect
    ]
    ids = [answer.headers.get("X-Request-ID", "") for answer in answers]
    assert all(NEW_ID.fullmatch(rid) for rid in ids), ids
    assert len(set(ids)) == len(ids)

    for sent in ("abc-123", "Root=1-67891233-abcdef012345678912345678", "x" * 128):
        answer = await client.get("/healthz", headers={"X-Request-ID": sent})
        assert answer.headers["X-Request-ID"] == sent
    for insane in ("x" * 129, "two words", 'quote"d', "new\\nline", ""):
        answer = await client.get("/healthz", headers={"X-Request-ID": insane})
        assert NEW_ID.fullmatch(answer.headers["X-Request-ID"]), insane


async def test_an_unexpected_fault_is_answered_500_with_its_request_id(app: FastAPI) -> None:
    async def boom() -> None:
        raise RuntimeError("a fault of ours")

    app.add_api_route("/boom", boom)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t.test") as client:
        answer = await client.get("/boom", headers={"X-Request-ID": "fault-1"})
    error_of(answer, 500, "internal_error")
    assert answer.headers["X-Request-ID"] == "fault-1"


async def test_each_request_is_logged_once_at_info_with_its_id_status_and_actor(
    api: Api, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    # No caplog.set_level: create_app set tokenadmin's loggers to TOKENADMIN_LOG_LEVEL (info).
    org = await funded_org(api)
    ana = await api.user(org, "ana@example.com")
    caplog.clear()

    used = await client.post(
        "/v1/usage",
        json={"user": ana["id"], "kind": "inference", "tokens": 10},
        headers={**api.headers("log-1"), "X-Request-ID": "req-1"},
    )
    anonymous = await client.get("/v1/organizations")

    assert used.status_code == 200
    lines = [r for r in caplog.records if r.name == "tokenadmin.access"]
    fields = [
        (r.levelno, *(getattr(r, f) for f in ("request_id", "status", "actor"))) for r in lines
    ]
    assert fields == [
        (logging.INFO, "req-1", 200, "operator:ops"),
        (logging.INFO, anonymous.headers["X-Request-ID"], 401, None),
    ]
    assert lines[0].getMessage().startswith("POST /v1/usage 200 ")
    assert lines[0].getMessage().endswith("ms actor=operator:ops")


async def test_the_log_can_be_json_lines_each_with_the_request_id(
    db: Database, clock: FakeClock, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings(database_url=database_url, log_format="json")
    app = create_app(settings, clock=clock, database=db, run_sweeper=False)
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://t.test") as client:
            capsys.readouterr()
            denied = await client.get(
                "/v1/organizations", headers={"Authorization": "Bearer ta_wrong"}
            )
        lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    finally:
        logs.configure(Settings(database_url=database_url))  # text again, for the other tests

    rid = denied.headers["X-Request-ID"]
    assert [(line["logger"], line["level"], line["request_id"]) for line in lines] == [
        ("tokenadmin.auth", "WARNING", rid),  # the denial, logged while the request ran
        ("tokenadmin.access", "INFO", rid),
    ]
    assert {k: lines[1][k] for k in ("method", "path", "status", "actor")} == {
        "method": "GET",
        "path": "/v1/organizations",
        "status": 401,
        "actor": None,
    }


_FIRST_REQUESTS = """
import asyncio, contextlib, sys
from unittest import mock

import httpx
from fastapi import routing

from tokenadmin.app import create_app
from tokenadmin.config import Settings

resolved = []
original = routing._EffectiveRouteContext.from_api_route


def counted(*args, **kwargs):
    resolved.append(kwargs.get("original_route"))
    return original(*args, **kwargs)


async def main() -> None:
    app = create_app(Settings(database_url=sys.argv[1]), run_sweeper=False)
    started = sys.argv[2] == "started"
    async with app.router.lifespan_context(app) if started else contextlib.nullcontext():
        with mock.patch.object(routing._EffectiveRouteContext, "from_api_route", counted):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://x") as client:
                org = "/v1/organizations/00000000-0000-0000-0000-000000000001"
                assert (await client.post(f"{org}/allowances", json={})).status_code == 401
                assert (await client.get("/openai/v1/models")).status_code == 401
    print(len(resolved))


asyncio.run(main())
"""


@pytest.mark.parametrize("state", ["started", "not started"])
def test_a_started_server_resolves_every_route_before_its_first_request(
    tmp_path: pathlib.Path, state: str
) -> None:
    """FastAPI resolves an included route at the first request that reaches its router: a
    new process's first requests paid for most of the app's routes (app.resolve_routes).
    A fresh interpreter, since the routers are made once per process. Not started (no
    lifespan), the same requests resolve routes: the count can tell."""
    url = f"sqlite:///{tmp_path / 'unused.db'}"
    script = tmp_path / "first_requests.py"
    script.write_text(_FIRST_REQUESTS)
    answer = subprocess.run(
        [sys.executable, str(script), url, state.split()[0]],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    resolved = int(answer.stdout.strip().splitlines()[-1])
    assert resolved == 0 if state == "started" else resolved > 0
