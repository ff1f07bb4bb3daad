"""Test support for the client: transports that fail on purpose, and a real server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import httpx
from fastapi import FastAPI

from tests.servers import running_servers
from tokenadmin.act import Act
from tokenadmin.api_key import service as api_key_service
from tokenadmin.client import AsyncClient, Client, OrganizationOut
from tokenadmin.database import Database

Failure = Literal["503", "connect", "503-after", "timeout-after"]
"""How one exchange fails: before the service saw it (503, connect) or after it answered."""

BASE_URL = "http://tokenadmin.test"
UNAVAILABLE = {"error": {"code": "unavailable", "message": "try again", "details": {}}}


@dataclass
class Exchanges:
    """What a flaky transport saw, in order."""

    requests: list[httpx.Request] = field(default_factory=list)
    replayed: list[bool] = field(default_factory=list)
    """For each answer that reached the client: whether it was an idempotent replay."""

    def keys(self, path: str) -> list[str | None]:
        return [r.headers.get("idempotency-key") for r in self.requests if r.url.path == path]

    def count(self, path: str) -> int:
        return sum(1 for r in self.requests if r.url.path == path)


class _Plan:
    def __init__(self, failures: list[Failure], path: str | None) -> None:
        self.failures = failures
        self.path = path
        self.seen = Exchanges()

    def next_failure(self, request: httpx.Request) -> Failure | None:
        self.seen.requests.append(request)
        if self.failures and (self.path is None or request.url.path == self.path):
            return self.failures.pop(0)
        return None

    def answered(self, response: httpx.Response) -> httpx.Response:
        self.seen.replayed.append(response.headers.get("idempotent-replayed") == "true")
        return response


class FlakyAsyncTransport(httpx.AsyncBaseTransport):
    """Forwards to `inner`, failing the first exchanges to `path` as `failures` say."""

    def __init__(
        self, inner: httpx.AsyncBaseTransport, failures: list[Failure], path: str | None = None
    ) -> None:
        self.inner = inner
        self.plan = _Plan(list(failures), path)
        self.seen = self.plan.seen

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        failure = self.plan.next_failure(request)
        if failure == "connect":
            raise httpx.ConnectError("connection refused", request=request)
        if failure == "503":
            return httpx.Response(503, json=UNAVAILABLE)
        response = await self.inner.handle_async_request(request)
        await response.aread()
        if failure == "503-after":
            return httpx.Response(503, json=UNAVAILABLE)
        if failure == "timeout-after":
            raise httpx.ReadTimeout("timed out reading the answer", request=request)
        return self.plan.answered(response)

    async def aclose(self) -> None:
        await self.inner.aclose()


class FlakyTransport(httpx.BaseTransport):
    """The synchronous FlakyAsyncTransport."""

    def __init__(
        self, inner: httpx.BaseTransport, failures: list[Failure], path: str | None = None
    ) -> None:
        self.inner = inner
        self.plan = _Plan(list(failures), path)
        self.seen = self.plan.seen

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        failure = self.plan.next_failure(request)
        if failure == "connect":
            raise httpx.ConnectError("connection refused", request=request)
        if failure == "503":
            return httpx.Response(503, json=UNAVAILABLE)
        response = self.inner.handle_request(request)
        response.read()
        if failure == "503-after":
            return httpx.Response(503, json=UNAVAILABLE)
        if failure == "timeout-after":
            raise httpx.ReadTimeout("timed out reading the answer", request=request)
        return self.plan.answered(response)

    def close(self) -> None:
        self.inner.close()


@dataclass(frozen=True)
class LiveServer:
    base_url: str
    operator_key: str


def _operator_key(database_url: str) -> str:
    async def create() -> str:
        db = Database(database_url, pool_size=1)
        try:
            act = Act("test", datetime.now(UTC))
            _, secret = await db.write(
                lambda s: api_key_service.create(
                    s, act, org_id=None, name="ops", scopes=["admin", "usage", "read"]
                )
            )
            return secret
        finally:
            await db.dispose()

    return asyncio.run(create())


@contextmanager
def live_server(database_path: Path) -> Iterator[LiveServer]:
    """One real server on a migrated SQLite file, with an operator key; stopped on exit."""
    database_url = f"sqlite:///{database_path}"
    secret = _operator_key(database_url)
    with running_servers(database_url, 1) as urls:
        yield LiveServer(urls[0], secret)


# --- the async client against the app in-process --------------------------------------------


@asynccontextmanager
async def async_client(
    app: FastAPI, key: str, transport: httpx.AsyncBaseTransport | None = None
) -> AsyncIterator[AsyncClient]:
    """An AsyncClient over the app in-process, through `transport` when given."""
    http = httpx.AsyncClient(transport=transport or httpx.ASGITransport(app=app))
    async with http, AsyncClient(BASE_URL, key, http_client=http, backoff=0) as client:
        yield client


async def funded(tokens: AsyncClient, inference: int = 1_000_000) -> OrganizationOut:
    org = await tokens.create_organization("Acme")
    await tokens.record_purchase(org.id, inference_amount=inference, training_amount=100_000)
    return org


# --- the sync client against scripted answers -----------------------------------------------

Answer = httpx.Response | type[httpx.TransportError]


class Script:
    """A transport that answers with `answers` in order and keeps what it was sent."""

    def __init__(self, *answers: Answer) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []
        self.transport = httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0)
        if isinstance(answer, httpx.Response):
            return answer
        raise answer("scripted failure", request=request)

    def keys(self) -> list[str | None]:
        return [r.headers.get("idempotency-key") for r in self.requests]


def scripted(*answers: Answer, **options: Any) -> tuple[Client, Script, list[float]]:
    script = Script(*answers)
    options.setdefault("backoff", 0.0)
    client = Client(
        BASE_URL, "ta_test", http_client=httpx.Client(transport=script.transport), **options
    )
    sleeps: list[float] = []
    client._sleep = sleeps.append
    return client, script, sleeps
