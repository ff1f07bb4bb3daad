"""A corpus of bad inputs at every write (issue 5, item 11).

Every write route, API and dashboard, is found in the app's routes (a new one fails the
suite until it is listed here). The API's are sent, from each route's OpenAPI schema, bad
amounts (zero, negative, fractional, 2^53+1, 2^63, 10^30, strings, null, booleans), bad
text (NUL, unpaired surrogates, 100,000 characters, wrong types), bad emails, times and
metadata (NaN, Infinity, NUL), unknown fields, malformed JSON, the wrong content type, a
10 MB body (declared and chunked), invalid UTF-8, bad path parameters and bad idempotency
keys. Each answer must be a 4xx with a code docs/api.md lists, at the status it lists, and
every table must be as it was. The dashboard's forms get the same kinds of wrong as typed
text; their answers are pages, so there the proof is a 4xx and an unchanged database. Then
each route's valid request goes through, to show the corpus was refused for what it held.

Names, emails and notes with markup are stored as typed and render as text on every
dashboard page that shows them.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import secrets
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from markupsafe import escape
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from tests.helpers import Api, funded_org
from tests.scenarios import reserve
from tests.test_webhooks import delivered_delivery
from tokenadmin.app import AMOUNT_FIELDS, UPLOADS
from tokenadmin.auth import service as auth_service
from tokenadmin.clock import FakeClock
from tokenadmin.database import Database
from tokenadmin.journal import repository as journal_repository
from tokenadmin.journal.service import JournalFilter
from tokenadmin.models import Base, DashboardSession, Operator
from tokenadmin.user import repository as user_repository

ROOT = Path(__file__).parent.parent
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
TEN_MB = 10 * 1024 * 1024


def documented_codes() -> dict[str, int]:
    """Error code → HTTP status, from the error table of docs/api.md."""
    text = (ROOT / "docs" / "api.md").read_text()
    table = text[text.index("## Errors") :]
    codes: dict[str, int] = {}
    for line in table.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[1].isdigit():
            for code in re.findall(r"`([a-z_]+)`", cells[0]):
                codes[code] = int(cells[1])
    return codes


DOCUMENTED = documented_codes()
BOOST_ENDS = "2026-06-01T00:00:00Z"


# --- the world every write is tried in ---------------------------------------------------


@dataclass
class World:
    org: str
    ana: str
    ana_email: str
    bo: str
    purchase: str
    key: str
    reservation: str
    token_request: str
    member_request: str = ""
    """A pending request of the dashboard's signed-in member, when there is one."""
    personal_key: str = ""
    """A personal key of ana's."""
    member_key: str = ""
    """A personal key of the dashboard's signed-in member, when there is one."""
    batch: str = ""
    """A saved allowance change (of cy's, whom no other write touches), to revert."""
    webhook: str = ""
    """A webhook endpoint of the organization."""
    webhook_delivery: str = ""
    """A delivered delivery of the webhook, to resend."""
    boost: str = ""
    """An active boost of dee's, to end."""


async def make_world(api: Api, db: Database, clock: FakeClock) -> World:
    org = await funded_org(api)
    ana = await api.user(org, "ana@example.com", max_train_tokens=50_000)
    bo = await api.user(org, "bo@example.com")
    await api.post(f"/v1/users/{bo['id']}/deactivate", expect=200)
    purchases = await api.get(f"/v1/organizations/{org}/purchases")
    key = await api.post(
        f"/v1/organizations/{org}/api-keys", {"name": "spare", "scopes": ["read"]}, expect=201
    )
    reservation = (await reserve(api, ana["id"], 100)).json()
    asked = await api.post(
        "/v1/token-requests",
        {"user": ana["id"], "kind": "inference", "amount": 1_000, "reason": "a project"},
        expect=201,
    )
    rates = {"prompt_rate": "1", "completion_rate": "1"}
    await api.call("PUT", "/v1/models/m1", json=rates, expect=200)
    await api.call("PUT", f"/v1/organizations/{org}/models/m1", json=rates, expect=200)
    personal = await api.post(f"/v1/users/{ana['id']}/api-keys", {"name": "ana's"}, expect=201)
    cy = await api.user(org, "cy@example.com")
    await api.allowances(org, {"user": cy["id"], "max_train_tokens": 1_000}, expect=200)
    saved = await api.get(f"/v1/organizations/{org}/allowance-batches", params={"limit": 1})
    hook = await api.post(
        f"/v1/organizations/{org}/webhooks", {"url": "https://hooks.example.com/t"}, expect=201
    )
    # A boost of dee's, whom no other write touches (a boost changes the user's version),
    # paid by a purchase of its own, so every other write has the balance it had.
    await api.purchase(org, 201_000)
    dee = await api.user(org, "dee@example.com")
    boost = await api.post(
        f"/v1/organizations/{org}/boosts",
        {"user": dee["id"], "kind": "inference", "amount": 1_000, "ends_at": BOOST_ENDS},
        expect=201,
    )
    return World(
        webhook=hook["id"],
        webhook_delivery=await delivered_delivery(db, clock, org, hook["id"]),
        boost=boost["id"],
        batch=saved["batches"][0]["id"],
        personal_key=personal["id"],
        org=org,
        ana=ana["id"],
        ana_email=ana["email"],
        bo=bo["id"],
        purchase=purchases[0]["id"],
        key=key["id"],
        reservation=reservation["id"],
        token_request=asked["id"],
    )


Snapshot = dict[str, list[tuple[str, ...]]]


async def snapshot(db: Database) -> Snapshot:
    """Every row of every table: "nothing was written" means this did not change."""

    async def read(session: AsyncSession) -> Snapshot:
        tables = {}
        for table in Base.metadata.sorted_tables:
            rows = (await session.execute(select(table))).all()
            tables[table.name] = sorted(tuple(map(repr, row)) for row in rows)
        return tables

    return await db.read(read)


async def fingerprint(db: Database, ignore: frozenset[str] = frozenset()) -> tuple[Any, ...]:
    """In one query, what a write changes: the number of rows of every table, the last
    journal entry, the versions of users and organizations, revoked keys, expiries. Taken
    after each bad input, to name the one that wrote; the full snapshot, before and after
    them all, is the proof."""
    tables = Base.metadata.tables
    parts = [
        select(func.count()).select_from(t).scalar_subquery()
        for name, t in tables.items()
        if name not in ignore
    ]
    parts += [
        select(func.max(tables["journal_entries"].c.id)).scalar_subquery(),
        select(func.sum(tables["users"].c.version)).scalar_subquery(),
        select(func.sum(tables["organizations"].c.version)).scalar_subquery(),
        select(func.count(tables["api_keys"].c.revoked_at)).scalar_subquery(),
        select(func.count(tables["purchases"].c.expires_at)).scalar_subquery(),
    ]

    async def read(session: AsyncSession) -> tuple[Any, ...]:
        return tuple((await session.execute(select(*parts))).one())

    return await db.read(read)


def changed_tables(before: Snapshot, after: Snapshot) -> list[str]:
    return sorted(name for name in before if before[name] != after.get(name))


# --- the API's writes --------------------------------------------------------------------


@dataclass(frozen=True)
class Write:
    """A write route: where it is, a valid body (None: it takes none), what it answers."""

    path: Callable[[World], str]
    body: Callable[[World], dict[str, Any] | None]
    status: int
    key_required: bool = False
    takes_key: bool = True
    """Whether the Idempotency-Key header applies (a batch's events carry their own keys)."""
    writes: bool = True
    """Whether the valid request changes the database (a preview answers without writing)."""
    names: tuple[str, ...] = ()
    """Path parameters that are names any text may be (a model's): not tried as bad values."""


def _distribution(w: World) -> dict[str, Any]:
    return {
        "inference": {"method": "fixed", "amount": 1_000, "minimum": 10, "maximum": 5_000},
        "training": {"method": "percent", "percent": 10, "minimum": 0, "maximum": None},
        "users": [w.ana_email],
        "reason": "more",
    }


def _usage(w: World) -> dict[str, Any]:
    return {
        "user": w.ana,
        "kind": "inference",
        "tokens": 10,
        "model": "large",
        "prompt_tokens": 4,
        "completion_tokens": 6,
        "dataset": "docs",
        "metadata": {"request": "r-1", "tags": ["a", 1, 2.5, None, True]},
    }


def _model(w: World) -> dict[str, Any]:
    return {
        "prompt_rate": "0.5",
        "completion_rate": 2,
        "upstream_base_url": "https://up.example/v1",
        "upstream_api_key": "sk-x",
        "upstream_model": "m2-up",
        "max_output_tokens": 100,
    }


