"""Mass assignment: fields a caller may not set — the organization, balances, usage, role,
status, version, ids, timestamps, password hashes — sent to every write.

API bodies (and the dashboard's JSON save) refuse unknown fields with 422 invalid_request
naming the field, and nothing is written. Dashboard forms read only their own fields:
the extra ones are ignored, so the write does exactly what the form alone does.
"""

from __future__ import annotations

import re
import typing
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from tests.helpers import Api
from tests.test_route_matrix import MODEL, Caller, Req, World, build_world, send, snapshot
from tokenadmin.clock import FakeClock
from tokenadmin.database import Database
from tokenadmin.models import (
    AllocationPolicy,
    ApiKey,
    Boost,
    JournalEntry,
    LlmModel,
    Organization,
    Purchase,
    Reservation,
    TokenRequest,
    User,
    WebhookDelivery,
    WebhookEndpoint,
)

FIXED_ID = "00000000-0000-4000-8000-000000000001"
LONG_AGO = "2020-01-01T00:00:00Z"


def extras(world: World) -> dict[str, Any]:
    """Fields no caller may set directly, with values that would help an attacker."""
    return {
        "id": FIXED_ID,
        "org_id": world.b_org,
        "organization": world.b_org,
        "organization_id": world.b_org,
        "user_id": world.alice,
        "capacity": 10**12,
        "capacity_inference": 10**12,
        "capacity_training": 10**12,
        "allocated": 0,
        "allocated_inference": 0,
        "allocated_training": 0,
        "balance": 10**12,
        "allowance": 10**12,
        "used": 0,
        "inference_used": 0,
        "training_used": 0,
        "reserved": 0,
        "inference_reserved": 0,
        "training_reserved": 0,
        "remaining": 10**12,
        "committed": 10**6,
        "role": "admin",
        "status": "active",
        "version": 99,
        "created_at": LONG_AGO,
        "updated_at": LONG_AGO,
        "period_start": LONG_AGO,
        "expired_at": LONG_AGO,
        "revoked_at": LONG_AGO,
        "last_activity_at": LONG_AGO,
        "password": "a brand new password",
        "password_hash": "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2g",
        "email": "mallory@b.example",
        "scopes": ["admin", "usage", "read"],
        "key_hash": "0" * 64,
        "prefix": "ta_planted",
        "actor": "operator:root",
        "created_by": "operator:root",
        "journal_entry_id": 1,
    }


# --- the API's JSON bodies ---------------------------------------------------------------------

Route = tuple[str, str]


@dataclass(frozen=True)
class Write:
    caller: str
    path: Callable[[World], str]
    body: Callable[[World], dict[str, Any]] | None
    """A body the route accepts; None: the route takes no body."""
    items: str | None = None
    """The body's list of rows (changes, events): each extra field is tried in a row too."""


