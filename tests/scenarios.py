"""Shared steps of the behaviour tests: reading state back through the API, and moving time."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from tests.helpers import Api
from tokenadmin.clock import FakeClock
from tokenadmin.database import Database
from tokenadmin.sweeper import SweepReport, sweep

IDEMPOTENCY_TTL = timedelta(hours=48)


def utc(text: str) -> datetime:
    """An aware UTC datetime from 'YYYY-MM-DD HH:MM' (or any ISO text without an offset)."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def error_of(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """Assert the one error shape, its status and code; return the error's details."""
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "details"}, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]
    details: dict[str, Any] = body["error"]["details"]
    return details


async def journal(api: Api, org_id: str, **params: Any) -> list[dict[str, Any]]:
    """Journal entries of an organization, oldest first (the API answers newest first)."""
    query = {"limit": 1000, **params}
    page = await api.get(f"/v1/organizations/{org_id}/journal", params=query)
    entries: list[dict[str, Any]] = page["entries"]
    return list(reversed(entries))


async def last_entry_id(api: Api, org_id: str) -> int:
    page = await api.get(f"/v1/organizations/{org_id}/journal", params={"limit": 1})
    return int(page["entries"][0]["id"]) if page["entries"] else 0


async def entries_since(api: Api, org_id: str, after_id: int) -> list[dict[str, Any]]:
    """Entries written after entry `after_id`, oldest first."""
    return [e for e in await journal(api, org_id) if e["id"] > after_id]


async def get_user(api: Api, user_id: str) -> dict[str, Any]:
    user: dict[str, Any] = await api.get(f"/v1/users/{user_id}")
    return user


async def user_balance(api: Api, user_id: str) -> dict[str, Any]:
    balance: dict[str, Any] = await api.get(f"/v1/users/{user_id}/balance")
    return balance


async def org_api(api: Api, org_id: str, *scopes: str) -> Api:
    """An Api that calls with a key of the organization holding `scopes`."""
    return api.as_key(await api.key(org_id, *scopes))


async def reserve(
    api: Api,
    user: str,
    tokens: int,
    kind: str = "inference",
    *,
    expect: int | None = 201,
    idempotency_key: str | None = None,
    **fields: Any,
) -> httpx.Response:
    body = {"user": user, "kind": kind, "tokens": tokens, **fields}
    return await api.call(
        "POST", "/v1/reservations", json=body, expect=expect, idempotency_key=idempotency_key
    )


async def commit(
    api: Api,
    reservation_id: str,
    tokens: int | None = None,
    *,
    expect: int | None = 200,
    idempotency_key: str | None = None,
) -> httpx.Response:
    body = None if tokens is None else {"tokens": tokens}
    return await api.call(
        "POST",
        f"/v1/reservations/{reservation_id}/commit",
        json=body,
        expect=expect,
        idempotency_key=idempotency_key,
    )


async def release(api: Api, reservation_id: str, *, expect: int | None = 200) -> httpx.Response:
    return await api.call("POST", f"/v1/reservations/{reservation_id}/release", expect=expect)


def event(user: str, tokens: int, kind: str = "inference", **fields: Any) -> dict[str, Any]:
    """One event of a usage batch, with a fresh idempotency key unless given one."""
    return {
        "user": user,
        "kind": kind,
        "tokens": tokens,
        "idempotency_key": fields.pop("idempotency_key", uuid.uuid4().hex),
        **fields,
    }


async def run_sweeper(db: Database, clock: FakeClock) -> SweepReport:
    return await sweep(db, clock, idempotency_ttl=IDEMPOTENCY_TTL)