API_WRITES: dict[tuple[str, str], Write] = {
    ("PUT", "/v1/models/{name:path}"): Write(
        lambda w: "/v1/models/m2", _model, 200, names=("{name:path}",)
    ),
    ("DELETE", "/v1/models/{name:path}"): Write(lambda w: "/v1/models/m1", lambda w: None, 200),
    ("PUT", "/v1/organizations/{org_id}/models/{name:path}"): Write(
        lambda w: f"/v1/organizations/{w.org}/models/m1", _model, 200, names=("{name:path}",)
    ),
    ("DELETE", "/v1/organizations/{org_id}/models/{name:path}"): Write(
        lambda w: f"/v1/organizations/{w.org}/models/m1", lambda w: None, 200
    ),
    ("PUT", "/v1/organizations/{org_id}/model-access"): Write(
        lambda w: f"/v1/organizations/{w.org}/model-access", lambda w: {"allowed": ["m1"]}, 200
    ),
    ("PUT", "/v1/organizations/{org_id}/upstream"): Write(
        lambda w: f"/v1/organizations/{w.org}/upstream",
        lambda w: {"base_url": "https://up.example/v1", "api_key": "sk-x"},
        200,
    ),
    ("POST", "/v1/users/{user_id}/api-keys"): Write(
        lambda w: f"/v1/users/{w.ana}/api-keys", lambda w: {"name": "laptop"}, 201
    ),
    ("DELETE", "/v1/users/{user_id}/api-keys/{key_id}"): Write(
        lambda w: f"/v1/users/{w.ana}/api-keys/{w.personal_key}", lambda w: None, 200
    ),
    ("POST", "/v1/token-requests"): Write(
        lambda w: "/v1/token-requests",
        lambda w: {"user": w.ana_email, "kind": "training", "amount": 1_000, "reason": "a run"},
        201,
    ),
    ("POST", "/v1/token-requests/{request_id}/approve"): Write(
        lambda w: f"/v1/token-requests/{w.token_request}/approve",
        lambda w: {"amount": 500, "note": "go"},
        200,
    ),
    ("POST", "/v1/token-requests/{request_id}/deny"): Write(
        lambda w: f"/v1/token-requests/{w.token_request}/deny",
        lambda w: {"note": "not now"},
        200,
    ),
    ("POST", "/v1/token-requests/{request_id}/withdraw"): Write(
        lambda w: f"/v1/token-requests/{w.token_request}/withdraw", lambda w: None, 200
    ),
    ("POST", "/v1/organizations"): Write(
        lambda w: "/v1/organizations",
        lambda w: {
            "name": "Beta",
            "time_zone": "Europe/Berlin",
            "period": "monthly",
            "min_inference": 100_000,
            "min_training": 10,
            "overallocation": False,
        },
        201,
    ),
    ("PATCH", "/v1/organizations/{org_id}"): Write(
        lambda w: f"/v1/organizations/{w.org}",
        lambda w: {
            "name": "Acme 2",
            "time_zone": "Europe/Berlin",
            "period": "monthly",
            "min_inference": 150_000,
            "min_training": 0,
            "overallocation": True,
            "alert_thresholds": [50, 90],
            "alert_balance_below_percent": 20,
        },
        200,
    ),
    ("PUT", "/v1/organizations/{org_id}/policy"): Write(
        lambda w: f"/v1/organizations/{w.org}/policy",
        lambda w: {
            "inference": {
                "preset": "custom",
                "enabled": True,
                "floor": 200_000,
                "ceiling": 2_000_000,
                "increase_enabled": True,
                "trigger_percent": 80,
                "bump_percent": 25,
                "cooldown_hours": 24,
                "reclaim_enabled": True,
                "idle_days": 30,
                "reclaim_every_hours": 24,
            },
            "training": {"preset": "standard", "bump_amount": 10_000},
            "dry_run": False,
        },
        200,
    ),
    ("POST", "/v1/organizations/{org_id}/policy/run"): Write(
        lambda w: f"/v1/organizations/{w.org}/policy/run",
        lambda w: {"dry_run": True},
        200,
        writes=False,
    ),
    ("POST", "/v1/organizations/{org_id}/boosts"): Write(
        lambda w: f"/v1/organizations/{w.org}/boosts",
        lambda w: {
            "user": w.ana_email,
            "kind": "inference",
            "amount": 5_000,
            "ends_at": BOOST_ENDS,
            "reason": "launch week",
        },
        201,
    ),
    ("POST", "/v1/organizations/{org_id}/boosts/{boost_id}/end"): Write(
        lambda w: f"/v1/organizations/{w.org}/boosts/{w.boost}/end", lambda w: None, 200
    ),
    ("POST", "/v1/organizations/{org_id}/purchases"): Write(
        lambda w: f"/v1/organizations/{w.org}/purchases",
        lambda w: {
            "inference_amount": 5_000,
            "training_amount": 500,
            "purchased_on": "2026-03-01",
            "expires_at": "2027-01-01T00:00:00Z",
            "payer": "Finance",
            "note": "Q2",
        },
        201,
    ),
    ("PATCH", "/v1/organizations/{org_id}/purchases/{purchase_id}"): Write(
        lambda w: f"/v1/organizations/{w.org}/purchases/{w.purchase}",
        lambda w: {"expires_at": "2027-01-01T00:00:00Z"},
        200,
    ),
    ("POST", "/v1/organizations/{org_id}/api-keys"): Write(
        lambda w: f"/v1/organizations/{w.org}/api-keys",
        lambda w: {"name": "platform", "scopes": ["usage", "read"]},
        201,
    ),
    ("DELETE", "/v1/organizations/{org_id}/api-keys/{key_id}"): Write(
        lambda w: f"/v1/organizations/{w.org}/api-keys/{w.key}", lambda w: None, 200
    ),
    ("POST", "/v1/organizations/{org_id}/webhooks"): Write(
        lambda w: f"/v1/organizations/{w.org}/webhooks",
        lambda w: {
            "url": "https://hooks.example.com/new",
            "kinds": ["balance.low", "token_request.made"],
            "enabled": True,
            "description": "ops",
        },
        201,
    ),
    ("PATCH", "/v1/organizations/{org_id}/webhooks/{webhook_id}"): Write(
        lambda w: f"/v1/organizations/{w.org}/webhooks/{w.webhook}",
        lambda w: {
            "url": "https://hooks.example.com/moved",
            "kinds": [],
            "enabled": False,
            "description": "moved",
        },
        200,
    ),
    ("DELETE", "/v1/organizations/{org_id}/webhooks/{webhook_id}"): Write(
        lambda w: f"/v1/organizations/{w.org}/webhooks/{w.webhook}", lambda w: None, 200
    ),
    ("POST", "/v1/organizations/{org_id}/webhooks/{webhook_id}/rotate-secret"): Write(
        lambda w: f"/v1/organizations/{w.org}/webhooks/{w.webhook}/rotate-secret",
        lambda w: None,
        200,
    ),
    ("POST", "/v1/webhook-deliveries/{delivery_id}/resend"): Write(
        lambda w: f"/v1/webhook-deliveries/{w.webhook_delivery}/resend", lambda w: None, 200
    ),
    ("POST", "/v1/organizations/{org_id}/users"): Write(
        lambda w: f"/v1/organizations/{w.org}/users",
        lambda w: {
            "email": "new@example.com",
            "name": "New",
            "role": "member",
            "max_tokens": 200_000,
            "max_train_tokens": 10,
            "password": "a long enough password",
        },
        201,
    ),
    ("PATCH", "/v1/users/{user_id}"): Write(
        lambda w: f"/v1/users/{w.ana}",
        lambda w: {
            "name": "Ana B",
            "role": "admin",
            "max_tokens": 250_000,
            "max_train_tokens": 10,
            "expected_version": 1,
            "reason": "more",
        },
        200,
    ),
    ("POST", "/v1/users/{user_id}/deactivate"): Write(
        lambda w: f"/v1/users/{w.ana}/deactivate", lambda w: None, 200
    ),
    ("POST", "/v1/users/{user_id}/reactivate"): Write(
        lambda w: f"/v1/users/{w.bo}/reactivate",
        lambda w: {"max_tokens": 210_000, "max_train_tokens": 10},
        200,
    ),
    ("POST", "/v1/organizations/{org_id}/users/import"): Write(
        lambda w: f"/v1/organizations/{w.org}/users/import",
        lambda w: {"csv": f"email,name,max_tokens\n{w.ana_email},Ana B,250000\n", "dry_run": False},
        200,
    ),
    ("POST", "/v1/organizations/{org_id}/allowances"): Write(
        lambda w: f"/v1/organizations/{w.org}/allowances",
        lambda w: {
            "changes": [
                {
                    "user": w.ana,
                    "max_tokens": 250_000,
                    "max_train_tokens": 10,
                    "expected_version": 1,
                }
            ],
            "dry_run": False,
            "reason": "more",
        },
        200,
    ),
    ("POST", "/v1/organizations/{org_id}/allowance-batches/{batch}/revert"): Write(
        lambda w: f"/v1/organizations/{w.org}/allowance-batches/{w.batch}/revert",
        lambda w: {"dry_run": False, "preview_token": None},
        200,
    ),
    ("POST", "/v1/organizations/{org_id}/distribution/preview"): Write(
        lambda w: f"/v1/organizations/{w.org}/distribution/preview",
        lambda w: _distribution(w),
        200,
        writes=False,
    ),
    ("POST", "/v1/organizations/{org_id}/distribution"): Write(
        lambda w: f"/v1/organizations/{w.org}/distribution",
        lambda w: {**_distribution(w), "preview_token": None},
        200,
    ),
    ("POST", "/v1/usage"): Write(lambda w: "/v1/usage", _usage, 200, key_required=True),
    ("POST", "/v1/ingest"): Write(
        lambda w: "/v1/ingest",
        lambda w: {"user": w.ana, "tokens": 10, "dataset": "docs", "document": "a.pdf"},
        200,
        key_required=True,
    ),
    ("POST", "/v1/usage/batch"): Write(
        lambda w: "/v1/usage/batch",
        lambda w: {"events": [{**_usage(w), "idempotency_key": "event-1"}]},
        200,
        takes_key=False,
    ),
    ("POST", "/v1/reservations"): Write(
        lambda w: "/v1/reservations", lambda w: {**_usage(w), "ttl_seconds": 60}, 201
    ),
    ("POST", "/v1/reservations/{reservation_id}/commit"): Write(
        lambda w: f"/v1/reservations/{w.reservation}/commit", lambda w: {"tokens": 50}, 200
    ),
    ("POST", "/v1/reservations/{reservation_id}/release"): Write(
        lambda w: f"/v1/reservations/{w.reservation}/release", lambda w: None, 200
    ),
}