JSON_WRITES: dict[Route, Write] = {
    ("PUT", "/v1/models/{name:path}"): Write(
        "operator-key",
        lambda w: "/v1/models/made-here",
        lambda w: {"prompt_rate": "0.5", "completion_rate": "1"},
    ),
    ("DELETE", "/v1/models/{name:path}"): Write("operator-key", lambda w: "/v1/models/gone", None),
    ("PUT", "/v1/organizations/{org_id}/models/{name:path}"): Write(
        "a-admin-key",
        lambda w: f"/v1/organizations/{w.a_org}/models/{MODEL}",
        lambda w: {"prompt_rate": "2", "completion_rate": "3"},
    ),
    ("DELETE", "/v1/organizations/{org_id}/models/{name:path}"): Write(
        "a-admin-key", lambda w: f"/v1/organizations/{w.a_org}/models/gone", None
    ),
    ("PUT", "/v1/organizations/{org_id}/model-access"): Write(
        "a-admin-key",
        lambda w: f"/v1/organizations/{w.a_org}/model-access",
        lambda w: {"allowed": [MODEL]},
    ),
    ("PUT", "/v1/organizations/{org_id}/upstream"): Write(
        "a-admin-key",
        lambda w: f"/v1/organizations/{w.a_org}/upstream",
        lambda w: {"base_url": "https://up.example/v1", "api_key": "sk-x"},
    ),
    ("POST", "/v1/users/{user_id}/api-keys"): Write(
        "a-admin-key", lambda w: f"/v1/users/{w.alice}/api-keys", lambda w: {"name": "laptop"}
    ),
    ("DELETE", "/v1/users/{user_id}/api-keys/{key_id}"): Write(
        "a-admin-key",
        lambda w: f"/v1/users/{w.alice}/api-keys/{w.personal_key_to_revoke}",
        None,
    ),
    ("PUT", "/v1/organizations/{org_id}/policy"): Write(
        "a-admin-key",
        lambda w: f"/v1/organizations/{w.a_org}/policy",
        lambda w: {"inference": {"preset": "standard"}},
    ),
    ("POST", "/v1/organizations/{org_id}/policy/run"): Write(
        "a-admin-key", lambda w: f"/v1/organizations/{w.a_org}/policy/run", lambda w: {}
    ),
    ("POST", "/v1/organizations/{org_id}/boosts"): Write(
        "a-admin-key",
        lambda w: f"/v1/organizations/{w.a_org}/boosts",
        lambda w: {
            "user": w.alice,
            "kind": "inference",
            "amount": 1_000,
            "ends_at": "2026-05-01T00:00:00Z",
        },
    ),
    ("POST", "/v1/organizations/{org_id}/boosts/{boost_id}/end"): Write(
        "a-admin-key", lambda w: f"/v1/organizations/{w.a_org}/boosts/{w.boost_to_end}/end", None
    ),
    ("POST", "/v1/token-requests"): Write(
        "a-admin-key",
        lambda w: "/v1/token-requests",
        lambda w: {"user": w.to_patch, "kind": "inference", "amount": 10, "reason": "a run"},
    ),
    ("POST", "/v1/token-requests/{request_id}/approve"): Write(
        "a-admin-key", lambda w: f"/v1/token-requests/{w.to_approve}/approve", lambda w: {}
    ),
    ("POST", "/v1/token-requests/{request_id}/deny"): Write(
        "a-admin-key",
        lambda w: f"/v1/token-requests/{w.to_deny}/deny",
        lambda w: {"note": "not now"},
    ),
    ("POST", "/v1/token-requests/{request_id}/withdraw"): Write(
        "a-admin-key", lambda w: f"/v1/token-requests/{w.to_withdraw}/withdraw", None
    ),
    ("POST", "/v1/organizations"): Write(
        "operator-key", lambda w: "/v1/organizations", lambda w: {"name": "New"}
    ),
    ("PATCH", "/v1/organizations/{org_id}"): Write(
        "a-admin-key", lambda w: f"/v1/organizations/{w.a_org}", lambda w: {"name": "Renamed"}
    ),
    ("POST", "/v1/organizations/{org_id}/purchases"): Write(
        "operator-key",
        lambda w: f"/v1/organizations/{w.a_org}/purchases",
        lambda w: {"inference_amount": 1_000},
    ),
    ("PATCH", "/v1/organizations/{org_id}/purchases/{purchase_id}"): Write(
        "operator-key",
        lambda w: f"/v1/organizations/{w.a_org}/purchases/{w.a_purchase}",
        lambda w: {"expires_at": "2030-01-01T00:00:00Z"},
    ),
    ("POST", "/v1/organizations/{org_id}/api-keys"): Write(
        "a-admin-key",
        lambda w: f"/v1/organizations/{w.a_org}/api-keys",
        lambda w: {"name": "reporting", "scopes": ["read"]},
    ),
    ("DELETE", "/v1/organizations/{org_id}/api-keys/{key_id}"): Write(
        "a-admin-key",
        lambda w: f"/v1/organizations/{w.a_org}/api-keys/{w.api_key_to_revoke}",
        None,
    ),
    ("POST", "/v1/organizations/{org_id}/users"): Write(
        "a-admin-key",
        lambda w: f"/v1/organizations/{w.a_org}/users",
        lambda w: {"email": "new@a.example", "name": "New"},
    ),
    ("POST", "/v1/organizations/{org_id}/users/import"): Write(
        "a-admin-key",
        lambda w: f"/v1/organizations/{w.a_org}/users/import",
        lambda w: {"csv": f"email,max_tokens\n{w.alice_email},260000\n", "dry_run": False},
    ),
    ("POST", "/v1/organizations/{org_id}/allowances"): Write(
        "a-admin-key",
        lambda w: f"/v1/organizations/{w.a_org}/allowances",
        lambda w: {"changes": [{"user": w.alice_email, "max_tokens": 250_000}]},
        items="changes",
    ),
    ("POST", "/v1/organizations/{org_id}/allowance-batches/{batch}/revert"): Write(
        "a-admin-key",
        lambda w: f"/v1/organizations/{w.a_org}/allowance-batches/{w.batch_to_revert}/revert",
        lambda w: {"dry_run": True},
    ),
    ("POST", "/v1/organizations/{org_id}/distribution/preview"): Write(
        "a-admin-key",
        lambda w: f"/v1/organizations/{w.a_org}/distribution/preview",
        lambda w: {"inference": {"method": "equal"}, "users": [w.alice_email]},
    ),
    ("POST", "/v1/organizations/{org_id}/distribution"): Write(
        "a-admin-key",
        lambda w: f"/v1/organizations/{w.a_org}/distribution",
        lambda w: {"training": {"method": "fixed", "amount": 1_000}, "users": [w.alice]},
    ),
    ("PATCH", "/v1/users/{user_id}"): Write(
        "a-admin-key", lambda w: f"/v1/users/{w.to_patch}", lambda w: {"max_tokens": 260_000}
    ),
    ("POST", "/v1/users/{user_id}/deactivate"): Write(
        "a-admin-key", lambda w: f"/v1/users/{w.to_deactivate}/deactivate", None
    ),
    ("POST", "/v1/users/{user_id}/reactivate"): Write(
        "a-admin-key",
        lambda w: f"/v1/users/{w.to_reactivate}/reactivate",
        lambda w: {"max_tokens": 210_000},
    ),
    ("POST", "/v1/usage"): Write(
        "a-usage-key",
        lambda w: "/v1/usage",
        lambda w: {"user": w.alice, "kind": "inference", "tokens": 10},
    ),
    ("POST", "/v1/ingest"): Write(
        "a-usage-key",
        lambda w: "/v1/ingest",
        lambda w: {"user": w.alice, "tokens": 10, "dataset": "docs"},
    ),
    ("POST", "/v1/usage/batch"): Write(
        "a-usage-key",
        lambda w: "/v1/usage/batch",
        lambda w: {
            "events": [{"user": w.alice, "kind": "training", "tokens": 5, "idempotency_key": "k1"}]
        },
        items="events",
    ),
    ("POST", "/v1/reservations"): Write(
        "a-usage-key",
        lambda w: "/v1/reservations",
        lambda w: {"user": w.alice, "kind": "inference", "tokens": 10},
    ),
    ("POST", "/v1/reservations/{reservation_id}/commit"): Write(
        "a-usage-key", lambda w: f"/v1/reservations/{w.to_commit}/commit", lambda w: {"tokens": 1}
    ),
    ("POST", "/v1/reservations/{reservation_id}/release"): Write(
        "a-usage-key", lambda w: f"/v1/reservations/{w.to_release}/release", None
    ),
    ("POST", "/v1/organizations/{org_id}/webhooks"): Write(
        "a-admin-key",
        lambda w: f"/v1/organizations/{w.a_org}/webhooks",
        lambda w: {"url": "https://hooks.a.example/m", "kinds": ["balance.low"]},
    ),
    ("PATCH", "/v1/organizations/{org_id}/webhooks/{webhook_id}"): Write(
        "a-admin-key",
        lambda w: f"/v1/organizations/{w.a_org}/webhooks/{w.webhook}",
        lambda w: {"description": "patched"},
    ),
    ("DELETE", "/v1/organizations/{org_id}/webhooks/{webhook_id}"): Write(
        "a-admin-key",
        lambda w: f"/v1/organizations/{w.a_org}/webhooks/{w.webhook_to_remove}",
        None,
    ),
    ("POST", "/v1/organizations/{org_id}/webhooks/{webhook_id}/rotate-secret"): Write(
        "a-admin-key",
        lambda w: f"/v1/organizations/{w.a_org}/webhooks/{w.webhook}/rotate-secret",
        None,
    ),
    ("POST", "/v1/webhook-deliveries/{delivery_id}/resend"): Write(
        "a-admin-key", lambda w: f"/v1/webhook-deliveries/{w.delivery_to_resend}/resend", None
    ),
    ("POST", "/orgs/{org_id}/allowances"): Write(
        "a-admin-session",
        lambda w: f"/orgs/{w.a_org}/allowances",
        lambda w: {"changes": [{"user": w.alice, "max_train_tokens": 1_000}], "dry_run": False},
        items="changes",
    ),
}


