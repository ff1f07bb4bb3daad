"""No one reads or changes anything of another organization, by any route (SPEC section 2).

Every API route must appear in ROUTES; a new route missing from it fails this suite.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from tests.helpers import Api, funded_org
from tests.test_webhooks import delivered_delivery
from tokenadmin.clock import FakeClock
from tokenadmin.database import Database
from tokenadmin.models import Base

PUBLIC = {("GET", "/healthz")}
BOOST_ENDS = "2026-06-01T00:00:00Z"


@dataclass
class World:
    a_org: str
    a_user: str
    a_email: str
    a_purchase: str
    a_key: str
    a_reservation: str
    a_request: str
    a_batch: str
    b_org: str
    b_user: str
    a_webhook: str = ""
    a_delivery: str = ""
    a_boost: str = ""


Request = tuple[str, str, Any]
ROUTES: dict[tuple[str, str], Callable[[World], list[Request]]] = {
    ("POST", "/v1/organizations"): lambda w: [("POST", "/v1/organizations", {"name": "X"})],
    ("GET", "/v1/organizations"): lambda w: [("GET", "/v1/organizations", None)],
    ("GET", "/v1/organizations/{org_id}"): lambda w: [
        ("GET", f"/v1/organizations/{w.a_org}", None)
    ],
    ("PATCH", "/v1/organizations/{org_id}"): lambda w: [
        ("PATCH", f"/v1/organizations/{w.a_org}", {"name": "Mine now", "min_inference": 1})
    ],
    ("POST", "/v1/organizations/{org_id}/purchases"): lambda w: [
        ("POST", f"/v1/organizations/{w.a_org}/purchases", {"inference_amount": 10**9}),
        ("POST", f"/v1/organizations/{w.b_org}/purchases", {"inference_amount": 10**9}),
    ],
    ("GET", "/v1/organizations/{org_id}/purchases"): lambda w: [
        ("GET", f"/v1/organizations/{w.a_org}/purchases", None)
    ],
    ("PATCH", "/v1/organizations/{org_id}/purchases/{purchase_id}"): lambda w: [
        ("PATCH", f"/v1/organizations/{w.a_org}/purchases/{w.a_purchase}", {"expires_at": None}),
        ("PATCH", f"/v1/organizations/{w.b_org}/purchases/{w.a_purchase}", {"expires_at": None}),
    ],
    ("GET", "/v1/organizations/{org_id}/balance"): lambda w: [
        ("GET", f"/v1/organizations/{w.a_org}/balance", None)
    ],
    ("POST", "/v1/organizations/{org_id}/api-keys"): lambda w: [
        ("POST", f"/v1/organizations/{w.a_org}/api-keys", {"name": "x", "scopes": ["admin"]})
    ],
    ("GET", "/v1/organizations/{org_id}/api-keys"): lambda w: [
        ("GET", f"/v1/organizations/{w.a_org}/api-keys", None)
    ],
    ("GET", "/v1/models"): lambda w: [("GET", "/v1/models", None)],
    ("GET", "/v1/jobs"): lambda w: [("GET", "/v1/jobs", None)],
    ("PUT", "/v1/models/{name:path}"): lambda w: [
        ("PUT", "/v1/models/planted", {"prompt_rate": "0", "completion_rate": "0"})
    ],
    ("DELETE", "/v1/models/{name:path}"): lambda w: [("DELETE", "/v1/models/planted", None)],
    ("GET", "/v1/organizations/{org_id}/models"): lambda w: [
        ("GET", f"/v1/organizations/{w.a_org}/models", None)
    ],
    ("PUT", "/v1/organizations/{org_id}/models/{name:path}"): lambda w: [
        (
            "PUT",
            f"/v1/organizations/{w.a_org}/models/m",
            {"prompt_rate": "0", "completion_rate": "0"},
        )
    ],
    ("DELETE", "/v1/organizations/{org_id}/models/{name:path}"): lambda w: [
        ("DELETE", f"/v1/organizations/{w.a_org}/models/m", None)
    ],
    ("PUT", "/v1/organizations/{org_id}/model-access"): lambda w: [
        ("PUT", f"/v1/organizations/{w.a_org}/model-access", {"allowed": []})
    ],
    ("PUT", "/v1/organizations/{org_id}/upstream"): lambda w: [
        ("PUT", f"/v1/organizations/{w.a_org}/upstream", {"base_url": "https://evil.example"})
    ],
    ("POST", "/v1/users/{user_id}/api-keys"): lambda w: [
        ("POST", f"/v1/users/{w.a_user}/api-keys", {"name": "mine now"})
    ],
    ("GET", "/v1/users/{user_id}/api-keys"): lambda w: [
        ("GET", f"/v1/users/{w.a_user}/api-keys", None)
    ],
    ("DELETE", "/v1/users/{user_id}/api-keys/{key_id}"): lambda w: [
        ("DELETE", f"/v1/users/{w.a_user}/api-keys/{w.a_key}", None)
    ],
    ("DELETE", "/v1/organizations/{org_id}/api-keys/{key_id}"): lambda w: [
        ("DELETE", f"/v1/organizations/{w.a_org}/api-keys/{w.a_key}", None),
        ("DELETE", f"/v1/organizations/{w.b_org}/api-keys/{w.a_key}", None),
    ],
    ("GET", "/v1/organizations/{org_id}/users"): lambda w: [
        ("GET", f"/v1/organizations/{w.a_org}/users", None)
    ],
    ("POST", "/v1/organizations/{org_id}/users"): lambda w: [
        ("POST", f"/v1/organizations/{w.a_org}/users", {"email": "x@evil.example", "name": "X"})
    ],
    ("GET", "/v1/users/{user_id}"): lambda w: [("GET", f"/v1/users/{w.a_user}", None)],
    ("PATCH", "/v1/users/{user_id}"): lambda w: [
        ("PATCH", f"/v1/users/{w.a_user}", {"max_tokens": 300_000, "role": "admin"})
    ],
    ("POST", "/v1/users/{user_id}/deactivate"): lambda w: [
        ("POST", f"/v1/users/{w.a_user}/deactivate", None)
    ],
    ("POST", "/v1/users/{user_id}/reactivate"): lambda w: [
        ("POST", f"/v1/users/{w.a_user}/reactivate", None)
    ],
    ("GET", "/v1/users/{user_id}/balance"): lambda w: [
        ("GET", f"/v1/users/{w.a_user}/balance", None)
    ],
    ("GET", "/v1/users/{user_id}/usage"): lambda w: [("GET", f"/v1/users/{w.a_user}/usage", None)],
    ("GET", "/v1/users/{user_id}/forecast"): lambda w: [
        ("GET", f"/v1/users/{w.a_user}/forecast", None)
    ],
    ("GET", "/v1/organizations/{org_id}/forecast"): lambda w: [
        ("GET", f"/v1/organizations/{w.a_org}/forecast?users=10", None)
    ],
    ("GET", "/v1/organizations/{org_id}/usage-report"): lambda w: [
        ("GET", f"/v1/organizations/{w.a_org}/usage-report?group_by=model", None),
        ("GET", f"/v1/organizations/{w.b_org}/usage-report?user={w.a_email}", None),
        ("GET", f"/v1/organizations/{w.b_org}/usage-report?user={w.a_user}&format=csv", None),
    ],
    ("POST", "/v1/organizations/{org_id}/distribution/preview"): lambda w: [
        (
            "POST",
            f"/v1/organizations/{w.a_org}/distribution/preview",
            {"inference": {"method": "fixed", "amount": 1_000}, "users": [w.a_email]},
        )
    ],
    ("POST", "/v1/organizations/{org_id}/distribution"): lambda w: [
        (
            "POST",
            f"/v1/organizations/{w.a_org}/distribution",
            {"inference": {"method": "fixed", "amount": 1_000}},
        )
    ],
    ("GET", "/v1/organizations/{org_id}/users.csv"): lambda w: [
        ("GET", f"/v1/organizations/{w.a_org}/users.csv", None)
    ],
    ("POST", "/v1/organizations/{org_id}/users/import"): lambda w: [
        (
            "POST",
            f"/v1/organizations/{w.a_org}/users/import",
            {"csv": f"email,name,max_tokens\n{w.a_email},Alice,300000\n", "dry_run": True},
        )
    ],
    ("GET", "/v1/organizations/{org_id}/policy"): lambda w: [
        ("GET", f"/v1/organizations/{w.a_org}/policy", None)
    ],
    ("PUT", "/v1/organizations/{org_id}/policy"): lambda w: [
        ("PUT", f"/v1/organizations/{w.a_org}/policy", {"inference": {"enabled": True}})
    ],
    ("GET", "/v1/organizations/{org_id}/policy/preview"): lambda w: [
        ("GET", f"/v1/organizations/{w.a_org}/policy/preview", None)
    ],
    ("POST", "/v1/organizations/{org_id}/policy/run"): lambda w: [
        ("POST", f"/v1/organizations/{w.a_org}/policy/run", {})
    ],
    ("GET", "/v1/organizations/{org_id}/policy/log"): lambda w: [
        ("GET", f"/v1/organizations/{w.a_org}/policy/log", None)
    ],
    ("POST", "/v1/organizations/{org_id}/boosts"): lambda w: [
        (
            "POST",
            f"/v1/organizations/{org}/boosts",
            {"user": user, "kind": "inference", "amount": 1_000, "ends_at": BOOST_ENDS},
        )
        for org in (w.a_org, w.b_org)
        for user in (w.a_user, w.a_email)
    ],
    ("GET", "/v1/organizations/{org_id}/boosts"): lambda w: [
        ("GET", f"/v1/organizations/{w.a_org}/boosts?state=any", None),
        ("GET", f"/v1/organizations/{w.b_org}/boosts?state=any&user_id={w.a_user}", None),
    ],
    ("POST", "/v1/organizations/{org_id}/boosts/{boost_id}/end"): lambda w: [
        ("POST", f"/v1/organizations/{org}/boosts/{w.a_boost}/end", None)
        for org in (w.a_org, w.b_org)
    ],
    ("POST", "/v1/token-requests"): lambda w: [
        (
            "POST",
            "/v1/token-requests",
            {"user": ref, "kind": "inference", "amount": 1_000, "reason": "more"},
        )
        for ref in (w.a_user, w.a_email)
    ],
    ("GET", "/v1/organizations/{org_id}/token-requests"): lambda w: [
        ("GET", f"/v1/organizations/{w.a_org}/token-requests?state=any", None)
    ],
    ("GET", "/v1/users/{user_id}/token-requests"): lambda w: [
        ("GET", f"/v1/users/{w.a_user}/token-requests", None)
    ],
    ("GET", "/v1/organizations/{org_id}/events"): lambda w: [
        ("GET", f"/v1/organizations/{w.a_org}/events", None),
        ("GET", f"/v1/organizations/{w.a_org}/events?user_id={w.a_user}", None),
    ],
    ("GET", "/v1/users/{user_id}/events"): lambda w: [
        ("GET", f"/v1/users/{w.a_user}/events", None)
    ],
    ("GET", "/v1/token-requests/{request_id}"): lambda w: [
        ("GET", f"/v1/token-requests/{w.a_request}", None)
    ],
    ("POST", "/v1/token-requests/{request_id}/approve"): lambda w: [
        ("POST", f"/v1/token-requests/{w.a_request}/approve", {"amount": 1_000})
    ],
    ("POST", "/v1/token-requests/{request_id}/deny"): lambda w: [
        ("POST", f"/v1/token-requests/{w.a_request}/deny", {"note": "no"})
    ],
    ("POST", "/v1/token-requests/{request_id}/withdraw"): lambda w: [
        ("POST", f"/v1/token-requests/{w.a_request}/withdraw", None)
    ],
    ("POST", "/v1/organizations/{org_id}/allowances"): lambda w: [
        (
            "POST",
            f"/v1/organizations/{w.a_org}/allowances",
            {"changes": [{"user": w.a_email, "max_tokens": 250_000}]},
        ),
        (
            "POST",
            f"/v1/organizations/{w.b_org}/allowances",
            {"changes": [{"user": w.a_email, "max_tokens": 250_000}]},
        ),
        (
            "POST",
            f"/v1/organizations/{w.b_org}/allowances",
            {"changes": [{"user": w.a_user, "max_tokens": 250_000}]},
        ),
    ],
    ("GET", "/v1/organizations/{org_id}/allowance-batches"): lambda w: [
        ("GET", f"/v1/organizations/{w.a_org}/allowance-batches", None)
    ],
    ("POST", "/v1/organizations/{org_id}/allowance-batches/{batch}/revert"): lambda w: [
        ("POST", f"/v1/organizations/{w.a_org}/allowance-batches/{w.a_batch}/revert", {}),
        # A's batch through the caller's own organization: no such batch there.
        ("POST", f"/v1/organizations/{w.b_org}/allowance-batches/{w.a_batch}/revert", {}),
    ],
    ("GET", "/v1/organizations/{org_id}/journal"): lambda w: [
        ("GET", f"/v1/organizations/{w.a_org}/journal", None)
    ],
    ("POST", "/v1/usage"): lambda w: [
        ("POST", "/v1/usage", {"user": w.a_user, "kind": "inference", "tokens": 10}),
        ("POST", "/v1/usage", {"user": w.a_email, "kind": "inference", "tokens": 10}),
    ],
    ("POST", "/v1/ingest"): lambda w: [
        ("POST", "/v1/ingest", {"user": w.a_user, "tokens": 10, "dataset": "docs"}),
        ("POST", "/v1/ingest", {"user": w.a_email, "text": "a document of A"}),
    ],
    ("POST", "/v1/usage/batch"): lambda w: [
        (
            "POST",
            "/v1/usage/batch",
            {
                "events": [
                    {"user": w.a_email, "kind": "inference", "tokens": 10, "idempotency_key": "e1"}
                ]
            },
        )
    ],
    ("POST", "/v1/reservations"): lambda w: [
        ("POST", "/v1/reservations", {"user": w.a_user, "kind": "inference", "tokens": 10})
    ],
    ("POST", "/v1/reservations/{reservation_id}/commit"): lambda w: [
        ("POST", f"/v1/reservations/{w.a_reservation}/commit", {"tokens": 1})
    ],
    ("POST", "/v1/reservations/{reservation_id}/release"): lambda w: [
        ("POST", f"/v1/reservations/{w.a_reservation}/release", None)
    ],
    ("POST", "/v1/organizations/{org_id}/webhooks"): lambda w: [
        ("POST", f"/v1/organizations/{w.a_org}/webhooks", {"url": "https://hooks.b.example/"})
    ],
    ("GET", "/v1/organizations/{org_id}/webhooks"): lambda w: [
        ("GET", f"/v1/organizations/{w.a_org}/webhooks", None)
    ],
    ("GET", "/v1/organizations/{org_id}/webhooks/{webhook_id}"): lambda w: [
        ("GET", f"/v1/organizations/{w.a_org}/webhooks/{w.a_webhook}", None),
        # A's endpoint through the caller's own organization: no such endpoint there.
        ("GET", f"/v1/organizations/{w.b_org}/webhooks/{w.a_webhook}", None),
    ],
    ("PATCH", "/v1/organizations/{org_id}/webhooks/{webhook_id}"): lambda w: [
        ("PATCH", f"/v1/organizations/{w.a_org}/webhooks/{w.a_webhook}", {"enabled": False}),
        ("PATCH", f"/v1/organizations/{w.b_org}/webhooks/{w.a_webhook}", {"enabled": False}),
    ],
    ("DELETE", "/v1/organizations/{org_id}/webhooks/{webhook_id}"): lambda w: [
        ("DELETE", f"/v1/organizations/{w.a_org}/webhooks/{w.a_webhook}", None),
        ("DELETE", f"/v1/organizations/{w.b_org}/webhooks/{w.a_webhook}", None),
    ],
    ("POST", "/v1/organizations/{org_id}/webhooks/{webhook_id}/rotate-secret"): lambda w: [
        ("POST", f"/v1/organizations/{w.a_org}/webhooks/{w.a_webhook}/rotate-secret", None),
        ("POST", f"/v1/organizations/{w.b_org}/webhooks/{w.a_webhook}/rotate-secret", None),
    ],
    ("GET", "/v1/organizations/{org_id}/webhooks/{webhook_id}/deliveries"): lambda w: [
        ("GET", f"/v1/organizations/{w.a_org}/webhooks/{w.a_webhook}/deliveries", None),
        ("GET", f"/v1/organizations/{w.b_org}/webhooks/{w.a_webhook}/deliveries", None),
    ],
    ("POST", "/v1/webhook-deliveries/{delivery_id}/resend"): lambda w: [
        ("POST", f"/v1/webhook-deliveries/{w.a_delivery}/resend", None)
    ],
}


def api_routes(app: FastAPI) -> set[tuple[str, str]]:
    """Every (method, path) of the REST API, routers included."""
    found = set()
    for route in iter_route_contexts(app.routes):
        if (
            isinstance(route.original_route, APIRoute)
            and route.path
            and (route.path.startswith("/v1/") or route.path == "/healthz")
        ):
            for method in route.methods or ():
                found.add((method, route.path))
    return found


async def snapshot(db: Database) -> dict[str, list[tuple[Any, ...]]]:
    async def read(session: AsyncSession) -> dict[str, list[tuple[Any, ...]]]:
        tables = {}
        for table in Base.metadata.sorted_tables:
            rows = (await session.execute(select(table))).all()
            tables[table.name] = sorted(tuple(map(repr, row)) for row in rows)
        return tables

    return await db.read(read)


@pytest.fixture
async def world(api: Api, db: Database, clock: FakeClock) -> World:
    a_org = await funded_org(api)
    a_user = await api.user(a_org, "alice@a.example")
    purchase = await api.purchase(a_org, 100_000)
    a_admin = await api.key(a_org, "admin")
    a_usage = api.as_key(await api.key(a_org, "usage"))
    keys = await api.get(f"/v1/organizations/{a_org}/api-keys")
    reservation = await a_usage.post(
        "/v1/reservations", {"user": a_user["id"], "kind": "inference", "tokens": 500}, expect=201
    )
    await a_usage.use(a_user["id"], 1_000, expect=200)
    request = await a_usage.post(
        "/v1/token-requests",
        {"user": a_user["id"], "kind": "inference", "amount": 5_000, "reason": "a big job"},
        expect=201,
    )
    assert a_admin
    await api.allowances(a_org, {"user": a_user["id"], "max_tokens": 300_000}, expect=200)
    batches = await api.get(f"/v1/organizations/{a_org}/allowance-batches")
    b_org = await funded_org(api)
    b_user = await api.user(b_org, "bob@b.example")
    hook = await api.post(
        f"/v1/organizations/{a_org}/webhooks", {"url": "https://hooks.a.example/"}, expect=201
    )
    boost = await api.post(
        f"/v1/organizations/{a_org}/boosts",
        {"user": a_user["id"], "kind": "inference", "amount": 1_000, "ends_at": BOOST_ENDS},
        expect=201,
    )
    return World(
        a_webhook=hook["id"],
        a_boost=boost["id"],
        a_delivery=await delivered_delivery(db, clock, a_org, hook["id"]),
        a_org=a_org,
        a_user=a_user["id"],
        a_email=a_user["email"],
        a_purchase=purchase["id"],
        a_key=keys[0]["id"],
        a_reservation=reservation["id"],
        a_request=request["id"],
        a_batch=batches["batches"][0]["id"],
        b_org=b_org,
        b_user=b_user["id"],
    )


def test_every_api_route_is_in_the_cross_organization_matrix(app: FastAPI) -> None:
    routes = api_routes(app)
    assert ("POST", "/v1/usage") in routes  # the walk sees into included routers
    missing = routes - set(ROUTES) - PUBLIC
    assert not missing, f"add these routes to ROUTES in {__file__}: {sorted(missing)}"


@pytest.mark.parametrize("scopes", [("admin",), ("usage",), ("read",), ("admin", "usage")])
async def test_another_organization_is_invisible_and_untouched_on_every_route(
    api: Api, world: World, db: Database, scopes: tuple[str, ...]
) -> None:
    other = api.as_key(await api.key(world.b_org, *scopes))
    before = await snapshot(db)
    for (_method, _path), build in sorted(ROUTES.items()):
        for method, path, body in build(world):
            key = uuid.uuid4().hex if path in ("/v1/usage", "/v1/ingest") else None
            response = await other.call(method, path, json=body, idempotency_key=key)
            text = response.text
            if (method, path) == ("GET", "/v1/organizations"):
                assert response.status_code == 200
                assert world.a_org not in text
                continue
            if path == "/v1/usage/batch" and response.status_code == 200:
                result = response.json()["results"][0]
                assert result["status"] == 404, text
                continue
            if path.startswith(f"/v1/organizations/{world.b_org}/allowances") and (
                response.status_code != 403
            ):
                # The caller's own batch, naming someone it can't see: refused row by row
                # exactly as for an email that exists nowhere.
                refused = response.json()["error"]["details"]["refused"]
                assert [row["code"] for row in refused] == ["user_not_found"], text
                continue
            assert response.status_code in (403, 404), (method, path, response.status_code, text)
            sent = path + json.dumps(body)
            for secret in (world.a_email, world.a_user, world.a_org, "Alice"):
                assert secret in sent or secret not in text, (method, path, text)
            assert response.json()["error"]["code"]
    assert await snapshot(db) == before