def write_routes(app: FastAPI, *, api: bool) -> set[tuple[str, str]]:
    """Every (method, path) of the app that writes: the REST API's, or the dashboard's."""
    found = set()
    for route in iter_route_contexts(app.routes):
        if not isinstance(route.original_route, APIRoute) or not route.path:
            continue
        if route.path.startswith("/v1/") != api:
            continue
        for method in (route.methods or set()) & WRITE_METHODS:
            found.add((method, route.path))
    return found


# --- the corpus ----------------------------------------------------------------------------


@dataclass(frozen=True)
class BadInput:
    """One bad request: a body (None: none), its content type, headers, and — where only one
    code is right — the code it must be refused with."""

    label: str
    content: bytes | None
    content_type: str | None = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    path: str | None = None
    code: str | None = None
    chunked: bool = False


Schema = dict[str, Any]


def _resolve(schema: Schema, components: Schema) -> tuple[Schema, bool]:
    """The schema behind a $ref, and whether `null` is allowed too."""
    nullable = False
    if "anyOf" in schema:
        options = [s for s in schema["anyOf"] if s.get("type") != "null"]
        nullable = len(options) < len(schema["anyOf"])
        # Text or an integer (a rate): tried as text, where an integer is then no bad value.
        others = {str(s.get("type")) for s in options[1:]}
        schema = {**options[0], "x-also": sorted(others)} if others else options[0]
    while "$ref" in schema:
        schema = components[schema["$ref"].rsplit("/", 1)[-1]]
    return schema, nullable


def _set(body: Any, path: tuple[str | int, ...], value: Any) -> Any:
    """A copy of `body` with the value at `path` replaced (or added)."""
    result = copy.deepcopy(body)
    target = result
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return result


def _fields(
    schema: Schema, components: Schema, value: Any, path: tuple[str | int, ...] = ()
) -> Iterator[tuple[tuple[str | int, ...], Schema, bool, bool]]:
    """(path, schema, nullable, required) of every field of a body, nested ones included
    (inside arrays, those of the valid body's first item)."""
    required = set(schema.get("required", ()))
    for name, raw in schema.get("properties", {}).items():
        sub, nullable = _resolve(raw, components)
        here = (*path, name)
        yield here, sub, nullable, name in required
        inner = value.get(name) if isinstance(value, dict) else None
        if sub.get("type") == "object" and "properties" in sub:
            yield from _fields(sub, components, inner or {}, here)
        if sub.get("type") == "array" and isinstance(inner, list) and inner:
            items, _ = _resolve(sub["items"], components)
            if items.get("type") == "object":
                yield from _fields(items, components, inner[0], (*here, 0))


NUMBERS: list[tuple[str, Any]] = [
    ("negative", -1),
    ("fractional", 1.5),
    ("a float beyond 2^53", 2.0**60),
    ("2^53+1", 2**53 + 1),
    ("2^63", 2**63),
    ("10^30", 10**30),
    ("a numeric string", "100"),
    ("a string", "many"),
    ("true", True),
    ("a list", [100]),
    ("an object", {"value": 100}),
]
TEXTS: list[tuple[str, Any]] = [
    ("a number", 123),
    ("true", True),
    ("a list", ["text"]),
    ("an object", {"text": "x"}),
    ("NUL", "a\x00b"),
    ("only NUL", "\x00"),
    ("a lone surrogate", "a\ud800b"),
    ("100,000 characters", "x" * 100_000),
]
EMAILS: list[tuple[str, Any]] = [
    ("not an email", "not-an-email"),
    ("no domain", "ana@"),
    ("markup", "<script>alert(1)</script>@example.com"),
    ("SQL", "' OR '1'='1@example.com"),
    ("NUL", "ana\x00@example.com"),
    ("too long", "a" * 300 + "@example.com"),
]
TIMES: list[tuple[str, Any]] = [
    ("not a time", "next tuesday"),
    ("no such day", "2026-02-30T00:00:00Z"),
    ("beyond the calendar in UTC", "9999-12-31T23:59:59-12:00"),
    ("before the calendar in UTC", "0001-01-01T00:00:00+14:00"),
    ("a huge timestamp", 10**20),
    ("seconds since 1970", 1800000000),
    ("seconds since 1970 as text", "1800000000"),
    ("an ISO basic date, read as seconds", "20270101"),
]
ZONES: list[tuple[str, Any]] = [
    ("'Mars/Base'", "Mars/Base"),
    ("'localtime'", "localtime"),
    ("a path", "../../etc/passwd"),
    ("empty", ""),
]
DATES: list[tuple[str, Any]] = [
    ("not a date", "2026-02-30"),
    ("words", "yesterday"),
    ("seconds since 1970 at midnight", 1799971200),
    ("seconds since 1970 at midnight as text", "1799971200"),
]
BOOLEANS: list[tuple[str, Any]] = [("a string", "true"), ("a number", 1), ("a list", [True])]
JSON_OBJECTS: list[tuple[str, Any]] = [
    ("a string", "x"),
    ("a list", ["x"]),
    ("NUL in a value", {"k": "a\x00b"}),
    ("NUL in a key", {"a\x00b": 1}),
    ("NUL deep inside", {"k": [{"j": ["\x00"]}]}),
    ("a lone surrogate", {"k": "\udc00"}),
    ("NaN", {"k": float("nan")}),
    ("Infinity", {"k": float("inf")}),
    ("-Infinity", {"k": [float("-inf")]}),
    ("over 4 KB", {"k": "x" * 5000}),
]


def _bad_values(
    path: tuple[str | int, ...], schema: Schema, nullable: bool
) -> Iterator[tuple[str, Any, str | None]]:
    """(label, value, the one right code or None) for one field."""
    name = str(path[-1])
    amount = name in AMOUNT_FIELDS
    kind = schema.get("type")
    if not nullable:
        yield "null", None, "invalid_amount" if amount else None
    if kind == "integer":
        low = schema.get("minimum", schema.get("exclusiveMinimum"))
        if low is not None and (low > 0 or "exclusiveMinimum" in schema):
            yield "zero", 0, "invalid_amount" if amount else None
        for label, value in NUMBERS:
            yield label, value, "invalid_amount" if amount else None
    elif kind == "string":
        values = [v for v in TEXTS if not ("integer" in schema.get("x-also", ()) and v[1] == 123)]
        if schema.get("format") == "email":
            values += EMAILS
        elif schema.get("format") == "date-time":
            values += TIMES
        elif schema.get("format") == "date":
            values += DATES
        if name == "time_zone":
            values += ZONES
        if "enum" in schema:
            values += [("not one of the choices", "nonsense"), ("empty", "")]
        if schema.get("minLength", 0) > 0:
            values.append(("empty", ""))
        if "maxLength" in schema:
            values.append(("one character too long", "x" * (schema["maxLength"] + 1)))
        yield from ((label, value, None) for label, value in values)
    elif kind == "boolean":
        yield from ((label, value, None) for label, value in BOOLEANS)
    elif kind == "array":
        yield "not a list", "text", None
        yield "a list of null", [None], None
        if schema.get("minItems", 0) > 0:
            yield "an empty list", [], None
    elif kind == "object":
        yield from ((label, value, None) for label, value in JSON_OBJECTS)