def _models(annotation: Any) -> list[type[BaseModel]]:
    """The body models of a route's body annotation (`Model` or `Model | None`)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models(arg)]


def field_names(model: type[BaseModel]) -> set[str]:
    """A model's fields and those of the models it holds (the rows of a batch)."""
    names = set(model.model_fields)
    for info in model.model_fields.values():
        for inner in typing.get_args(info.annotation) or (info.annotation,):
            for nested in _models(inner):
                names |= field_names(nested)
    return names


def write_routes(app: FastAPI) -> dict[Route, set[str] | None]:
    """Every route that writes, with the names its body or form may carry (None: the
    route reads no fields of its own from the request, or reads them itself)."""
    found: dict[Route, set[str] | None] = {}
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        if not isinstance(route, APIRoute) or context.path is None:
            continue
        for method in (context.methods or set()) - {"GET", "HEAD"}:
            names: set[str] | None = None
            body = route.body_field
            if body is not None:
                models = _models(body.field_info.annotation)
                if models and not models[0].__name__.startswith("Body_"):
                    names = set().union(*(field_names(m) for m in models))
                else:
                    names = {param.name for param in route.dependant.body_params}
            found[(method, context.path)] = names
    return found


@pytest.fixture
async def world(api: Api, db: Database, clock: FakeClock) -> World:
    return await build_world(api, db, clock)


def test_every_write_route_is_tried(app: FastAPI) -> None:
    routes = write_routes(app)
    assert ("POST", "/v1/usage/batch") in routes
    assert routes[("POST", "/v1/usage")]
    assert "tokens" in (routes[("POST", "/v1/usage")] or ())
    missing = sorted(set(routes) - set(JSON_WRITES) - set(FORMS))
    assert not missing, f"add these writes to JSON_WRITES or FORMS in {__file__}: {missing}"
    gone = sorted((set(JSON_WRITES) | set(FORMS)) - set(routes))
    assert not gone, f"no longer served: {gone}"


def _refused_naming(response: httpx.Response, name: str) -> str | None:
    if response.status_code != 422:
        return f"{response.status_code} {response.text[:200]}"
    error = response.json()["error"]
    fields = [problem["field"] for problem in error["details"].get("errors", [])]
    if error["code"] != "invalid_request" or not any(f.split(".")[-1] == name for f in fields):
        return f"{error['code']} {fields}"
    return None


async def test_api_bodies_refuse_every_field_a_caller_may_not_set_and_nothing_is_written(
    app: FastAPI, client: httpx.AsyncClient, db: Database, world: World
) -> None:
    routes = write_routes(app)
    before = await snapshot(db)
    problems, tried = [], 0
    for route, write in JSON_WRITES.items():
        if write.body is None:
            continue
        allowed = routes[route] or set()
        caller = world.callers[write.caller]
        for name, value in extras(world).items():
            if name in allowed:
                continue
            places = [write.body(world) | {name: value}]
            if write.items:
                body = write.body(world)
                body[write.items] = [row | {name: value} for row in body[write.items]]
                places.append(body)
            for body in places:
                req = Req(route[0], write.path(world), json=body)
                tried += 1
                wrong = _refused_naming(await send(client, req, caller), name)
                if wrong:
                    problems.append(f"{route} with {name}: {wrong}")
    assert not problems, "\n".join(problems)
    assert tried > 400, tried
    after = await snapshot(db)
    for table in before:
        assert after[table] == before[table], (
            table,
            set(after[table]) - set(before[table]),
            set(before[table]) - set(after[table]),
        )

    # The same bodies without the extra fields are accepted: the refusals were theirs.
    for route, write in JSON_WRITES.items():
        if write.body is not None:
            req = Req(route[0], write.path(world), json=write.body(world))
            response = await send(client, req, world.callers[write.caller])
            assert response.status_code in (200, 201), (route, response.text)


async def test_roles_a_user_may_not_hold_are_refused(
    client: httpx.AsyncClient, db: Database, world: World
) -> None:
    caller = world.callers["a-admin-key"]
    before = await snapshot(db)
    for role in ("operator", "owner", "superadmin", "ADMIN", "", ["admin"], 1):
        create = Req(
            "POST",
            f"/v1/organizations/{world.a_org}/users",
            json={"email": "x@a.example", "name": "X", "role": role},
        )
        update = Req("PATCH", f"/v1/users/{world.to_patch}", json={"role": role})
        for req in (create, update):
            response = await send(client, req, caller)
            assert response.status_code == 422, (role, response.text)
            assert response.json()["error"]["code"] == "invalid_request"
    for scopes in (["operator"], ["admin", "root"], []):
        req = Req(
            "POST",
            f"/v1/organizations/{world.a_org}/api-keys",
            json={"name": "x", "scopes": scopes},
        )
        response = await send(client, req, caller)
        assert response.status_code == 422, (scopes, response.text)
    after = await snapshot(db)
    # A refusal that got past the schema is remembered for its idempotency key (so a retry
    # answers the same); that record is all that is written.
    remembered = set(after.pop("idempotency_records")) - set(before.pop("idempotency_records"))
    assert {row[3] for row in remembered} <= {"422"}
    assert after == before


async def _row(db: Database, model: Any, key: Any) -> Any:
    async def read(session: AsyncSession) -> Any:
        return await session.get(model, uuid.UUID(str(key)))

    return await db.read(read)


async def test_writes_without_a_body_ignore_one_and_do_only_their_own_work(
    client: httpx.AsyncClient, db: Database, world: World, clock: FakeClock
) -> None:
    junk = extras(world)
    user_before = await _row(db, User, world.to_deactivate)
    deactivate = Req("POST", f"/v1/users/{world.to_deactivate}/deactivate", json=junk)
    assert (await send(client, deactivate, world.callers["a-admin-key"])).status_code == 200
    user = await _row(db, User, world.to_deactivate)
    assert (user.status, str(user.org_id), user.role) == ("deactivated", world.a_org, "member")
    assert user.version == user_before.version + 1
    assert user.password_hash is None

    revoke = Req(
        "DELETE", f"/v1/organizations/{world.a_org}/api-keys/{world.api_key_to_revoke}", json=junk
    )
    assert (await send(client, revoke, world.callers["a-admin-key"])).status_code == 200
    key = await _row(db, ApiKey, world.api_key_to_revoke)
    assert (str(key.org_id), key.scopes, key.revoked_at) == (world.a_org, "read", clock.now())

    release = Req("POST", f"/v1/reservations/{world.to_release}/release", json=junk)
    assert (await send(client, release, world.callers["a-usage-key"])).status_code == 200
    reservation = await _row(db, Reservation, world.to_release)
    assert (reservation.status, reservation.committed_amount) == ("released", None)
    assert str(reservation.org_id) == world.a_org


# --- dashboard forms ---------------------------------------------------------------------------


@dataclass
class Page:
    """A dashboard form posted as one caller, with every extra field added."""

    client: httpx.AsyncClient
    db: Database
    api: Api
    world: World
    clock: FakeClock

    async def post(self, role: str, path: str, form: dict[str, Any]) -> httpx.Response:
        fields: dict[str, Any] = {
            name: value if isinstance(value, list) else str(value)
            for name, value in extras(self.world).items()
            if name not in form
        }
        req = Req("POST", path, form=fields | form, page=True)
        return await send(self.client, req, self.world.callers[role])

    async def get(self, role: str, path: str) -> httpx.Response:
        return await send(self.client, Req("GET", path, page=True), self.world.callers[role])

    async def org(self) -> Organization:
        found: Organization = await _row(self.db, Organization, self.world.a_org)
        return found

    async def user_by_email(self, email: str) -> User | None:
        async def read(session: AsyncSession) -> User | None:
            return await session.scalar(select(User).where(User.email == email))

        return await self.db.read(read)


async def _add_user(page: Page) -> None:
    capacity = (await page.org()).capacity_inference
    path = f"/orgs/{page.world.a_org}/users"
    form = {"name": "Planted", "email": "planted@a.example", "role": "member", "max_tokens": "250K"}
    response = await page.post("a-admin-session", path, form)
    assert response.status_code == 303, response.text
    user = await page.user_by_email("planted@a.example")
    assert user is not None
    assert (str(user.org_id), user.status, user.role, user.version) == (
        page.world.a_org,
        "active",
        "member",
        1,
    )
    assert (user.max_tokens, user.inference_used, user.inference_reserved) == (250_000, 0, 0)
    assert str(user.id) != FIXED_ID
    assert user.password_hash is None
    assert user.created_at == page.clock.now()
    assert (await page.org()).capacity_inference == capacity
    # A role that does not exist is refused, with the form's fields kept.
    refused = await page.post("a-admin-session", path, form | {"email": "x@a.example", "role": "x"})
    assert refused.status_code == 422
    assert await page.user_by_email("x@a.example") is None