MALFORMED: list[tuple[str, bytes]] = [
    ("truncated JSON", b'{"name": '),
    ("not JSON", b"not json"),
    ("single quotes", b"{'name': 'x'}"),
    ("a trailing comma", b'{"name": "x",}'),
    ("a JSON array", b"[1, 2]"),
    ("a JSON string", b'"text"'),
    ("a JSON number", b"1"),
    ("nested 100,000 deep", b"[" * 100_000 + b"]" * 100_000),
    ("a 5,000-digit number", b'{"n": ' + b"9" * 5000 + b"}"),
]


def _encode(body: Any) -> bytes:
    # allow_nan: NaN and Infinity are what some clients send; the API must refuse them.
    return json.dumps(body, allow_nan=True).encode()


def body_corpus(base: Any, schema: Schema | None, components: Schema) -> list[BadInput]:
    """The bad bodies of one route, derived from its OpenAPI request body schema."""
    if schema is None:
        return []
    root, optional = _resolve(schema, components)
    inputs = [BadInput(label, raw, code="malformed_json") for label, raw in MALFORMED]
    if not optional:
        inputs.append(BadInput("no body", b""))
        inputs.append(BadInput("JSON null", b"null"))
    raw = _encode(base)
    inputs += [
        BadInput("invalid UTF-8", raw[:-1] + b', "x": "\xff\xfe"}', code="malformed_json"),
        BadInput("text/plain", raw, content_type="text/plain"),
        BadInput("a form", b"name=x&tokens=1", content_type="application/x-www-form-urlencoded"),
        BadInput("no content type", raw, content_type=None),
        BadInput("unknown field", _encode({**base, "unexpected": 1}), code="invalid_request"),
    ]
    for path, sub, nullable, _required in _fields(root, components, base):
        where = ".".join(map(str, path))
        if isinstance(path[-1], str) and len(path) > 1:
            unknown = _set(base, (*path[:-1], "unexpected"), 1)
            inputs.append(
                BadInput(f"{where}: unknown sibling", _encode(unknown), code="invalid_request")
            )
        for label, value, code in _bad_values(path, sub, nullable):
            inputs.append(
                BadInput(f"{where}: {label}", _encode(_set(base, path, value)), code=code)
            )
    return list({i.label: i for i in inputs}.values())


PATH_VALUES: list[tuple[str, str]] = [
    ("not a UUID", "not-a-uuid"),
    ("a number", "1"),
    ("SQL", "' OR '1'='1"),
    ("NUL", "%00"),
    ("a path", "..%2F..%2Fetc%2Fpasswd"),
    ("markup", "<script>alert(1)</script>"),
    ("1,000 characters", "a" * 1000),
    ("nobody's", "00000000-0000-0000-0000-000000000000"),
]


def path_corpus(template: str, world: World, write: Write) -> list[BadInput]:
    """The valid request with each path parameter replaced by a bad value."""
    inputs = []
    real = write.path(world)
    raw = None if write.body(world) is None else _encode(write.body(world))
    for index, segment in enumerate(template.split("/")):
        if not segment.startswith("{") or segment in write.names:
            continue
        for label, value in PATH_VALUES:
            parts = real.split("/")
            parts[index] = value
            inputs.append(BadInput(f"{segment}: {label}", raw, path="/".join(parts)))
    return inputs


KEYS: list[tuple[str, str]] = [
    ("empty", ""),
    ("256 characters", "k" * 256),
    ("not printable", "key\x7f"),
    ("a tab", "key\tkey"),
]


def key_corpus(write: Write, world: World) -> list[BadInput]:
    if not write.takes_key:
        return []
    body = write.body(world)
    raw = None if body is None else _encode(body)
    inputs = [
        BadInput(
            f"Idempotency-Key: {label}",
            raw,
            headers={"Idempotency-Key": key},
            code="invalid_idempotency_key",
        )
        for label, key in KEYS
    ]
    if write.key_required:
        inputs.append(BadInput("no Idempotency-Key", raw, code="idempotency_key_required"))
    return inputs


def size_corpus(path: str) -> list[BadInput]:
    """A body over the route's limit: 10 MB, or more where a route reads larger bodies
    (the CSV import's, app.UPLOADS)."""
    limit = next((size for shape, size in UPLOADS.items() if shape.fullmatch(path)), 0)
    size = max(TEN_MB, limit + 1024)
    big = b'{"pad": "' + b"x" * size + b'"}'
    label = f"a {size // (1024 * 1024)} MB body"
    return [
        BadInput(label, big, code="request_too_large"),
        BadInput(f"{label}, chunked", big, code="request_too_large", chunked=True),
    ]


async def _chunks(content: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(content), 1024 * 1024):
        yield content[start : start + 1024 * 1024]


async def send(
    client: httpx.AsyncClient,
    method: str,
    path: str,
    bad: BadInput,
    *,
    secret: str,
    fresh_key: bool,
) -> httpx.Response | str:
    """The answer, or what the app raised instead of answering."""
    headers = {"Authorization": f"Bearer {secret}"}
    if bad.content_type is not None and bad.content is not None:
        headers["Content-Type"] = bad.content_type
    if fresh_key:
        headers["Idempotency-Key"] = uuid.uuid4().hex
    headers.update(bad.headers)
    content: bytes | AsyncIterator[bytes] | None = bad.content
    if bad.chunked and bad.content is not None:
        content = _chunks(bad.content)
    try:
        return await client.request(method, bad.path or path, content=content, headers=headers)
    except Exception as error:  # a 500: the app raised instead of refusing
        return f"raised {type(error).__name__}: {str(error)[:200]}"


def judge(response: httpx.Response | str, bad: BadInput) -> str | None:
    """What is wrong with the answer to a bad input, or None when it is a proper refusal."""
    if isinstance(response, str):
        return response
    status = response.status_code
    if not 400 <= status < 500:
        return f"answered {status}: {response.text[:200]}"
    try:
        error = response.json()["error"]
        code, message = error["code"], error["message"]
    except (ValueError, KeyError, TypeError):
        return f"answered {status} without the error shape: {response.text[:200]}"
    if not isinstance(message, str) or not message:
        return f"answered {status} {code} without a message"
    if code not in DOCUMENTED:
        return f"answered {status} {code}, a code docs/api.md does not list"
    if DOCUMENTED[code] != status:
        return f"answered {code} with {status}; docs/api.md says {DOCUMENTED[code]}"
    if bad.code is not None and code != bad.code:
        return f"answered {status} {code}, not {bad.code}"
    return None


def openapi_path(template: str) -> str:
    """A route's path as the OpenAPI writes it: `{name}` for `{name:path}`."""
    return re.sub(r"\{(\w+):\w+\}", r"{\1}", template)


def api_corpus(app: FastAPI, route: tuple[str, str], world: World) -> list[BadInput]:
    method, template = route
    write = API_WRITES[route]
    spec = app.openapi()
    operation = spec["paths"][openapi_path(template)][method.lower()]
    body = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
    corpus = body_corpus(write.body(world), body.get("schema"), spec["components"]["schemas"])
    corpus += path_corpus(template, world, write)
    corpus += key_corpus(write, world)
    corpus += size_corpus(write.path(world))
    return corpus


# --- the dashboard's writes ----------------------------------------------------------------

PASSWORD = "a long enough password"
HTML = {"Accept": "text/html"}
Form = dict[str, str | list[str]]


ROLE_EMAILS = {
    "admin": "ada@example.com",
    "member": "mia@example.com",
    "operator": "olga@ops.example",
}


async def dashboard_world(
    api: Api, db: Database, clock: FakeClock, client: httpx.AsyncClient, role: str
) -> tuple[World, str]:
    """The world, with someone of `role` signed in to the dashboard on `client`; returns the
    session's CSRF token. The session is stored as /login stores one: a password hash costs
    a quarter of a second, and signing in is what the rendering tests below go through (and
    tests/test_dashboard_auth.py covers). For "anonymous", ada has a password to sign in with."""
    world = await make_world(api, db, clock)
    email = ROLE_EMAILS.get(role, ROLE_EMAILS["admin"])
    ids: dict[str, uuid.UUID] = {}
    if role == "operator":
        person = Operator(
            id=uuid.uuid4(), email=email, name="Olga", password_hash="-", created_at=clock.now()
        )
        await db.write(lambda s: _add(s, person))
        ids["operator_id"] = person.id
    else:
        fields: dict[str, str] = {"role": "member" if role == "member" else "admin"}
        if role == "anonymous":
            fields["password"] = PASSWORD
        user = await api.user(world.org, email, **fields)
        ids["user_id"] = uuid.UUID(user["id"])
        if role == "member":
            body = {"user": user["id"], "kind": "training", "amount": 5, "reason": "a project"}
            world.member_request = (await api.post("/v1/token-requests", body, expect=201))["id"]
            mine = {"name": "mine"}
            world.member_key = (
                await api.post(f"/v1/users/{user['id']}/api-keys", mine, expect=201)
            )["id"]
    if role == "anonymous":
        return world, ""
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    stored = DashboardSession(
        token_hash=hashlib.sha256(token.encode()).hexdigest(),
        csrf_token=csrf,
        created_at=clock.now(),
        expires_at=clock.now() + timedelta(hours=1),
        ip="127.0.0.1",
        **ids,
    )
    await db.write(lambda s: _add(s, stored))
    client.cookies.set("ta_session", token)
    return world, csrf