async def _user_actions(page: Page) -> None:
    before = await _row(page.db, User, page.world.to_act_on)
    form = {"action": "make_admin", "user": [page.world.to_act_on]}
    response = await page.post("a-admin-session", f"/orgs/{page.world.a_org}/users/actions", form)
    assert response.status_code == 303, response.text
    user = await _row(page.db, User, page.world.to_act_on)
    assert (user.role, user.status, user.version) == ("admin", "active", before.version + 1)
    assert (user.max_tokens, user.inference_used, str(user.org_id)) == (
        before.max_tokens,
        before.inference_used,
        page.world.a_org,
    )


async def _policy(page: Page) -> None:
    org = await page.org()
    form = {
        "name": "Renamed",
        "time_zone": "UTC",
        "period": "monthly",
        "min_inference": "200000",
        "min_training": "0",
    }
    response = await page.post("a-admin-session", f"/orgs/{page.world.a_org}/settings/policy", form)
    assert response.status_code == 303, response.text
    after = await page.org()
    assert after.name == "Renamed"
    assert (after.capacity_inference, after.allocated_inference, after.created_at) == (
        org.capacity_inference,
        org.allocated_inference,
        org.created_at,
    )
    assert (after.period_start, after.overallocation) == (org.period_start, False)
    assert after.version in (org.version, org.version + 1)


async def _create_key(page: Page) -> None:
    form = {"name": "reporting", "scopes": ["read"]}
    response = await page.post("a-admin-session", f"/orgs/{page.world.a_org}/settings/keys", form)
    assert response.status_code == 200, response.text

    async def read(session: AsyncSession) -> ApiKey | None:
        return await session.scalar(select(ApiKey).where(ApiKey.name == "reporting"))

    key = await page.db.read(read)
    assert key is not None
    assert (str(key.org_id), key.scopes, key.revoked_at) == (page.world.a_org, "read", None)
    assert (key.created_by, str(key.id)) != ("operator:root", FIXED_ID)
    assert key.key_hash != "0" * 64
    assert key.prefix != "ta_planted"
    assert key.prefix in response.text


async def _revoke_key(page: Page) -> None:
    key_id = page.world.page_key_to_revoke
    path = f"/orgs/{page.world.a_org}/settings/keys/{key_id}/revoke"
    response = await page.post("a-admin-session", path, {})
    assert response.status_code == 303, response.text
    key = await _row(page.db, ApiKey, key_id)
    assert (str(key.org_id), key.revoked_at) == (page.world.a_org, page.clock.now())


async def _distribute(page: Page) -> None:
    path = f"/orgs/{page.world.a_org}/distribute"
    alice = await _row(page.db, User, page.world.alice)
    form = {
        "method": "fixed",
        "amount": "1000",
        "scope": "selected",
        "users": [page.world.alice],
    }
    preview = await page.post("a-admin-session", path, form | {"action": "preview"})
    assert preview.status_code == 200, preview.text
    digest = re.search(r'name="digest" value="([0-9a-f]+)"', preview.text)
    assert digest
    applied = await page.post(
        "a-admin-session",
        path,
        form | {"action": "apply", "digest": digest.group(1)},
    )
    assert applied.status_code == 303, applied.text
    after = await _row(page.db, User, page.world.alice)
    assert after.max_tokens == alice.max_tokens + 1_000
    assert (after.version, after.inference_used) == (alice.version + 1, alice.inference_used)


async def _import(page: Page) -> None:
    path = f"/orgs/{page.world.a_org}/import"
    alice = await _row(page.db, User, page.world.alice)
    email = page.world.alice_email
    before = await snapshot(page.db)
    # Columns that name the organization, the stored hash or the id are refused whole;
    # a status or a version other than the user's are refused row by row.
    for csv_text in (
        f"email,max_tokens,org_id\n{email},300000,{page.world.b_org}\n",
        f"email,max_tokens,password_hash\n{email},300000,x\n",
        f"email,max_tokens,id\n{email},300000,{FIXED_ID}\n",
        f"email,max_tokens,status\n{email},300000,deactivated\n",
        f"email,max_tokens,version\n{email},300000,99\n",
    ):
        response = await page.post(
            "a-admin-session", path, {"action": "apply", "csv_text": csv_text}
        )
        assert response.status_code == 422, (csv_text, response.text)
    assert await snapshot(page.db) == before
    # The usage columns of an export are read-only: ignored.
    csv_text = f"email,max_tokens,inference_used,training_used\n{email},300000,0,0\n"
    response = await page.post("a-admin-session", path, {"action": "apply", "csv_text": csv_text})
    assert response.status_code == 303, response.text
    after = await _row(page.db, User, page.world.alice)
    assert (after.max_tokens, after.inference_used) == (300_000, alice.inference_used)
    assert alice.inference_used > 0


async def _request_tokens(page: Page) -> None:
    form = {"kind": "inference", "amount": "50K", "reason": "a launch"}
    response = await page.post("a-member-session", "/me/requests", form)
    assert response.status_code == 303, response.text

    async def read(session: AsyncSession) -> JournalEntry | None:
        statement = select(JournalEntry).order_by(JournalEntry.id.desc()).limit(1)
        return await session.scalar(statement)

    entry = await page.db.read(read)
    assert entry is not None
    member = await page.user_by_email("max@a.example")
    assert member is not None
    assert (entry.action, entry.user_id, str(entry.org_id)) == (
        "tokens_requested",
        member.id,
        page.world.a_org,
    )
    assert entry.actor == "user:max@a.example"
    assert entry.reason == "a launch"
    assert entry.details is not None
    assert (entry.details["kind"], entry.details["amount"]) == ("inference", 50_000)
    assert (entry.capacity_delta, entry.allocated_delta, entry.allowance_delta) == (0, 0, 0)


async def _decide_request(page: Page) -> None:
    # A decision does what its form says; the state, amounts and users it names are ignored.
    w = page.world
    approve = f"/orgs/{w.a_org}/token-requests/{w.to_approve}/approve"
    response = await page.post("a-admin-session", approve, {"amount": "500", "note": "ok"})
    assert response.status_code == 303, response.text
    deny = f"/orgs/{w.a_org}/token-requests/{w.to_deny}/deny"
    response = await page.post("a-admin-session", deny, {"note": "not now"})
    assert response.status_code == 303, response.text
    withdraw = f"/me/requests/{w.to_withdraw}/withdraw"
    response = await page.post("a-member-session", withdraw, {})
    assert response.status_code == 303, response.text
    found = {str(r.id): r for r in await page.db.read(lambda s: _all(s, TokenRequest)) if r.org_id}
    assert (found[w.to_approve].state, found[w.to_approve].approved_amount) == ("approved", 500)
    assert (found[w.to_deny].state, found[w.to_deny].note) == ("denied", "not now")
    assert found[w.to_withdraw].state == "withdrawn"
    alice = await _row(page.db, User, w.alice)
    assert alice.max_tokens == 200_500


async def _all(session: AsyncSession, model: type[TokenRequest]) -> list[TokenRequest]:
    return list((await session.scalars(select(model))).all())


async def _operator_org(page: Page) -> None:
    response = await page.post("operator-session", "/operator/orgs", {"name": "Fresh"})
    assert response.status_code == 303, response.text

    async def read(session: AsyncSession) -> Organization | None:
        return await session.scalar(select(Organization).where(Organization.name == "Fresh"))

    org = await page.db.read(read)
    assert org is not None
    assert str(org.id) != FIXED_ID
    assert (org.capacity_inference, org.capacity_training, org.allocated_inference) == (0, 0, 0)
    assert (org.overallocation, org.created_at) == (False, page.clock.now())


async def _operator_purchase(page: Page) -> None:
    org = await page.org()
    form = {"org_id": page.world.a_org, "inference_amount": "1,000"}
    response = await page.post("operator-session", "/operator/purchases", form)
    assert response.status_code == 303, response.text
    after = await page.org()
    assert after.capacity_inference == org.capacity_inference + 1_000
    assert after.capacity_training == org.capacity_training

    async def read(session: AsyncSession) -> Purchase | None:
        statement = select(Purchase).where(
            Purchase.org_id == uuid.UUID(page.world.a_org), Purchase.inference_amount == 1_000
        )
        return await session.scalar(statement)

    purchase = await page.db.read(read)
    assert purchase is not None
    assert (purchase.expired_at, purchase.created_by) == (None, "operator:olga@ops.example")
    assert str(purchase.id) != FIXED_ID


async def _sign_in(page: Page) -> None:
    # A member signing in with role/kind/org fields is still a member of their organization.
    password = "member password 1"
    await page.api.user(page.world.a_org, "pat@a.example", password=password)
    form = {"email": "pat@a.example", "password": password, "kind": "operator"}
    req = Req("POST", "/login", form=extras(page.world) | form, page=True, sign_in_form=True)
    response = await send(page.client, req, Caller())
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/me"
    cookie = response.headers["set-cookie"].split(";")[0]
    session = Caller(session=cookie.split("=", 1)[1])
    admin_page = await send(
        page.client, Req("GET", f"/orgs/{page.world.a_org}", page=True), session
    )
    assert admin_page.status_code == 404


async def _sign_out(page: Page) -> None:
    # Signing out ends the caller's own session only, whatever the form names.
    admin = page.world.callers["a-admin-session"]
    response = await page.post(
        "a-member-session", "/logout", {"token": admin.session or "", "session": admin.session}
    )
    assert response.status_code == 303
    assert (await page.get("a-admin-session", f"/orgs/{page.world.a_org}")).status_code == 200
    me = await page.get("a-member-session", "/me")
    assert me.status_code == 303


async def _model_row(page: Page, org_id: str | None) -> LlmModel | None:
    async def read(session: AsyncSession) -> LlmModel | None:
        owner = (
            LlmModel.org_id.is_(None) if org_id is None else LlmModel.org_id == uuid.UUID(org_id)
        )
        return await session.scalar(select(LlmModel).where(owner, LlmModel.name == MODEL))

    return await page.db.read(read)


async def _model_rates(page: Page) -> None:
    # The form's organization is the page's, whatever org_id or id the form names.
    form = {"name": MODEL, "prompt_rate": "2", "completion_rate": "3"}
    response = await page.post("a-admin-session", f"/orgs/{page.world.a_org}/models/rates", form)
    assert response.status_code == 303, response.text
    own = await _model_row(page, page.world.a_org)
    assert own is not None
    assert str(own.id) != FIXED_ID
    assert (own.prompt_rate, own.completion_rate) == ("2", "3")
    assert await _model_row(page, page.world.b_org) is None
    platform = await _model_row(page, None)
    assert platform is not None
    assert (platform.prompt_rate, platform.completion_rate) == ("1", "1")


async def _model_reset(page: Page) -> None:
    path = f"/orgs/{page.world.a_org}/models/reset"
    response = await page.post("a-admin-session", path, {"name": MODEL})
    assert response.status_code == 303, response.text
    assert await _model_row(page, page.world.a_org) is None
    assert await _model_row(page, None) is not None