async def _add(session: AsyncSession, row: Base) -> None:
    session.add(row)


async def login_token(client: httpx.AsyncClient) -> str:
    page = await client.get("/login", headers=HTML)
    assert page.status_code == 200
    match = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert match
    return match.group(1)


async def sign_in(client: httpx.AsyncClient, email: str) -> str:
    """Sign in through the dashboard's form; return the session's CSRF token."""
    token = await login_token(client)
    response = await client.post(
        "/login", data={"email": email, "password": PASSWORD, "csrf_token": token}, headers=HTML
    )
    assert response.status_code == 303, response.text
    home = await client.get(response.headers["location"], headers=HTML)
    match = re.search(
        r'name="csrf-token" content="([^"]+)"|name="csrf_token" value="([^"]+)"', home.text
    )
    assert match, home.text[:500]
    return match.group(1) or match.group(2)


@dataclass(frozen=True)
class Page:
    """A dashboard write: who sends it, where, its valid form, and what each field holds."""

    role: str
    path: Callable[[World], str]
    form: Callable[[World], Form]
    fields: dict[str, str]
    status: int = 303
    writes: bool = True
    allowed_writes: frozenset[str] = frozenset()
    json_schema: str | None = None
    """The page's scripts send this OpenAPI schema as JSON, not a form."""


CSV_HEADER = "email,name,role,max_tokens,max_train_tokens\n"
CSV_NUL = CSV_HEADER + "new@example.com,A\x00B,member,200000,0\n"

DASHBOARD_WRITES: dict[tuple[str, str], Page] = {
    ("POST", "/login"): Page(
        "anonymous",
        lambda w: "/login",
        lambda w: {"email": "ada@example.com", "password": PASSWORD},
        {"email": "email", "password": "text"},
        # A failed sign-in is counted, by design: it is how repeated guesses are slowed.
        allowed_writes=frozenset({"sign_in_failures"}),
    ),
    ("POST", "/logout"): Page("admin", lambda w: "/logout", lambda w: {}, {}),
    ("POST", "/orgs/{org_id}/allowances"): Page(
        "admin",
        lambda w: f"/orgs/{w.org}/allowances",
        lambda w: API_WRITES[("POST", "/v1/organizations/{org_id}/allowances")].body(w) or {},
        {},
        status=200,
        json_schema="AllowanceChange",
    ),
    ("POST", "/orgs/{org_id}/users/actions"): Page(
        "admin",
        lambda w: f"/orgs/{w.org}/users/actions",
        lambda w: {"action": "deactivate", "user": [w.ana]},
        {"action": "choice", "user": "uuid"},
    ),
    ("POST", "/orgs/{org_id}/users"): Page(
        "admin",
        lambda w: f"/orgs/{w.org}/users",
        lambda w: {
            "name": "New",
            "email": "new@example.com",
            "role": "member",
            "max_tokens": "200K",
            "max_train_tokens": "10",
        },
        {
            "name": "name",
            "email": "email",
            "role": "choice",
            "max_tokens": "amount",
            "max_train_tokens": "amount",
        },
    ),
    ("POST", "/orgs/{org_id}/users/{user_id}/allowances"): Page(
        "admin",
        lambda w: f"/orgs/{w.org}/users/{w.ana}/allowances",
        lambda w: {
            "max_tokens": "250,000",
            "max_tokens_was": "200000",
            "max_train_tokens": "50,000",
            "max_train_tokens_was": "50000",
            "version": "1",
        },
        {"max_tokens": "amount", "max_train_tokens": "amount"},
    ),
    ("POST", "/orgs/{org_id}/batches/{batch}/revert"): Page(
        "admin",
        lambda w: f"/orgs/{w.org}/batches/{w.batch}/revert",
        lambda w: {"preview_token": ""},
        {"preview_token": "text"},
    ),
    ("POST", "/orgs/{org_id}/policy"): Page(
        "admin",
        lambda w: f"/orgs/{w.org}/policy",
        lambda w: {
            "action": "save",
            "inference_preset": "custom",
            "inference_enabled": "true",
            "inference_floor": "200K",
            "inference_ceiling": "2M",
            "inference_trigger_percent": "80",
            "inference_bump": "25%",
            "inference_cooldown_hours": "24",
            "inference_idle_days": "30",
            "training_preset": "standard",
        },
        {
            "action": "choice",
            "inference_preset": "choice",
            "inference_floor": "amount",
            "inference_ceiling": "positive",
            "inference_trigger_percent": "choice",
            "inference_bump": "positive",
            "inference_cooldown_hours": "choice",
            "inference_idle_days": "choice",
            "training_preset": "choice",
        },
    ),
    ("POST", "/orgs/{org_id}/policy/run"): Page(
        "admin", lambda w: f"/orgs/{w.org}/policy/run", lambda w: {}, {}, writes=False
    ),
    ("POST", "/orgs/{org_id}/boosts"): Page(
        "admin",
        lambda w: f"/orgs/{w.org}/boosts",
        lambda w: {
            "user": w.ana_email,
            "kind": "inference",
            "amount": "5K",
            "ends_at": "2026-05-01",
            "reason": "launch week",
        },
        {
            "user": "text",
            "kind": "choice",
            "amount": "positive",
            "ends_at": "date",
            "reason": "text",
        },
    ),
    ("POST", "/orgs/{org_id}/boosts/{boost_id}/end"): Page(
        "admin", lambda w: f"/orgs/{w.org}/boosts/{w.boost}/end", lambda w: {}, {}
    ),
    ("POST", "/orgs/{org_id}/distribute"): Page(
        "admin",
        lambda w: f"/orgs/{w.org}/distribute",
        lambda w: {
            "action": "preview",
            "kind": "inference",
            "method": "fixed",
            "amount": "1,000",
            "scope": "selected",
            "users": [w.ana],
        },
        {
            "action": "choice",
            "kind": "choice",
            "method": "choice",
            "amount": "positive",
            "minimum": "amount",
            "maximum": "amount",
            "scope": "choice",
            "users": "uuid",
            "q": "text",
        },
        status=200,
        writes=False,  # a preview; applying needs the preview's digest
    ),
    ("POST", "/orgs/{org_id}/import"): Page(
        "admin",
        lambda w: f"/orgs/{w.org}/import",
        lambda w: {
            "action": "apply",
            "csv_text": CSV_HEADER + "new@example.com,New,member,200000,0\n",
        },
        {"action": "choice", "csv_text": "csv"},
    ),
    ("POST", "/orgs/{org_id}/settings/policy"): Page(
        "admin",
        lambda w: f"/orgs/{w.org}/settings/policy",
        lambda w: {
            "name": "Acme 2",
            "time_zone": "Europe/Berlin",
            "period": "monthly",
            "min_inference": "150,000",
            "min_training": "0",
            "overallocation": "true",
        },
        {
            "name": "name",
            "time_zone": "zone",
            "period": "choice",
            "min_inference": "amount",
            "min_training": "amount",
            "overallocation": "choice",
        },
    ),
    ("POST", "/orgs/{org_id}/settings/keys"): Page(
        "admin",
        lambda w: f"/orgs/{w.org}/settings/keys",
        lambda w: {"name": "platform", "scopes": ["usage"]},
        {"name": "name", "scopes": "choice"},
        status=200,
    ),
    ("POST", "/orgs/{org_id}/settings/keys/{key_id}/revoke"): Page(
        "admin", lambda w: f"/orgs/{w.org}/settings/keys/{w.key}/revoke", lambda w: {}, {}
    ),
    ("POST", "/operator/orgs"): Page(
        "operator",
        lambda w: "/operator/orgs",
        lambda w: {
            "name": "Beta",
            "time_zone": "UTC",
            "period": "monthly",
            "min_inference": "200,000",
            "min_training": "0",
        },
        {
            "name": "name",
            "time_zone": "zone",
            "period": "choice",
            "min_inference": "amount",
            "min_training": "amount",
        },
    ),
    ("POST", "/operator/purchases"): Page(
        "operator",
        lambda w: "/operator/purchases",
        lambda w: {
            "org_id": w.org,
            "inference_amount": "1M",
            "training_amount": "0",
            "valid_through": "2027-01-31",
            "payer": "Finance",
            "note": "Q2",
        },
        {
            "org_id": "uuid",
            "inference_amount": "amount",
            "training_amount": "amount",
            "valid_through": "date",
            "payer": "text",
            "note": "text",
        },
    ),
    ("POST", "/orgs/{org_id}/models/rates"): Page(
        "admin",
        lambda w: f"/orgs/{w.org}/models/rates",
        lambda w: {"name": "m1", "prompt_rate": "2", "completion_rate": "0.25"},
        {"name": "name", "prompt_rate": "rate", "completion_rate": "rate"},
    ),
    ("POST", "/orgs/{org_id}/models/reset"): Page(
        "admin", lambda w: f"/orgs/{w.org}/models/reset", lambda w: {"name": "m1"}, {"name": "name"}
    ),
    ("POST", "/orgs/{org_id}/models/access"): Page(
        "admin",
        lambda w: f"/orgs/{w.org}/models/access",
        lambda w: {"mode": "selected", "allowed": "m1"},
        {"mode": "choice", "allowed": "name"},
    ),
    ("POST", "/orgs/{org_id}/models/upstream"): Page(
        "admin",
        lambda w: f"/orgs/{w.org}/models/upstream",
        lambda w: {"base_url": "https://up.example/v1", "api_key": "sk-x"},
        {"base_url": "url", "api_key": "text"},
    ),
    ("POST", "/me/api-keys"): Page(
        "member", lambda w: "/me/api-keys", lambda w: {"name": "laptop"}, {"name": "name"}, 200
    ),
    ("POST", "/me/api-keys/{key_id}/revoke"): Page(
        "member", lambda w: f"/me/api-keys/{w.member_key}/revoke", lambda w: {}, {}
    ),
    ("POST", "/me/requests"): Page(
        "member",
        lambda w: "/me/requests",
        lambda w: {"kind": "inference", "amount": "50K", "reason": "a project"},
        {"kind": "choice", "amount": "positive", "reason": "text"},
    ),
    ("POST", "/me/requests/{request_id}/withdraw"): Page(
        "member", lambda w: f"/me/requests/{w.member_request}/withdraw", lambda w: {}, {}
    ),
    ("POST", "/orgs/{org_id}/token-requests/{request_id}/approve"): Page(
        "admin",
        lambda w: f"/orgs/{w.org}/token-requests/{w.token_request}/approve",
        lambda w: {"amount": "500", "note": "go"},
        {"amount": "positive", "note": "text"},
    ),
    ("POST", "/orgs/{org_id}/token-requests/{request_id}/deny"): Page(
        "admin",
        lambda w: f"/orgs/{w.org}/token-requests/{w.token_request}/deny",
        lambda w: {"note": "not now"},
        {"note": "text"},
    ),
    ("POST", "/orgs/{org_id}/webhooks"): Page(
        "admin",
        lambda w: f"/orgs/{w.org}/webhooks",
        lambda w: {
            "url": "https://hooks.example.com/p",
            "description": "ops",
            "kind": "balance.low",
        },
        {"url": "url", "description": "text", "kind": "choice"},
        status=200,
    ),
    ("POST", "/orgs/{org_id}/webhooks/{webhook_id}/enabled"): Page(
        "admin",
        lambda w: f"/orgs/{w.org}/webhooks/{w.webhook}/enabled",
        lambda w: {"enabled": "false"},
        {"enabled": "choice"},
    ),
    ("POST", "/orgs/{org_id}/webhooks/{webhook_id}/rotate-secret"): Page(
        "admin",
        lambda w: f"/orgs/{w.org}/webhooks/{w.webhook}/rotate-secret",
        lambda w: {},
        {},
        status=200,
    ),
    ("POST", "/orgs/{org_id}/webhooks/{webhook_id}/remove"): Page(
        "admin", lambda w: f"/orgs/{w.org}/webhooks/{w.webhook}/remove", lambda w: {}, {}
    ),
    ("POST", "/orgs/{org_id}/webhook-deliveries/{delivery_id}/resend"): Page(
        "admin",
        lambda w: f"/orgs/{w.org}/webhook-deliveries/{w.webhook_delivery}/resend",
        lambda w: {},
        {},
    ),
}