async def _model_access(page: Page) -> None:
    path = f"/orgs/{page.world.a_org}/models/access"
    response = await page.post("a-admin-session", path, {"mode": "selected", "allowed": [MODEL]})
    assert response.status_code == 303, response.text
    assert (await page.org()).allowed_models == [MODEL]


async def _model_upstream(page: Page) -> None:
    form = {"base_url": "https://up.example/v1", "api_key": "sk-x"}
    path = f"/orgs/{page.world.a_org}/models/upstream"
    response = await page.post("a-admin-session", path, form)
    assert response.status_code == 303, response.text
    org = await page.org()
    assert (org.upstream_base_url, org.upstream_api_key) == ("https://up.example/v1", "sk-x")


async def _my_key(page: Page) -> None:
    # A key of one's own is the signed-in person's, with no scopes, whatever the form says.
    response = await page.post("a-member-session", "/me/api-keys", {"name": "mine"})
    assert response.status_code == 200, response.text

    async def read(session: AsyncSession) -> ApiKey | None:
        return await session.scalar(select(ApiKey).where(ApiKey.name == "mine"))

    key = await page.db.read(read)
    assert key is not None
    assert key.user_id is not None
    assert str(key.user_id) != page.world.alice
    assert (str(key.org_id), key.scopes, key.prefix != "ta_planted") == (page.world.a_org, "", True)


async def _revoke_my_key(page: Page) -> None:
    path = f"/me/api-keys/{page.world.my_key_to_revoke}/revoke"
    response = await page.post("a-member-session", path, {})
    assert response.status_code == 303, response.text
    key = await _row(page.db, ApiKey, page.world.my_key_to_revoke)
    assert key.revoked_at == page.clock.now()
    other = await _row(page.db, ApiKey, page.world.personal_key_to_revoke)
    assert other.revoked_at is None


async def _revert(page: Page) -> None:
    # The form has only the preview's token: the batch and the organization are the path's.
    alice = await _row(page.db, User, page.world.alice)
    path = f"/orgs/{page.world.a_org}/batches/{page.world.batch_to_revert}/revert"
    response = await page.post("a-admin-session", path, {})
    assert response.status_code == 303, response.text
    batches = await page.api.get(f"/v1/organizations/{page.world.a_org}/allowance-batches")
    newest, reverted = batches["batches"][:2]
    assert (reverted["id"], reverted["reverted"]) == (page.world.batch_to_revert, True)
    assert (newest["reverts"], newest["delta"]["inference"], newest["rows"]) == (
        page.world.batch_to_revert,
        -100_000,
        1,
    )
    after = await _row(page.db, User, page.world.alice)
    assert (after.max_tokens, after.version) == (alice.max_tokens, alice.version)


async def _user_allowances(page: Page) -> None:
    # One user's allowances from their page: the path names the user, not the form.
    before = await _row(page.db, User, page.world.to_patch)
    path = f"/orgs/{page.world.a_org}/users/{page.world.to_patch}/allowances"
    form = {
        "max_tokens": "260000",
        "max_tokens_was": str(before.max_tokens),
        "max_train_tokens": str(before.max_train_tokens),
        "max_train_tokens_was": str(before.max_train_tokens),
        "version": str(before.version),
    }
    response = await page.post("a-admin-session", path, form)
    assert response.status_code == 303, response.text
    user = await _row(page.db, User, page.world.to_patch)
    assert (user.max_tokens, user.role, user.status, str(user.org_id)) == (
        260_000,
        before.role,
        before.status,
        page.world.a_org,
    )
    assert (user.inference_used, user.version) == (before.inference_used, before.version + 1)
    alice = await _row(page.db, User, page.world.alice)
    assert alice.max_tokens != 260_000


async def _endpoints(session: AsyncSession) -> list[WebhookEndpoint]:
    return list((await session.scalars(select(WebhookEndpoint))).all())


async def _webhooks(page: Page) -> None:
    # Each webhook form does what it says; the organization, ids, secret and times sent
    # beside it are ignored.
    w = page.world
    base = f"/orgs/{w.a_org}/webhooks"
    planted = {"secret": "whsec_planted", "sends_since": LONG_AGO, "enabled": "false"}
    form = {"url": "https://hooks.a.example/f", "description": "ops"} | planted
    response = await page.post("a-admin-session", base, form)
    assert response.status_code == 200, response.text
    assert "whsec_planted" not in response.text
    hooks = {str(h.id): h for h in await page.db.read(_endpoints)}
    [made] = [h for h in hooks.values() if h.url == "https://hooks.a.example/f"]
    assert (str(made.org_id), made.created_by, made.secret != "whsec_planted") == (
        w.a_org,
        "user:ada@a.example",
        True,
    )
    assert (made.enabled, made.sends_since) == (True, made.created_at)
    assert str(made.id) != FIXED_ID

    kept = hooks[w.webhook]
    off = {"enabled": "false"}
    response = await page.post("a-admin-session", f"{base}/{w.webhook}/enabled", off)
    assert response.status_code == 303, response.text
    response = await page.post("a-admin-session", f"{base}/{w.webhook}/rotate-secret", {})
    assert response.status_code == 200, response.text
    now = await _row(page.db, WebhookEndpoint, w.webhook)
    assert (now.enabled, now.url, now.org_id, now.created_at) == (
        False,
        kept.url,
        kept.org_id,
        kept.created_at,
    )
    assert now.secret != kept.secret
    assert now.secret != "whsec_planted"
    resend = f"/orgs/{w.a_org}/webhook-deliveries/{w.delivery_to_resend}/resend"
    response = await page.post("a-admin-session", resend, {})
    assert response.status_code == 303, response.text
    delivery = await _row(page.db, WebhookDelivery, w.delivery_to_resend)
    assert (delivery.state, delivery.sequence, str(delivery.org_id)) == ("pending", 2, w.a_org)
    response = await page.post("a-admin-session", f"{base}/{w.webhook_to_remove}/remove", {})
    assert response.status_code == 303, response.text
    left = {str(h.id) for h in await page.db.read(_endpoints)}
    assert w.webhook_to_remove not in left
    assert w.webhook in left