TYPED_AMOUNTS = [
    "-5",
    "1.5",
    "0.5",
    "1.0000001M",
    "9007199254740993",
    "9223372036854775808",
    "1000000000000000000000000000000",
    "1e30",
    "abc",
    "1,5M",
    "١٢٣",
    "NaN",
    "inf",
    "0x10",
    "+5",
    "5 000",
    "1_000",
    "5\x00",
    "9" * 65,
]
FIELD_VALUES: dict[str, list[str]] = {
    "amount": TYPED_AMOUNTS,
    "positive": [*TYPED_AMOUNTS, "0", "0K", ""],
    "text": ["a\x00b", "x" * 100_000],
    "name": ["", "a\x00b", "x" * 201, "x" * 100_000],
    "email": ["not-an-email", "ana\x00@example.com", "a" * 400 + "@example.com", "<b>@example.com"],
    "zone": ["Mars/Base", "localtime", "../../etc/passwd", "/etc/passwd", "UT\x00C", "x" * 65],
    "choice": ["nonsense", "\x00", "x" * 100_000],
    "rate": ["-1", "0.1234567", "1e3", "abc", "2000000", "", "5\x00", "x" * 100_000],
    "url": ["ftp://up.example", "not a url", "https://", "http://a b", "x" * 501, "http://a\x00"],
    "uuid": ["not-a-uuid", "' OR '1'='1", "\x00", "00000000-0000-0000-0000-000000000000"],
    "date": ["2026-02-30", "yesterday", "2026-01-01\x00", "0001-01-01", "9998-12-31", "9999-12-31"],
    "csv": [
        CSV_NUL,
        CSV_HEADER + "new@example.com,New,member,-5,0\n",
        CSV_HEADER + "new@example.com,New,member,1.5,0\n",
        CSV_HEADER + "new@example.com,New,member,9007199254740993,0\n",
        CSV_HEADER + "new@example.com,New,member,abc,0\n",
        CSV_HEADER + "new@example.com,New,boss,200000,0\n",
        CSV_HEADER + "not-an-email,New,member,200000,0\n",
        CSV_HEADER + "new@example.com," + "x" * 201 + ",member,200000,0\n",
        "email,bogus\nnew@example.com,1\n",
        "no header at all",
        "\x00",
        "",
    ],
}


def _short(value: str) -> str:
    """A label for a typed value: the value, or its ends and length when it is long."""
    if len(value) <= 60:
        return repr(value)
    return f"{value[:20]!r}…{value[-30:]!r} ({len(value):,} characters)"


def dashboard_corpus(
    page: Page, world: World, components: Schema
) -> list[tuple[str, Form | bytes, dict[str, str]]]:
    """(label, form or raw body, extra headers) of the bad requests to one dashboard write."""
    base = page.form(world)
    corpus: list[tuple[str, Form | bytes, dict[str, str]]] = []
    if page.json_schema is not None:
        schema = {"$ref": f"#/components/schemas/{page.json_schema}"}
        for bad in body_corpus(base, schema, components):
            headers = {} if bad.content_type is None else {"Content-Type": bad.content_type}
            corpus.append((bad.label, bad.content or b"", headers))
        return corpus
    amounts_tried = False
    for name, kind in page.fields.items():
        values = FIELD_VALUES[kind]
        if kind == "amount" and amounts_tried:
            # Every typed amount goes through one parser (tokenadmin.amounts): all of them
            # to a page's first amount field, the main kinds of wrong to the others.
            values = ["-5", "1.5", "9007199254740993", "abc", "5\x00"]
        amounts_tried = amounts_tried or kind == "amount"
        for value in values:
            corpus.append((f"{name}: {_short(value)}", {**base, name: value}, {}))
    form_type = {"Content-Type": "application/x-www-form-urlencoded"}
    corpus += [
        ("no CSRF token", {**base, "csrf_token": ""}, {}),
        ("a wrong CSRF token", {**base, "csrf_token": "forged"}, {}),
        ("a CSRF token with non-ASCII characters", {**base, "csrf_token": "forgé"}, {}),
        *(
            []
            if page.role == "anonymous"
            else [("from another site", base, {"Origin": "https://evil.example"})]
        ),
        ("a 10 MB body", b"pad=" + b"x" * TEN_MB, form_type),
        ("invalid UTF-8", b"name=%FF%FE&email=%ED%A0%80", form_type),
        ("JSON instead of a form", json.dumps(base).encode(), {"Content-Type": "application/json"}),
    ]
    return corpus


# --- the tests -----------------------------------------------------------------------------


@pytest.fixture
async def world(api: Api, db: Database, clock: FakeClock) -> World:
    return await make_world(api, db, clock)


def test_every_write_route_has_its_bad_inputs(app: FastAPI) -> None:
    routes = write_routes(app, api=True)
    assert ("POST", "/v1/usage") in routes  # the walk sees into included routers
    missing = sorted(routes - set(API_WRITES))
    assert not missing, f"add these write routes to API_WRITES in {__file__}: {missing}"
    gone = sorted(set(API_WRITES) - routes)
    assert not gone, f"these routes are gone; remove them from API_WRITES: {gone}"