async def _allocation_policy(page: Page) -> None:
    w = page.world
    base = f"/orgs/{w.a_org}/policy"
    form = {
        "action": "save",
        "inference_preset": "conservative",
        "inference_enabled": "true",
        "training_preset": "standard",
    }
    response = await page.post("a-admin-session", base, form)
    assert response.status_code == 303, response.text

    async def read(session: AsyncSession) -> dict[str, AllocationPolicy]:
        org_id = uuid.UUID(w.a_org)
        rows = await session.scalars(
            select(AllocationPolicy).where(AllocationPolicy.org_id == org_id)
        )
        return {row.kind: row for row in rows}

    saved = await page.db.read(read)
    assert (saved["inference"].preset, saved["inference"].enabled) == ("conservative", True)
    assert saved["inference"].version == 1
    assert saved["inference"].updated_by != "operator:root"
    assert str(saved["inference"].id) != FIXED_ID
    response = await page.post("a-admin-session", f"{base}/run", {})
    assert response.status_code == 303, response.text

    alice = await _row(page.db, User, w.alice)
    response = await page.post(
        "a-admin-session",
        f"/orgs/{w.a_org}/boosts",
        {"user": w.alice_email, "kind": "inference", "amount": "1K", "ends_at": "2026-05-01"},
    )
    assert response.status_code == 303, response.text
    after = await _row(page.db, User, w.alice)
    assert (after.max_tokens, after.role, after.status) == (
        alice.max_tokens + 1_000,
        alice.role,
        alice.status,
    )
    end = f"/orgs/{w.a_org}/boosts/{w.boost_to_end}/end"
    response = await page.post("a-admin-session", end, {})
    assert response.status_code == 303, response.text
    boost = await _row(page.db, Boost, w.boost_to_end)
    assert (boost.state, str(boost.org_id)) == ("ended", w.a_org)
    assert boost.ended_by != "operator:root"


FORMS: dict[Route, Callable[[Page], Awaitable[None]]] = {
    ("POST", "/orgs/{org_id}/policy"): _allocation_policy,
    ("POST", "/orgs/{org_id}/policy/run"): _allocation_policy,
    ("POST", "/orgs/{org_id}/boosts"): _allocation_policy,
    ("POST", "/orgs/{org_id}/boosts/{boost_id}/end"): _allocation_policy,
    ("POST", "/orgs/{org_id}/webhooks"): _webhooks,
    ("POST", "/orgs/{org_id}/webhooks/{webhook_id}/enabled"): _webhooks,
    ("POST", "/orgs/{org_id}/webhooks/{webhook_id}/rotate-secret"): _webhooks,
    ("POST", "/orgs/{org_id}/webhooks/{webhook_id}/remove"): _webhooks,
    ("POST", "/orgs/{org_id}/webhook-deliveries/{delivery_id}/resend"): _webhooks,
    ("POST", "/orgs/{org_id}/batches/{batch}/revert"): _revert,
    ("POST", "/orgs/{org_id}/users/{user_id}/allowances"): _user_allowances,
    ("POST", "/orgs/{org_id}/models/rates"): _model_rates,
    ("POST", "/orgs/{org_id}/models/reset"): _model_reset,
    ("POST", "/orgs/{org_id}/models/access"): _model_access,
    ("POST", "/orgs/{org_id}/models/upstream"): _model_upstream,
    ("POST", "/me/api-keys"): _my_key,
    ("POST", "/me/api-keys/{key_id}/revoke"): _revoke_my_key,
    ("POST", "/orgs/{org_id}/users"): _add_user,
    ("POST", "/orgs/{org_id}/users/actions"): _user_actions,
    ("POST", "/orgs/{org_id}/settings/policy"): _policy,
    ("POST", "/orgs/{org_id}/settings/keys"): _create_key,
    ("POST", "/orgs/{org_id}/settings/keys/{key_id}/revoke"): _revoke_key,
    ("POST", "/orgs/{org_id}/distribute"): _distribute,
    ("POST", "/orgs/{org_id}/import"): _import,
    ("POST", "/me/requests"): _request_tokens,
    ("POST", "/me/requests/{request_id}/withdraw"): _decide_request,
    ("POST", "/orgs/{org_id}/token-requests/{request_id}/approve"): _decide_request,
    ("POST", "/orgs/{org_id}/token-requests/{request_id}/deny"): _decide_request,
    ("POST", "/operator/orgs"): _operator_org,
    ("POST", "/operator/purchases"): _operator_purchase,
    ("POST", "/login"): _sign_in,
    ("POST", "/logout"): _sign_out,
}


@pytest.mark.parametrize("route", sorted(FORMS), ids=lambda route: route[1])
async def test_dashboard_forms_ignore_fields_they_do_not_have(
    client: httpx.AsyncClient,
    db: Database,
    api: Api,
    world: World,
    clock: FakeClock,
    route: Route,
) -> None:
    await FORMS[route](Page(client, db, api, world, clock))