@pytest.mark.parametrize("route", sorted(API_WRITES), ids=" ".join)
async def test_every_bad_input_is_refused_with_a_documented_code_and_changes_nothing(
    route: tuple[str, str],
    app: FastAPI,
    client: httpx.AsyncClient,
    db: Database,
    api: Api,
    world: World,
) -> None:
    method, _template = route
    write = API_WRITES[route]
    path = write.path(world)
    corpus = api_corpus(app, route, world)
    problems = []
    before = await snapshot(db)
    mark = await fingerprint(db)
    for bad in corpus:
        fresh_key = write.key_required and "Idempotency-Key" not in bad.label
        response = await send(client, method, path, bad, secret=api.secret, fresh_key=fresh_key)
        problem = judge(response, bad)
        if (now := await fingerprint(db)) != mark:
            problem, mark = f"{problem or 'refused'}, yet wrote", now
        if problem:
            problems.append(f"{bad.label}: {problem}")
    assert not problems, f"{len(problems)} of {len(corpus)} bad inputs:\n" + "\n".join(problems)
    assert not changed_tables(before, await snapshot(db))

    # The valid request goes through: the corpus was refused for what it held.
    body = write.body(world)
    valid = BadInput("valid", None if body is None else _encode(body))
    response = await send(
        client, method, path, valid, secret=api.secret, fresh_key=write.key_required
    )
    assert isinstance(response, httpx.Response), response
    assert response.status_code == write.status, response.text
    assert bool(changed_tables(before, await snapshot(db))) is write.writes


@pytest.mark.parametrize("route", sorted(API_WRITES), ids=" ".join)
async def test_every_write_that_honours_an_idempotency_key_declares_it_in_the_openapi(
    route: tuple[str, str], app: FastAPI, client: httpx.AsyncClient, api: Api, world: World
) -> None:
    """Sent twice with one key, a write that honours the header answers the first answer
    again (Idempotent-Replayed); its OpenAPI operation declares the header, required only
    where a missing key is refused (POST /v1/usage). A batch, whose events carry their own
    keys, neither replays on the header nor declares it."""
    method, template = route
    write = API_WRITES[route]
    body = write.body(world)
    key = {"Idempotency-Key": f"declared-{uuid.uuid4().hex}"}
    valid = BadInput("valid", None if body is None else _encode(body), headers=key)
    answers = []
    for _ in range(2):
        response = await send(
            client, method, write.path(world), valid, secret=api.secret, fresh_key=False
        )
        assert isinstance(response, httpx.Response), response
        assert response.status_code == write.status, response.text
        answers.append(response)
    replayed = answers[1].headers.get("Idempotent-Replayed") == "true"
    assert replayed is write.takes_key, "the header is honoured as API_WRITES says"

    parameters = app.openapi()["paths"][openapi_path(template)][method.lower()].get(
        "parameters", []
    )
    declared = [p for p in parameters if (p["in"], p["name"]) == ("header", "Idempotency-Key")]
    if not write.takes_key:
        assert not declared, declared
        return
    assert len(declared) == 1, parameters
    assert declared[0]["required"] is write.key_required
    assert declared[0]["description"]
    assert declared[0]["schema"]["maxLength"] == 255


def test_every_dashboard_write_has_its_bad_inputs(app: FastAPI) -> None:
    routes = write_routes(app, api=False)
    assert ("POST", "/login") in routes
    missing = sorted(routes - set(DASHBOARD_WRITES))
    assert not missing, f"add these dashboard writes to DASHBOARD_WRITES in {__file__}: {missing}"
    gone = sorted(set(DASHBOARD_WRITES) - routes)
    assert not gone, f"these routes are gone; remove them from DASHBOARD_WRITES: {gone}"


async def refuse_on_page(
    client: httpx.AsyncClient,
    db: Database,
    page: Page,
    path: str,
    body: Form | bytes,
    headers: dict[str, str],
    csrf: str,
    mark: tuple[Any, ...],
) -> tuple[str | None, tuple[Any, ...]]:
    """What is wrong with the dashboard's answer to one bad request (or None), and the
    fingerprint of the database after it (`mark`: before it)."""
    if page.role == "anonymous":
        csrf = await login_token(client)
    if isinstance(body, dict):
        body = {"csrf_token": csrf, **body}
    if page.json_schema:
        headers = {"X-CSRF-Token": csrf, **headers}
    response = await post_page(client, path, body, headers)
    problem = None
    if isinstance(response, str):
        problem = response
    elif not 400 <= response.status_code < 500:
        problem = f"answered {response.status_code}"
    if (now := await fingerprint(db, page.allowed_writes)) != mark:
        problem, mark = f"{problem or 'refused'}, yet wrote", now
    return problem, mark


async def post_page(
    client: httpx.AsyncClient, path: str, body: Form | bytes, headers: dict[str, str]
) -> httpx.Response | str:
    try:
        if isinstance(body, bytes):
            return await client.post(path, content=body, headers={**HTML, **headers})
        return await client.post(path, data=body, headers={**HTML, **headers})
    except Exception as error:  # a 500: the app raised instead of refusing
        return f"raised {type(error).__name__}: {str(error)[:200]}"


@pytest.mark.parametrize("route", sorted(DASHBOARD_WRITES), ids=" ".join)
async def test_every_bad_input_to_the_dashboard_is_refused_and_changes_nothing(
    route: tuple[str, str],
    app: FastAPI,
    client: httpx.AsyncClient,
    db: Database,
    api: Api,
    clock: FakeClock,
) -> None:
    page = DASHBOARD_WRITES[route]
    world, csrf = await dashboard_world(api, db, clock, client, page.role)
    path = page.path(world)
    components = app.openapi()["components"]["schemas"]
    corpus = dashboard_corpus(page, world, components)
    problems = []
    before = await snapshot(db)
    mark = await fingerprint(db, page.allowed_writes)
    for label, body, headers in corpus:
        problem, mark = await refuse_on_page(client, db, page, path, body, headers, csrf, mark)
        if problem:
            problems.append(f"{label}: {problem}")
    assert not problems, f"{len(problems)} of {len(corpus)} bad inputs:\n" + "\n".join(problems)
    after = await snapshot(db)
    assert not [t for t in changed_tables(before, after) if t not in page.allowed_writes]
    before = after

    # The valid request goes through: the corpus was refused for what it held.
    if page.role == "anonymous":
        csrf = await login_token(client)
    valid = page.form(world)
    if page.json_schema:
        response = await client.post(path, json=valid, headers={"X-CSRF-Token": csrf})
    else:
        response = await client.post(path, data={"csrf_token": csrf, **valid}, headers=HTML)
    assert response.status_code == page.status, response.text[:500]
    if page.writes:
        assert changed_tables(before, await snapshot(db))


# --- reads that fail on bad input (found while building the corpus) --------------------------


@pytest.mark.parametrize("bound", ["since", "until"])
async def test_a_journal_bound_is_a_time_with_an_offset_within_the_calendar(
    bound: str, api: Api, world: World
) -> None:
    """Not a number (Pydantic would read it as seconds since 1970), not without an offset,
    and not where its UTC would fall outside Python's calendar (an OverflowError, a 500)."""
    journal = f"/v1/organizations/{world.org}/journal"
    for moment in (
        "0.5",
        "1773576000",
        "-1e3",
        "2026-03-15T12:00:00",
        "9999-12-31T23:59:59-12:00",
        "0001-01-01T00:00:00+14:00",
    ):
        try:
            response = await api.call("GET", journal, params={bound: moment})
        except Exception as error:
            pytest.fail(f"{bound}={moment} raised {type(error).__name__}: {error}")
        assert response.status_code == 422, (moment, response.text)
        assert response.json()["error"]["code"] == "invalid_request"
    for moment in ("2026-03-15T13:00:00+01:00", "9998-12-31T23:59:59Z", "0002-01-01T00:00:00Z"):
        await api.call("GET", journal, params={bound: moment}, expect=200)


@pytest.mark.parametrize(
    ("route", "parameter"),
    [("users", "search"), ("journal", "actor"), ("journal", "action")],
    ids=["users search", "journal actor", "journal action"],
)
async def test_query_text_with_nul_is_refused(
    route: str, parameter: str, api: Api, world: World
) -> None:
    """PostgreSQL can't compare text with NUL (a 500 there), SQLite's full-text search reads
    it as the end of its query: refused alike on both, as the OpenAPI's pattern says."""
    path = f"/v1/organizations/{world.org}/{route}"
    try:
        response = await api.call("GET", path, params={parameter: "a\x00b"})
    except Exception as error:
        pytest.fail(f"raised {type(error).__name__}: {error}")
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_request"
    await api.call("GET", path, params={parameter: "ab"}, expect=200)


async def test_dashboard_searches_and_filters_with_nul_are_refused_on_a_page(
    api: Api, db: Database, clock: FakeClock, client: httpx.AsyncClient
) -> None:
    world, csrf = await dashboard_world(api, db, clock, client, "admin")
    reads = [
        (f"/orgs/{world.org}", "q"),
        (f"/orgs/{world.org}/distribute", "q"),
        *((f"/orgs/{world.org}/journal", name) for name in ("user", "action", "actor")),
        *((f"/orgs/{world.org}/journal.csv", name) for name in ("user", "action", "actor")),
    ]
    problems = []
    for path, name in reads:
        try:
            response = await client.get(path, params={name: "a\x00b"}, headers=HTML)
        except Exception as error:
            problems.append(f"{path}?{name}: raised {type(error).__name__}: {error}")
            continue
        if response.status_code != 422 or "NUL" not in response.text:
            problems.append(f"{path}?{name}: answered {response.status_code}")
    # A write's way back to the table it came from keeps the search: one with NUL, which no
    # form types, shows the table with no match rather than failing its query.
    back = await client.post(
        f"/orgs/{world.org}/users/actions",
        data={"csrf_token": csrf, "action": "nonsense", "user": world.ana, "back": "q=a%00b"},
        headers=HTML,
    )
    if back.status_code != 422 or "Choose an action" not in back.text:
        problems.append(f"users/actions with a search of NUL: answered {back.status_code}")
    assert not problems, "\n".join(problems)


async def test_text_no_one_can_hold_matches_no_one_where_it_reaches_a_query(
    api: Api, db: Database, world: World
) -> None:
    """What reaches the repositories by another way than the API's and the dashboard's
    typed parameters (the CLI, a write's way back to its table) finds nothing, on both
    databases, instead of failing the query on one."""
    org = uuid.UUID(world.org)
    now = datetime.now(UTC)

    async def read(session: AsyncSession) -> list[Any]:
        found: list[Any] = []
        for text in ("a\x00b", "ana\x00", "\ud800", "\x00"):
            query = user_repository.UserQuery(org_id=org, period_start=now, search=text)
            found += (await user_repository.search(session, query))[0]
            found.append(await user_repository.by_email(session, text))
            found += await user_repository.find_in_org(session, org, emails=[text])
            for journal in (
                JournalFilter(org_id=org, actor=text, limit=10),
                JournalFilter(org_id=org, action=text, limit=10),
            ):
                found += await journal_repository.list_entries(session, journal)
        return [f for f in found if f is not None]

    assert await db.read(read) == []


async def test_a_sign_in_with_nul_in_the_email_is_refused_as_an_unknown_email(
    api: Api, db: Database, clock: FakeClock, client: httpx.AsyncClient
) -> None:
    await dashboard_world(api, db, clock, client, "anonymous")
    answers = []
    for email in ("ada\x00@example.com", "nobody@example.com"):
        token = await login_token(client)
        response = await client.post(
            "/login",
            data={"email": email, "password": PASSWORD, "csrf_token": token},
            headers=HTML,
        )
        answers.append(
            (response.status_code, "The email or the password is not right." in response.text)
        )
    assert answers == [(401, True), (401, True)]
    await sign_in(client, "ada@example.com")


# --- markup in names renders as text -------------------------------------------------------


def markup(field: str) -> str:
    """A name that would run a script, or break out of an attribute, if shown unescaped."""
    return f"<script>alert(\"{field}\")</script><img src=x onerror=alert('{field}')>'\""


QUOTED_EMAIL = "o'neil&co@example.com"
SQL_NAME = "Robert'); DROP TABLE users;--"


def shown_as_text(page: httpx.Response, fields: list[str]) -> list[str]:
    """What is wrong with a page that should show these fields' markup as text."""
    assert page.status_code == 200, (page.status_code, page.text[:500])
    problems = [f"{f} is not shown" for f in fields if str(escape(markup(f))) not in page.text]
    if "<script>alert(" in page.text or "<img src=x" in page.text:
        problems.append("markup is in the page as markup")
    return problems


@pytest.fixture
async def signed_in(app: FastAPI) -> AsyncIterator[Callable[[str], Any]]:
    clients: list[httpx.AsyncClient] = []

    async def open_as(email: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=app)
        client = httpx.AsyncClient(transport=transport, base_url="http://tokenadmin.test")
        clients.append(client)
        await sign_in(client, email)
        return client

    yield open_as
    for client in clients:
        await client.aclose()


async def test_names_with_markup_are_stored_as_typed_and_render_as_text_on_every_page(
    api: Api, db: Database, clock: FakeClock, signed_in: Callable[[str], Any]
) -> None:
    org = await funded_org(api, name=markup("org"))
    await api.user(org, "ada@example.com", role="admin", password=PASSWORD, name=markup("ada"))
    ana = await api.user(org, QUOTED_EMAIL, password=PASSWORD, name=markup("ana"))
    bobby = await api.user(org, "bobby@example.com", name=SQL_NAME)
    await api.post(
        f"/v1/organizations/{org}/api-keys", {"name": markup("key"), "scopes": ["read"]}, expect=201
    )
    await api.purchase(org, 1000, payer=markup("payer"), note=markup("note"))
    await api.allowances(
        org, {"user": ana["id"], "max_tokens": 250_000}, reason=markup("reason"), expect=200
    )
    await db.write(
        lambda s: auth_service.create_operator(
            s, email="olga@ops.example", name=markup("olga"), password=PASSWORD, now=clock.now()
        )
    )
    member = await signed_in(QUOTED_EMAIL)
    me = await member.get("/me", headers=HTML)
    csrf = re.search(r'name="csrf-token" content="([^"]+)"', me.text)
    assert csrf
    asked = await member.post(
        "/me/requests",
        data={
            "kind": "inference",
            "amount": "50K",
            "reason": markup("request"),
            "csrf_token": csrf.group(1),
        },
        headers=HTML,
    )
    assert asked.status_code == 303, asked.text[:500]

    # Stored exactly as typed: text, not a query and not markup.
    assert (await api.get(f"/v1/users/{bobby['id']}"))["name"] == SQL_NAME
    assert (await api.get(f"/v1/users/{ana['id']}"))["name"] == markup("ana")
    assert (await api.get(f"/v1/organizations/{org}"))["name"] == markup("org")
    assert (await api.get(f"/v1/organizations/{org}/users"))["total"] == 3

    admin = await signed_in("ada@example.com")
    operator = await signed_in("olga@ops.example")
    pages = {
        "the user table": (admin, f"/orgs/{org}", ["org", "ada", "ana", "request"]),
        "the user page": (admin, f"/orgs/{org}/users/{ana['id']}", ["org", "ana"]),
        "the journal": (admin, f"/orgs/{org}/journal", ["org", "reason"]),
        "the settings": (admin, f"/orgs/{org}/settings", ["org", "key", "payer", "note"]),
        "distribute": (admin, f"/orgs/{org}/distribute", ["org", "ana"]),
        "import": (admin, f"/orgs/{org}/import", ["org"]),
        "the member's page": (member, "/me", ["org", "ana"]),
        "the operator's page": (operator, "/operator", ["org", "olga"]),
    }
    problems = []
    for title, (client, path, fields) in pages.items():
        page = await client.get(path, headers=HTML)
        problems += [f"{title}: {p}" for p in shown_as_text(page, fields)]
        emails = title in ("the user table", "the journal", "the user page")
        if emails and str(escape(QUOTED_EMAIL)) not in page.text:
            problems.append(f"{title}: {QUOTED_EMAIL} is not shown escaped")
    table = await admin.get(f"/orgs/{org}", headers=HTML)
    if str(escape(SQL_NAME)) not in table.text:
        problems.append(f"the user table: {SQL_NAME} is not shown")
    assert not problems, "\n".join(problems)


async def test_null_where_the_openapi_allows_it_is_answered_never_a_500(
    app: FastAPI, client: httpx.AsyncClient, api: Api, world: World
) -> None:
    """The corpus sends null only where the OpenAPI forbids it; here, where it allows it."""
    spec = app.openapi()
    components = spec["components"]["schemas"]
    problems = []
    for (method, template), write in sorted(API_WRITES.items()):
        body = write.body(world)
        content = (
            spec["paths"][openapi_path(template)][method.lower()]
            .get("requestBody", {})
            .get("content")
        )
        if body is None or content is None:
            continue
        root, _ = _resolve(content["application/json"]["schema"], components)
        for path, _schema, nullable, _required in _fields(root, components, body):
            if not nullable:
                continue
            bad = BadInput(f"{' '.join(map(str, path))}: null", _encode(_set(body, path, None)))
            answer = await send(
                client,
                method,
                write.path(world),
                bad,
                secret=api.secret,
                fresh_key=write.key_required,
            )
            if isinstance(answer, str) or answer.status_code >= 500:
                problems.append(f"{method} {template} {bad.label}: {answer}")
    assert not problems, "\n".join(problems)
