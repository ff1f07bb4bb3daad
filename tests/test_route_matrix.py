"""Who may call what: every route of the app (the API, the dashboard, health, the OpenAPI
documents, the static files) against every kind of caller, in one explicit table.

A route missing from MATRIX, or named there but no longer served, fails the suite. Each
caller runs every route against organization A: what the table denies must be refused
(401, 403, 404, or the sign-in redirect for pages) and change nothing in the database;
what it allows must work. Callers of organization B never see or change anything of A.
"""

from __future__ import annotations

import hashlib
import html
import secrets
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.routing import Mount

from tests.helpers import Api, funded_org
from tests.scenarios import org_api
from tests.test_webhooks import delivered_delivery
from tokenadmin.auth import service as auth_service
from tokenadmin.clock import FakeClock
from tokenadmin.database import Database
from tokenadmin.models import Base, DashboardSession

ROLES = (
    "anonymous",
    "operator-key",
    "operator-session",
    "a-admin-key",
    "a-usage-key",
    "a-read-key",
    "a-admin-session",
    "a-member-session",
    "b-admin-key",
    "b-usage-key",
    "b-read-key",
    "b-admin-session",
    "b-member-session",
)

# One column per caller: "an" anonymous; "op" the platform operator, with its API key (k)
# or signed in to the dashboard (s); "A" the organization every request targets and "B"
# another one, each with an admin key (k), a usage key (u), a read key (r), an admin's
# dashboard session (S) and a member's (m). Y: allowed, -: refused. Routes that act on the
# caller's own things (/me, /logout, GET /v1/organizations) are allowed to B, which must
# still read nothing of A there.
MATRIX_TEXT = """
#                                                               op   A (target) B (another)
#                                                            an k s  k u r S m  k u r S m
GET    /healthz                                              Y  Y Y  Y Y Y Y Y  Y Y Y Y Y
GET    /readyz                                               Y  Y Y  Y Y Y Y Y  Y Y Y Y Y
GET    /metrics                                              -  - -  - - - - -  - - - - -
GET    /openapi.json                                         Y  Y Y  Y Y Y Y Y  Y Y Y Y Y
GET    /docs                                                 Y  Y Y  Y Y Y Y Y  Y Y Y Y Y
GET    /docs/oauth2-redirect                                 Y  Y Y  Y Y Y Y Y  Y Y Y Y Y
GET    /redoc                                                Y  Y Y  Y Y Y Y Y  Y Y Y Y Y
GET    /static                                               Y  Y Y  Y Y Y Y Y  Y Y Y Y Y
GET    /favicon.ico                                          Y  Y Y  Y Y Y Y Y  Y Y Y Y Y
POST   /v1/organizations                                     -  Y -  - - - - -  - - - - -
GET    /v1/organizations                                     -  Y -  Y Y Y - -  Y Y Y - -
GET    /v1/organizations/{org_id}                            -  Y -  Y - Y - -  - - - - -
PATCH  /v1/organizations/{org_id}                            -  Y -  Y - - - -  - - - - -
POST   /v1/organizations/{org_id}/purchases                  -  Y -  - - - - -  - - - - -
GET    /v1/organizations/{org_id}/purchases                  -  Y -  Y - Y - -  - - - - -
PATCH  /v1/organizations/{org_id}/purchases/{purchase_id}    -  Y -  - - - - -  - - - - -
GET    /v1/organizations/{org_id}/balance                    -  Y -  Y - Y - -  - - - - -
POST   /v1/organizations/{org_id}/api-keys                   -  Y -  Y - - - -  - - - - -
GET    /v1/organizations/{org_id}/api-keys                   -  Y -  Y - - - -  - - - - -
DELETE /v1/organizations/{org_id}/api-keys/{key_id}          -  Y -  Y - - - -  - - - - -
GET    /v1/organizations/{org_id}/users                      -  Y -  Y - Y - -  - - - - -
POST   /v1/organizations/{org_id}/users                      -  Y -  Y - - - -  - - - - -
GET    /v1/organizations/{org_id}/users.csv                  -  Y -  Y - Y - -  - - - - -
POST   /v1/organizations/{org_id}/users/import               -  Y -  Y - - - -  - - - - -
POST   /v1/organizations/{org_id}/allowances                 -  Y -  Y - - - -  - - - - -
GET    /v1/organizations/{org_id}/allowance-batches          -  Y -  Y - Y - -  - - - - -
POST   /v1/organizations/{org_id}/allowance-batches/{batch}/revert -  Y -  Y - - - -  - - - - -
POST   /v1/organizations/{org_id}/distribution/preview       -  Y -  Y - - - -  - - - - -
POST   /v1/organizations/{org_id}/distribution               -  Y -  Y - - - -  - - - - -
GET    /v1/organizations/{org_id}/policy                     -  Y -  Y - - - -  - - - - -
PUT    /v1/organizations/{org_id}/policy                     -  Y -  Y - - - -  - - - - -
GET    /v1/organizations/{org_id}/policy/preview             -  Y -  Y - - - -  - - - - -
POST   /v1/organizations/{org_id}/policy/run                 -  Y -  Y - - - -  - - - - -
GET    /v1/organizations/{org_id}/policy/log                 -  Y -  Y - - - -  - - - - -
POST   /v1/organizations/{org_id}/boosts                     -  Y -  Y - - - -  - - - - -
GET    /v1/organizations/{org_id}/boosts                     -  Y -  Y - - - -  - - - - -
POST   /v1/organizations/{org_id}/boosts/{boost_id}/end      -  Y -  Y - - - -  - - - - -
GET    /v1/organizations/{org_id}/journal                    -  Y -  Y - Y - -  - - - - -
GET    /v1/users/{user_id}                                   -  Y -  Y - Y - -  - - - - -
PATCH  /v1/users/{user_id}                                   -  Y -  Y - - - -  - - - - -
POST   /v1/users/{user_id}/deactivate                        -  Y -  Y - - - -  - - - - -
POST   /v1/users/{user_id}/reactivate                        -  Y -  Y - - - -  - - - - -
GET    /v1/users/{user_id}/balance                           -  Y -  Y Y Y - -  - - - - -
GET    /v1/users/{user_id}/usage                             -  Y -  Y - Y - -  - - - - -
GET    /v1/users/{user_id}/forecast                          -  Y -  Y - Y - -  - - - - -
GET    /v1/organizations/{org_id}/forecast                   -  Y -  Y - Y - -  - - - - -
GET    /v1/organizations/{org_id}/usage-report               -  Y -  Y - Y - -  - - - - -
POST   /v1/usage                                             -  Y -  - Y - - -  - - - - -
POST   /v1/usage/batch                                       -  Y -  - Y - - -  - - - - -
POST   /v1/reservations                                      -  Y -  - Y - - -  - - - - -
POST   /v1/ingest                                            -  Y -  - Y - - -  - - - - -
POST   /v1/reservations/{reservation_id}/commit              -  Y -  - Y - - -  - - - - -
POST   /v1/reservations/{reservation_id}/release             -  Y -  - Y - - -  - - - - -
POST   /v1/token-requests                                    -  Y -  Y Y - - -  - - - - -
GET    /v1/token-requests/{request_id}                       -  Y -  Y Y Y - -  - - - - -
POST   /v1/token-requests/{request_id}/approve               -  Y -  Y - - - -  - - - - -
POST   /v1/token-requests/{request_id}/deny                  -  Y -  Y - - - -  - - - - -
POST   /v1/token-requests/{request_id}/withdraw              -  Y -  Y Y - - -  - - - - -
GET    /v1/organizations/{org_id}/token-requests             -  Y -  Y Y Y - -  - - - - -
GET    /v1/users/{user_id}/token-requests                    -  Y -  Y Y Y - -  - - - - -
GET    /v1/organizations/{org_id}/events                     -  Y -  Y - Y - -  - - - - -
GET    /v1/users/{user_id}/events                            -  Y -  Y Y Y - -  - - - - -
GET    /v1/models                                            -  Y -  - - - - -  - - - - -
PUT    /v1/models/{name:path}                                -  Y -  - - - - -  - - - - -
DELETE /v1/models/{name:path}                                -  Y -  - - - - -  - - - - -
GET    /v1/jobs                                              -  Y -  - - - - -  - - - - -
GET    /v1/organizations/{org_id}/models                     -  Y -  Y Y Y - -  - - - - -
PUT    /v1/organizations/{org_id}/models/{name:path}         -  Y -  Y - - - -  - - - - -
DELETE /v1/organizations/{org_id}/models/{name:path}         -  Y -  Y - - - -  - - - - -
PUT    /v1/organizations/{org_id}/model-access               -  Y -  Y - - - -  - - - - -
PUT    /v1/organizations/{org_id}/upstream                   -  Y -  Y - - - -  - - - - -
POST   /v1/users/{user_id}/api-keys                          -  Y -  Y - - - -  - - - - -
GET    /v1/users/{user_id}/api-keys                          -  Y -  Y - - - -  - - - - -
DELETE /v1/users/{user_id}/api-keys/{key_id}                 -  Y -  Y - - - -  - - - - -
POST   /v1/organizations/{org_id}/webhooks                   -  Y -  Y - - - -  - - - - -
GET    /v1/organizations/{org_id}/webhooks                   -  Y -  Y - - - -  - - - - -
GET    /v1/organizations/{org_id}/webhooks/{webhook_id}      -  Y -  Y - - - -  - - - - -
PATCH  /v1/organizations/{org_id}/webhooks/{webhook_id}      -  Y -  Y - - - -  - - - - -
DELETE /v1/organizations/{org_id}/webhooks/{webhook_id}      -  Y -  Y - - - -  - - - - -
POST   /v1/organizations/{org_id}/webhooks/{webhook_id}/rotate-secret -  Y -  Y - - - -  - - - - -
GET    /v1/organizations/{org_id}/webhooks/{webhook_id}/deliveries -  Y -  Y - - - -  - - - - -
POST   /v1/webhook-deliveries/{delivery_id}/resend           -  Y -  Y - - - -  - - - - -
GET    /                                                     Y  Y Y  Y Y Y Y Y  Y Y Y Y Y
GET    /login                                                Y  Y Y  Y Y Y Y Y  Y Y Y Y Y
POST   /login                                                Y  Y Y  Y Y Y Y Y  Y Y Y Y Y
POST   /logout                                               -  - Y  - - - Y Y  - - - Y Y
GET    /me                                                   -  - Y  - - - Y Y  - - - Y Y
GET    /me/usage-per-{bucket}.csv                            -  - -  - - - Y Y  - - - Y Y
POST   /me/requests                                          -  - -  - - - Y Y  - - - Y Y
POST   /me/requests/{request_id}/withdraw                    -  - -  - - - - Y  - - - - -
GET    /operator                                             -  - Y  - - - - -  - - - - -
GET    /operator/jobs                                        -  - Y  - - - - -  - - - - -
POST   /operator/orgs                                        -  - Y  - - - - -  - - - - -
POST   /operator/purchases                                   -  - Y  - - - - -  - - - - -
GET    /orgs/{org_id}                                        -  - Y  - - - Y -  - - - - -
POST   /orgs/{org_id}/allowances                             -  - Y  - - - Y -  - - - - -
POST   /orgs/{org_id}/users                                  -  - Y  - - - Y -  - - - - -
POST   /orgs/{org_id}/users/actions                          -  - Y  - - - Y -  - - - - -
POST   /orgs/{org_id}/token-requests/{request_id}/approve    -  - Y  - - - Y -  - - - - -
POST   /orgs/{org_id}/token-requests/{request_id}/deny       -  - Y  - - - Y -  - - - - -
GET    /orgs/{org_id}/users/{user_id}                        -  - Y  - - - Y -  - - - - -
POST   /orgs/{org_id}/users/{user_id}/allowances             -  - Y  - - - Y -  - - - - -
GET    /orgs/{org_id}/users/{user_id}/usage-per-{bucket}.csv -  - Y  - - - Y -  - - - - -
GET    /orgs/{org_id}/distribute                             -  - Y  - - - Y -  - - - - -
POST   /orgs/{org_id}/distribute                             -  - Y  - - - Y -  - - - - -
GET    /orgs/{org_id}/policy                                 -  - Y  - - - Y -  - - - - -
POST   /orgs/{org_id}/policy                                 -  - Y  - - - Y -  - - - - -
POST   /orgs/{org_id}/policy/run                             -  - Y  - - - Y -  - - - - -
POST   /orgs/{org_id}/boosts                                 -  - Y  - - - Y -  - - - - -
POST   /orgs/{org_id}/boosts/{boost_id}/end                  -  - Y  - - - Y -  - - - - -
GET    /orgs/{org_id}/import                                 -  - Y  - - - Y -  - - - - -
POST   /orgs/{org_id}/import                                 -  - Y  - - - Y -  - - - - -
GET    /orgs/{org_id}/export.csv                             -  - Y  - - - Y -  - - - - -
GET    /orgs/{org_id}/journal                                -  - Y  - - - Y -  - - - - -
GET    /orgs/{org_id}/journal.csv                            -  - Y  - - - Y -  - - - - -
GET    /orgs/{org_id}/notifications                          -  - Y  - - - Y -  - - - - -
GET    /orgs/{org_id}/batches/{batch}/revert                 -  - Y  - - - Y -  - - - - -
POST   /orgs/{org_id}/batches/{batch}/revert                 -  - Y  - - - Y -  - - - - -
GET    /orgs/{org_id}/settings                               -  - Y  - - - Y -  - - - - -
POST   /orgs/{org_id}/settings/policy                        -  - Y  - - - Y -  - - - - -
POST   /orgs/{org_id}/settings/keys                          -  - Y  - - - Y -  - - - - -
POST   /orgs/{org_id}/settings/keys/{key_id}/revoke          -  - Y  - - - Y -  - - - - -
POST   /me/api-keys                                          -  - -  - - - Y Y  - - - Y Y
POST   /me/api-keys/{key_id}/revoke                          -  - -  - - - - Y  - - - - -
GET    /orgs/{org_id}/models                                 -  - Y  - - - Y -  - - - - -
POST   /orgs/{org_id}/models/rates                           -  - Y  - - - Y -  - - - - -
POST   /orgs/{org_id}/models/reset                           -  - Y  - - - Y -  - - - - -
POST   /orgs/{org_id}/models/access                          -  - Y  - - - Y -  - - - - -
POST   /orgs/{org_id}/models/upstream                        -  - Y  - - - Y -  - - - - -
GET    /orgs/{org_id}/webhooks                               -  - Y  - - - Y -  - - - - -
POST   /orgs/{org_id}/webhooks                               -  - Y  - - - Y -  - - - - -
GET    /orgs/{org_id}/webhooks/{webhook_id}                  -  - Y  - - - Y -  - - - - -
POST   /orgs/{org_id}/webhooks/{webhook_id}/enabled          -  - Y  - - - Y -  - - - - -
POST   /orgs/{org_id}/webhooks/{webhook_id}/rotate-secret    -  - Y  - - - Y -  - - - - -
POST   /orgs/{org_id}/webhooks/{webhook_id}/remove           -  - Y  - - - Y -  - - - - -
POST   /orgs/{org_id}/webhook-deliveries/{delivery_id}/resend -  - Y  - - - Y -  - - - - -
"""

Route = tuple[str, str]


def _parse(text: str) -> dict[Route, dict[str, bool]]:
    """MATRIX_TEXT as {(method, path): {role: allowed}}."""
    matrix: dict[Route, dict[str, bool]] = {}
    for line in text.strip().splitlines():
        if line.startswith("#"):
            continue
        method, path, *cells = line.split()
        assert len(cells) == len(ROLES), line
        assert set(cells) <= {"Y", "-"}, line
        assert (method, path) not in matrix, f"{method} {path} appears twice"
        matrix[(method, path)] = {
            role: cell == "Y" for role, cell in zip(ROLES, cells, strict=True)
        }
    return matrix


MATRIX = _parse(MATRIX_TEXT)


# --- the callers and what they call ---------------------------------------------------------


@dataclass(frozen=True)
class Caller:
    """How a role calls: an API key, a dashboard session (with its CSRF token), or nothing."""

    org: str | None = None  # "a", "b", or None for the platform and the anonymous
    key: str | None = None
    session: str | None = None
    csrf: str | None = None


@dataclass(frozen=True)
class Req:
    method: str
    path: str
    json: Any = None
    form: dict[str, str | list[str]] | None = None
    page: bool = False
    """A dashboard page or form, asked for as a browser does (Accept: text/html)."""
    sign_in_form: bool = False
    """POST /login: fetch the sign-in form first and send its token back."""

    @property
    def is_api(self) -> bool:
        return self.path.startswith("/v1/")

    @property
    def is_dashboard(self) -> bool:
        return self.page or self.path.startswith(("/orgs/", "/me", "/operator", "/log"))


@dataclass
class World:
    a_org: str
    a_purchase: str
    alice: str
    alice_email: str
    to_patch: str
    to_deactivate: str
    to_reactivate: str
    to_act_on: str
    api_key_to_revoke: str
    page_key_to_revoke: str
    to_commit: str
    to_release: str
    to_approve: str
    to_deny: str
    to_withdraw: str
    personal_key_to_revoke: str
    my_key_to_revoke: str
    webhook: str
    webhook_to_remove: str
    delivery_to_resend: str
    batch_to_revert: str
    boost_to_end: str
    b_org: str
    b_user: str
    operator_email: str
    callers: dict[str, Caller] = field(default_factory=dict)
    a_markers: set[str] = field(default_factory=set)
    """repr() of A's ids: a stored row holding one of them belongs to organization A."""
    secrets: tuple[str, ...] = ()
    """What a caller of B must never read in an answer (unless it sent it)."""


OPERATOR_PASSWORD = "operator password 1"
MODEL = "matrix-model"
BOOST_ENDS = "2026-06-01T00:00:00Z"
"""A model of the platform's catalog, with organization A's own rates of it."""


def _unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}@a.example"


REQUESTS: dict[Route, Callable[[World], Req]] = {
    ("GET", "/healthz"): lambda w: Req("GET", "/healthz"),
    ("GET", "/readyz"): lambda w: Req("GET", "/readyz"),
    # Only for its own token (TOKENADMIN_METRICS_TOKEN, tests/test_metrics.py): no API key or
    # session opens it.
    ("GET", "/metrics"): lambda w: Req("GET", "/metrics"),
    ("GET", "/openapi.json"): lambda w: Req("GET", "/openapi.json"),
    ("GET", "/docs"): lambda w: Req("GET", "/docs"),
    ("GET", "/docs/oauth2-redirect"): lambda w: Req("GET", "/docs/oauth2-redirect"),
    ("GET", "/redoc"): lambda w: Req("GET", "/redoc"),
    ("GET", "/static"): lambda w: Req("GET", "/static/app.css"),
    ("GET", "/favicon.ico"): lambda w: Req("GET", "/favicon.ico"),
    # --- the REST API
    ("POST", "/v1/organizations"): lambda w: Req("POST", "/v1/organizations", {"name": "New"}),
    ("GET", "/v1/organizations"): lambda w: Req("GET", "/v1/organizations"),
    ("GET", "/v1/organizations/{org_id}"): lambda w: Req("GET", f"/v1/organizations/{w.a_org}"),
    ("PATCH", "/v1/organizations/{org_id}"): lambda w: Req(
        "PATCH", f"/v1/organizations/{w.a_org}", {"name": "Renamed", "min_inference": 100_000}
    ),
    ("POST", "/v1/organizations/{org_id}/purchases"): lambda w: Req(
        "POST", f"/v1/organizations/{w.a_org}/purchases", {"inference_amount": 10**9}
    ),
    ("GET", "/v1/organizations/{org_id}/purchases"): lambda w: Req(
        "GET", f"/v1/organizations/{w.a_org}/purchases"
    ),
    ("PATCH", "/v1/organizations/{org_id}/purchases/{purchase_id}"): lambda w: Req(
        "PATCH",
        f"/v1/organizations/{w.a_org}/purchases/{w.a_purchase}",
        {"expires_at": "2030-01-01T00:00:00Z"},
    ),
    ("GET", "/v1/organizations/{org_id}/balance"): lambda w: Req(
        "GET", f"/v1/organizations/{w.a_org}/balance"
    ),
    ("POST", "/v1/organizations/{org_id}/api-keys"): lambda w: Req(
        "POST", f"/v1/organizations/{w.a_org}/api-keys", {"name": "mine", "scopes": ["admin"]}
    ),
    ("GET", "/v1/organizations/{org_id}/api-keys"): lambda w: Req(
        "GET", f"/v1/organizations/{w.a_org}/api-keys"
    ),
    ("DELETE", "/v1/organizations/{org_id}/api-keys/{key_id}"): lambda w: Req(
        "DELETE", f"/v1/organizations/{w.a_org}/api-keys/{w.api_key_to_revoke}"
    ),
    ("GET", "/v1/organizations/{org_id}/users"): lambda w: Req(
        "GET", f"/v1/organizations/{w.a_org}/users"
    ),
    ("POST", "/v1/organizations/{org_id}/users"): lambda w: Req(
        "POST",
        f"/v1/organizations/{w.a_org}/users",
        {"email": _unique("api"), "name": "Planted", "role": "admin"},
    ),
    ("GET", "/v1/organizations/{org_id}/users.csv"): lambda w: Req(
        "GET", f"/v1/organizations/{w.a_org}/users.csv"
    ),
    ("POST", "/v1/organizations/{org_id}/users/import"): lambda w: Req(
        "POST",
        f"/v1/organizations/{w.a_org}/users/import",
        {"csv": f"email,name,max_tokens\n{w.alice_email},,260000\n{_unique('csv')},Planted,\n"},
    ),
    ("POST", "/v1/organizations/{org_id}/allowances"): lambda w: Req(
        "POST",
        f"/v1/organizations/{w.a_org}/allowances",
        {"changes": [{"user": w.alice_email, "max_tokens": 250_000}]},
    ),
    ("GET", "/v1/organizations/{org_id}/allowance-batches"): lambda w: Req(
        "GET", f"/v1/organizations/{w.a_org}/allowance-batches"
    ),
    ("POST", "/v1/organizations/{org_id}/allowance-batches/{batch}/revert"): lambda w: Req(
        "POST", f"/v1/organizations/{w.a_org}/allowance-batches/{w.batch_to_revert}/revert", {}
    ),
    ("POST", "/v1/organizations/{org_id}/distribution/preview"): lambda w: Req(
        "POST",
        f"/v1/organizations/{w.a_org}/distribution/preview",
        {"inference": {"method": "equal"}, "training": {"method": "percent", "percent": 10}},
    ),
    ("GET", "/v1/organizations/{org_id}/policy"): lambda w: Req(
        "GET", f"/v1/organizations/{w.a_org}/policy"
    ),
    ("PUT", "/v1/organizations/{org_id}/policy"): lambda w: Req(
        "PUT", f"/v1/organizations/{w.a_org}/policy", {"inference": {"preset": "standard"}}
    ),
    ("GET", "/v1/organizations/{org_id}/policy/preview"): lambda w: Req(
        "GET", f"/v1/organizations/{w.a_org}/policy/preview"
    ),
    ("POST", "/v1/organizations/{org_id}/policy/run"): lambda w: Req(
        "POST", f"/v1/organizations/{w.a_org}/policy/run", {}
    ),
    ("GET", "/v1/organizations/{org_id}/policy/log"): lambda w: Req(
        "GET", f"/v1/organizations/{w.a_org}/policy/log"
    ),
    ("POST", "/v1/organizations/{org_id}/boosts"): lambda w: Req(
        "POST",
        f"/v1/organizations/{w.a_org}/boosts",
        {"user": w.alice, "kind": "inference", "amount": 1_000, "ends_at": BOOST_ENDS},
    ),
    ("GET", "/v1/organizations/{org_id}/boosts"): lambda w: Req(
        "GET", f"/v1/organizations/{w.a_org}/boosts"
    ),
    ("POST", "/v1/organizations/{org_id}/boosts/{boost_id}/end"): lambda w: Req(
        "POST", f"/v1/organizations/{w.a_org}/boosts/{w.boost_to_end}/end"
    ),
    ("POST", "/v1/organizations/{org_id}/distribution"): lambda w: Req(
        "POST",
        f"/v1/organizations/{w.a_org}/distribution",
        {"inference": {"method": "fixed", "amount": 1_000}, "users": [w.alice_email]},
    ),
    ("GET", "/v1/organizations/{org_id}/journal"): lambda w: Req(
        "GET", f"/v1/organizations/{w.a_org}/journal"
    ),
    ("GET", "/v1/users/{user_id}"): lambda w: Req("GET", f"/v1/users/{w.alice}"),
    ("PATCH", "/v1/users/{user_id}"): lambda w: Req(
        "PATCH", f"/v1/users/{w.to_patch}", {"max_tokens": 300_000, "role": "admin"}
    ),
    ("POST", "/v1/users/{user_id}/deactivate"): lambda w: Req(
        "POST", f"/v1/users/{w.to_deactivate}/deactivate"
    ),
    ("POST", "/v1/users/{user_id}/reactivate"): lambda w: Req(
        "POST", f"/v1/users/{w.to_reactivate}/reactivate"
    ),
    ("GET", "/v1/users/{user_id}/balance"): lambda w: Req("GET", f"/v1/users/{w.alice}/balance"),
    ("GET", "/v1/users/{user_id}/usage"): lambda w: Req("GET", f"/v1/users/{w.alice}/usage"),
    ("GET", "/v1/users/{user_id}/forecast"): lambda w: Req("GET", f"/v1/users/{w.alice}/forecast"),
    ("GET", "/v1/organizations/{org_id}/forecast"): lambda w: Req(
        "GET", f"/v1/organizations/{w.a_org}/forecast?users=10"
    ),
    ("GET", "/v1/organizations/{org_id}/usage-report"): lambda w: Req(
        "GET", f"/v1/organizations/{w.a_org}/usage-report?group_by=model&user={w.alice_email}"
    ),
    ("POST", "/v1/usage"): lambda w: Req(
        "POST", "/v1/usage", {"user": w.alice_email, "kind": "inference", "tokens": 10}
    ),
    ("POST", "/v1/usage/batch"): lambda w: Req(
        "POST",
        "/v1/usage/batch",
        {
            "events": [
                {"user": w.alice, "kind": "inference", "tokens": 10, "idempotency_key": "e1"},
                {"user": w.alice_email, "kind": "training", "tokens": 5, "idempotency_key": "e2"},
            ]
        },
    ),
    ("POST", "/v1/ingest"): lambda w: Req(
        "POST", "/v1/ingest", {"user": w.alice_email, "tokens": 5, "dataset": "docs"}
    ),
    ("POST", "/v1/reservations"): lambda w: Req(
        "POST", "/v1/reservations", {"user": w.alice, "kind": "inference", "tokens": 10}
    ),
    ("POST", "/v1/reservations/{reservation_id}/commit"): lambda w: Req(
        "POST", f"/v1/reservations/{w.to_commit}/commit", {"tokens": 1}
    ),
    ("POST", "/v1/reservations/{reservation_id}/release"): lambda w: Req(
        "POST", f"/v1/reservations/{w.to_release}/release"
    ),
    ("POST", "/v1/token-requests"): lambda w: Req(
        "POST",
        "/v1/token-requests",
        {"user": w.to_patch, "kind": "inference", "amount": 10, "reason": "a run"},
    ),
    ("GET", "/v1/token-requests/{request_id}"): lambda w: Req(
        "GET", f"/v1/token-requests/{w.to_approve}"
    ),
    ("POST", "/v1/token-requests/{request_id}/approve"): lambda w: Req(
        "POST", f"/v1/token-requests/{w.to_approve}/approve", {"amount": 500}
    ),
    ("POST", "/v1/token-requests/{request_id}/deny"): lambda w: Req(
        "POST", f"/v1/token-requests/{w.to_deny}/deny", {"note": "not now"}
    ),
    ("POST", "/v1/token-requests/{request_id}/withdraw"): lambda w: Req(
        "POST", f"/v1/token-requests/{w.to_withdraw}/withdraw"
    ),
    ("GET", "/v1/organizations/{org_id}/token-requests"): lambda w: Req(
        "GET", f"/v1/organizations/{w.a_org}/token-requests"
    ),
    ("GET", "/v1/users/{user_id}/token-requests"): lambda w: Req(
        "GET", f"/v1/users/{w.alice}/token-requests"
    ),
    ("GET", "/v1/organizations/{org_id}/events"): lambda w: Req(
        "GET", f"/v1/organizations/{w.a_org}/events"
    ),
    ("GET", "/v1/users/{user_id}/events"): lambda w: Req("GET", f"/v1/users/{w.alice}/events"),
    ("GET", "/v1/models"): lambda w: Req("GET", "/v1/models"),
    ("PUT", "/v1/models/{name:path}"): lambda w: Req(
        "PUT", "/v1/models/made-here", {"prompt_rate": "0.5", "completion_rate": 2}
    ),
    ("DELETE", "/v1/models/{name:path}"): lambda w: Req("DELETE", f"/v1/models/{MODEL}"),
    ("GET", "/v1/jobs"): lambda w: Req("GET", "/v1/jobs"),
    ("GET", "/v1/organizations/{org_id}/models"): lambda w: Req(
        "GET", f"/v1/organizations/{w.a_org}/models"
    ),
    ("PUT", "/v1/organizations/{org_id}/models/{name:path}"): lambda w: Req(
        "PUT",
        f"/v1/organizations/{w.a_org}/models/{MODEL}",
        {"prompt_rate": "0.25", "completion_rate": "1", "upstream_api_key": "sk-planted"},
    ),
    ("DELETE", "/v1/organizations/{org_id}/models/{name:path}"): lambda w: Req(
        "DELETE", f"/v1/organizations/{w.a_org}/models/{MODEL}"
    ),
    ("PUT", "/v1/organizations/{org_id}/model-access"): lambda w: Req(
        "PUT", f"/v1/organizations/{w.a_org}/model-access", {"allowed": [MODEL]}
    ),
    ("PUT", "/v1/organizations/{org_id}/upstream"): lambda w: Req(
        "PUT",
        f"/v1/organizations/{w.a_org}/upstream",
        {"base_url": "https://planted.example/v1", "api_key": "sk-planted"},
    ),
    ("POST", "/v1/users/{user_id}/api-keys"): lambda w: Req(
        "POST", f"/v1/users/{w.alice}/api-keys", {"name": "planted"}
    ),
    ("GET", "/v1/users/{user_id}/api-keys"): lambda w: Req("GET", f"/v1/users/{w.alice}/api-keys"),
    ("DELETE", "/v1/users/{user_id}/api-keys/{key_id}"): lambda w: Req(
        "DELETE", f"/v1/users/{w.alice}/api-keys/{w.personal_key_to_revoke}"
    ),
    # --- the dashboard
    ("GET", "/"): lambda w: Req("GET", "/", page=True),
    ("GET", "/login"): lambda w: Req("GET", "/login", page=True),
    ("POST", "/login"): lambda w: Req(
        "POST",
        "/login",
        form={"email": w.operator_email, "password": OPERATOR_PASSWORD},
        page=True,
        sign_in_form=True,
    ),
    ("POST", "/logout"): lambda w: Req("POST", "/logout", form={}, page=True),
    ("GET", "/me"): lambda w: Req("GET", "/me", page=True),
    ("GET", "/me/usage-per-{bucket}.csv"): lambda w: Req("GET", "/me/usage-per-day.csv"),
    ("POST", "/me/requests"): lambda w: Req(
        "POST",
        "/me/requests",
        form={"kind": "inference", "amount": "50K", "reason": "a run"},
        page=True,
    ),
    ("POST", "/me/requests/{request_id}/withdraw"): lambda w: Req(
        "POST", f"/me/requests/{w.to_withdraw}/withdraw", form={}, page=True
    ),
    ("GET", "/operator"): lambda w: Req("GET", "/operator", page=True),
    ("GET", "/operator/jobs"): lambda w: Req("GET", "/operator/jobs", page=True),
    ("POST", "/operator/orgs"): lambda w: Req(
        "POST", "/operator/orgs", form={"name": "Made on the page"}, page=True
    ),
    ("POST", "/operator/purchases"): lambda w: Req(
        "POST",
        "/operator/purchases",
        form={"org_id": w.a_org, "inference_amount": "1M"},
        page=True,
    ),
    ("GET", "/orgs/{org_id}"): lambda w: Req("GET", f"/orgs/{w.a_org}", page=True),
    ("POST", "/orgs/{org_id}/allowances"): lambda w: Req(
        "POST",
        f"/orgs/{w.a_org}/allowances",
        {"changes": [{"user": w.alice, "max_train_tokens": 1_000}]},
    ),
    ("POST", "/orgs/{org_id}/users"): lambda w: Req(
        "POST",
        f"/orgs/{w.a_org}/users",
        form={"name": "Planted", "email": _unique("page"), "role": "admin"},
        page=True,
    ),
    ("POST", "/orgs/{org_id}/users/actions"): lambda w: Req(
        "POST",
        f"/orgs/{w.a_org}/users/actions",
        form={"action": "deactivate", "user": [w.to_act_on]},
        page=True,
    ),
    ("GET", "/orgs/{org_id}/policy"): lambda w: Req("GET", f"/orgs/{w.a_org}/policy", page=True),
    ("POST", "/orgs/{org_id}/policy"): lambda w: Req(
        "POST",
        f"/orgs/{w.a_org}/policy",
        form={"action": "preview", "inference_preset": "standard", "training_preset": "standard"},
        page=True,
    ),
    ("POST", "/orgs/{org_id}/policy/run"): lambda w: Req(
        "POST", f"/orgs/{w.a_org}/policy/run", form={}, page=True
    ),
    ("POST", "/orgs/{org_id}/boosts"): lambda w: Req(
        "POST",
        f"/orgs/{w.a_org}/boosts",
        form={"user": w.alice_email, "kind": "inference", "amount": "1K", "ends_at": "2026-05-01"},
        page=True,
    ),
    ("POST", "/orgs/{org_id}/boosts/{boost_id}/end"): lambda w: Req(
        "POST", f"/orgs/{w.a_org}/boosts/{w.boost_to_end}/end", form={}, page=True
    ),
    ("POST", "/orgs/{org_id}/token-requests/{request_id}/approve"): lambda w: Req(
        "POST",
        f"/orgs/{w.a_org}/token-requests/{w.to_approve}/approve",
        form={"amount": "500"},
        page=True,
    ),
    ("POST", "/orgs/{org_id}/token-requests/{request_id}/deny"): lambda w: Req(
        "POST",
        f"/orgs/{w.a_org}/token-requests/{w.to_deny}/deny",
        form={"note": "not now"},
        page=True,
    ),
    ("GET", "/orgs/{org_id}/users/{user_id}"): lambda w: Req(
        "GET", f"/orgs/{w.a_org}/users/{w.alice}", page=True
    ),
    ("POST", "/orgs/{org_id}/users/{user_id}/allowances"): lambda w: Req(
        "POST",
        f"/orgs/{w.a_org}/users/{w.alice}/allowances",
        form={
            "max_tokens": "250000",
            "max_tokens_was": "250000",
            "max_train_tokens": "120000",
            "max_train_tokens_was": "100000",
        },
        page=True,
    ),
    ("GET", "/orgs/{org_id}/users/{user_id}/usage-per-{bucket}.csv"): lambda w: Req(
        "GET", f"/orgs/{w.a_org}/users/{w.alice}/usage-per-month.csv"
    ),
    ("GET", "/orgs/{org_id}/distribute"): lambda w: Req(
        "GET", f"/orgs/{w.a_org}/distribute", page=True
    ),
    ("POST", "/orgs/{org_id}/distribute"): lambda w: Req(
        "POST",
        f"/orgs/{w.a_org}/distribute",
        form={"action": "preview", "method": "fixed", "amount": "1000"},
        page=True,
    ),
    ("GET", "/orgs/{org_id}/import"): lambda w: Req("GET", f"/orgs/{w.a_org}/import", page=True),
    ("POST", "/orgs/{org_id}/import"): lambda w: Req(
        "POST",
        f"/orgs/{w.a_org}/import",
        form={"action": "apply", "csv_text": f"email,max_tokens\n{w.alice_email},260000\n"},
        page=True,
    ),
    ("GET", "/orgs/{org_id}/export.csv"): lambda w: Req("GET", f"/orgs/{w.a_org}/export.csv"),
    ("GET", "/orgs/{org_id}/journal"): lambda w: Req("GET", f"/orgs/{w.a_org}/journal", page=True),
    ("GET", "/orgs/{org_id}/journal.csv"): lambda w: Req("GET", f"/orgs/{w.a_org}/journal.csv"),
    ("GET", "/orgs/{org_id}/notifications"): lambda w: Req(
        "GET", f"/orgs/{w.a_org}/notifications", page=True
    ),
    ("GET", "/orgs/{org_id}/batches/{batch}/revert"): lambda w: Req(
        "GET", f"/orgs/{w.a_org}/batches/{w.batch_to_revert}/revert", page=True
    ),
    ("POST", "/orgs/{org_id}/batches/{batch}/revert"): lambda w: Req(
        "POST", f"/orgs/{w.a_org}/batches/{w.batch_to_revert}/revert", form={}, page=True
    ),
    ("GET", "/orgs/{org_id}/settings"): lambda w: Req(
        "GET", f"/orgs/{w.a_org}/settings", page=True
    ),
    ("POST", "/orgs/{org_id}/settings/policy"): lambda w: Req(
        "POST",
        f"/orgs/{w.a_org}/settings/policy",
        form={
            "name": "Renamed on the page",
            "time_zone": "Europe/Paris",
            "period": "monthly",
            "min_inference": "100000",
            "min_training": "0",
            "overallocation": "true",
        },
        page=True,
    ),
    ("POST", "/orgs/{org_id}/settings/keys"): lambda w: Req(
        "POST",
        f"/orgs/{w.a_org}/settings/keys",
        form={"name": "mine", "scopes": ["admin", "usage"]},
        page=True,
    ),
    ("POST", "/orgs/{org_id}/settings/keys/{key_id}/revoke"): lambda w: Req(
        "POST", f"/orgs/{w.a_org}/settings/keys/{w.page_key_to_revoke}/revoke", form={}, page=True
    ),
    ("POST", "/me/api-keys"): lambda w: Req(
        "POST", "/me/api-keys", form={"name": "mine"}, page=True
    ),
    ("POST", "/me/api-keys/{key_id}/revoke"): lambda w: Req(
        "POST", f"/me/api-keys/{w.my_key_to_revoke}/revoke", form={}, page=True
    ),
    # --- webhooks
    ("POST", "/v1/organizations/{org_id}/webhooks"): lambda w: Req(
        "POST", f"/v1/organizations/{w.a_org}/webhooks", {"url": "https://hooks.a.example/new"}
    ),
    ("GET", "/v1/organizations/{org_id}/webhooks"): lambda w: Req(
        "GET", f"/v1/organizations/{w.a_org}/webhooks"
    ),
    ("GET", "/v1/organizations/{org_id}/webhooks/{webhook_id}"): lambda w: Req(
        "GET", f"/v1/organizations/{w.a_org}/webhooks/{w.webhook}"
    ),
    ("PATCH", "/v1/organizations/{org_id}/webhooks/{webhook_id}"): lambda w: Req(
        "PATCH", f"/v1/organizations/{w.a_org}/webhooks/{w.webhook}", {"enabled": False}
    ),
    ("DELETE", "/v1/organizations/{org_id}/webhooks/{webhook_id}"): lambda w: Req(
        "DELETE", f"/v1/organizations/{w.a_org}/webhooks/{w.webhook_to_remove}"
    ),
    ("POST", "/v1/organizations/{org_id}/webhooks/{webhook_id}/rotate-secret"): lambda w: Req(
        "POST", f"/v1/organizations/{w.a_org}/webhooks/{w.webhook}/rotate-secret"
    ),
    ("GET", "/v1/organizations/{org_id}/webhooks/{webhook_id}/deliveries"): lambda w: Req(
        "GET", f"/v1/organizations/{w.a_org}/webhooks/{w.webhook}/deliveries"
    ),
    ("POST", "/v1/webhook-deliveries/{delivery_id}/resend"): lambda w: Req(
        "POST", f"/v1/webhook-deliveries/{w.delivery_to_resend}/resend"
    ),
    ("GET", "/orgs/{org_id}/webhooks"): lambda w: Req(
        "GET", f"/orgs/{w.a_org}/webhooks", page=True
    ),
    ("POST", "/orgs/{org_id}/webhooks"): lambda w: Req(
        "POST", f"/orgs/{w.a_org}/webhooks", form={"url": "https://hooks.a.example/p"}, page=True
    ),
    ("GET", "/orgs/{org_id}/webhooks/{webhook_id}"): lambda w: Req(
        "GET", f"/orgs/{w.a_org}/webhooks/{w.webhook}", page=True
    ),
    ("POST", "/orgs/{org_id}/webhooks/{webhook_id}/enabled"): lambda w: Req(
        "POST", f"/orgs/{w.a_org}/webhooks/{w.webhook}/enabled", form={"enabled": "false"}
    ),
    ("POST", "/orgs/{org_id}/webhooks/{webhook_id}/rotate-secret"): lambda w: Req(
        "POST", f"/orgs/{w.a_org}/webhooks/{w.webhook}/rotate-secret", form={}, page=True
    ),
    ("POST", "/orgs/{org_id}/webhooks/{webhook_id}/remove"): lambda w: Req(
        "POST", f"/orgs/{w.a_org}/webhooks/{w.webhook_to_remove}/remove", form={}
    ),
    ("POST", "/orgs/{org_id}/webhook-deliveries/{delivery_id}/resend"): lambda w: Req(
        "POST", f"/orgs/{w.a_org}/webhook-deliveries/{w.delivery_to_resend}/resend", form={}
    ),
    ("GET", "/orgs/{org_id}/models"): lambda w: Req("GET", f"/orgs/{w.a_org}/models", page=True),
    ("POST", "/orgs/{org_id}/models/rates"): lambda w: Req(
        "POST",
        f"/orgs/{w.a_org}/models/rates",
        form={"name": MODEL, "prompt_rate": "2", "completion_rate": "3"},
        page=True,
    ),
    ("POST", "/orgs/{org_id}/models/reset"): lambda w: Req(
        "POST", f"/orgs/{w.a_org}/models/reset", form={"name": MODEL}, page=True
    ),
    ("POST", "/orgs/{org_id}/models/access"): lambda w: Req(
        "POST",
        f"/orgs/{w.a_org}/models/access",
        form={"mode": "selected", "allowed": [MODEL]},
        page=True,
    ),
    ("POST", "/orgs/{org_id}/models/upstream"): lambda w: Req(
        "POST",
        f"/orgs/{w.a_org}/models/upstream",
        form={"base_url": "https://planted.example/v1", "api_key": "sk-planted"},
        page=True,
    ),
}


# --- the app's routes, and the database ----------------------------------------------------


def served_routes(app: FastAPI) -> set[Route]:
    """Every (method, path) the app serves, included routers and mounts too. HEAD, which
    Starlette adds beside every GET of its own routes, is the GET."""
    found: set[Route] = set()
    for context in iter_route_contexts(app.routes):
        assert context.path is not None
        if isinstance(context.original_route, Mount):
            found.add(("GET", context.path))
            continue
        for method in context.methods or ():
            if method != "HEAD":
                found.add((method, context.path))
    return found


Snapshot = dict[str, list[tuple[str, ...]]]


async def snapshot(db: Database) -> Snapshot:
    """Every row of every table."""

    async def read(session: AsyncSession) -> Snapshot:
        tables = {}
        for table in Base.metadata.sorted_tables:
            rows = (await session.execute(select(table))).all()
            tables[table.name] = sorted(tuple(map(repr, row)) for row in rows)
        return tables

    return await db.read(read)


def rows_of(tables: Snapshot, markers: set[str]) -> Snapshot:
    return {
        name: [row for row in rows if markers.intersection(row)] for name, rows in tables.items()
    }


async def session_of(
    db: Database, clock: FakeClock, *, user_id: str | None = None, operator_id: Any = None
) -> Caller:
    """A signed-in dashboard session, stored as /login stores one (without the password
    hashing, which tests/test_dashboard_auth.py and test_sign_in_security.py cover)."""
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)

    async def store(session: AsyncSession) -> None:
        session.add(
            DashboardSession(
                token_hash=hashlib.sha256(token.encode()).hexdigest(),
                user_id=uuid.UUID(user_id) if user_id else None,
                operator_id=operator_id,
                csrf_token=csrf,
                created_at=clock.now(),
                expires_at=clock.now() + timedelta(hours=12),
                ip="127.0.0.1",
            )
        )

    await db.write(store)
    return Caller(session=token, csrf=csrf)


async def build_world(api: Api, db: Database, clock: FakeClock) -> World:
    a_org = await funded_org(api, 10_000_000, 1_000_000)
    alice = await api.user(
        a_org, "alice@a.example", name="Alice Aardvark", max_train_tokens=100_000
    )
    a_admin = await api.user(a_org, "ada@a.example", role="admin")
    a_member = await api.user(a_org, "max@a.example")
    users = {
        name: (await api.user(a_org, f"{name}@a.example"))["id"]
        for name in ("patch", "deactivate", "reactivate", "act-on", "revert")
    }
    # A boost to end (before the save to revert: that stays the newest batch).
    boost = await api.post(
        f"/v1/organizations/{a_org}/boosts",
        {"user": a_member["id"], "kind": "inference", "amount": 1_000, "ends_at": BOOST_ENDS},
        expect=201,
    )
    # A save of a user no other request touches, so that reverting it always works.
    await api.allowances(a_org, {"user": users["revert"], "max_tokens": 300_000}, expect=200)
    saved = await api.get(f"/v1/organizations/{a_org}/allowance-batches", params={"limit": 1})
    await api.post(f"/v1/users/{users['reactivate']}/deactivate", expect=200)
    purchase = await api.purchase(a_org, 100_000)
    a_usage = await org_api(api, a_org, "usage")
    await a_usage.use(alice["id"], 1_000, expect=200)
    reservations = [
        (
            await a_usage.post(
                "/v1/reservations", {"user": alice["id"], "kind": "inference", "tokens": 50}
            )
        )["id"]
        for _ in range(2)
    ]
    victims = [
        (await api.post(f"/v1/organizations/{a_org}/api-keys", {"name": n, "scopes": ["read"]}))[
            "id"
        ]
        for n in ("api victim", "page victim")
    ]
    asked = {
        name: (
            await api.post(
                "/v1/token-requests",
                {"user": user, "kind": kind, "amount": 1_000, "reason": "matrix"},
                expect=201,
            )
        )["id"]
        for name, user, kind in (
            ("approve", alice["id"], "inference"),
            ("deny", alice["id"], "training"),
            ("withdraw", a_member["id"], "training"),
        )
    }
    rates = {"prompt_rate": "1", "completion_rate": "1"}
    await api.call("PUT", f"/v1/models/{MODEL}", json=rates, expect=200)
    await api.call("PUT", f"/v1/organizations/{a_org}/models/{MODEL}", json=rates, expect=200)
    personal = {
        name: (await api.post(f"/v1/users/{user}/api-keys", {"name": "victim"}, expect=201))["id"]
        for name, user in (("alice", alice["id"]), ("member", a_member["id"]))
    }
    webhooks = [
        (
            await api.post(
                f"/v1/organizations/{a_org}/webhooks", {"url": f"https://hooks.a.example/{n}"}
            )
        )["id"]
        for n in ("kept", "removed")
    ]
    b_org = await funded_org(api)
    b_user = await api.user(b_org, "bob@b.example", name="Bob Bee")
    b_admin = await api.user(b_org, "bea@b.example", role="admin")

    operator = await db.write(
        lambda s: auth_service.create_operator(
            s, email="olga@ops.example", name="Olga", password=OPERATOR_PASSWORD, now=clock.now()
        )
    )
    callers = {
        "anonymous": Caller(),
        "operator-key": Caller(key=api.secret),
        "operator-session": await session_of(db, clock, operator_id=operator.id),
    }
    for org, org_id, admin_id, member_id in (
        ("a", a_org, a_admin["id"], a_member["id"]),
        ("b", b_org, b_admin["id"], b_user["id"]),
    ):
        for scope in ("admin", "usage", "read"):
            callers[f"{org}-{scope}-key"] = Caller(org, key=await api.key(org_id, scope))
        for role, user_id in (("admin", admin_id), ("member", member_id)):
            found = await session_of(db, clock, user_id=user_id)
            callers[f"{org}-{role}-session"] = Caller(org, session=found.session, csrf=found.csrf)

    a_users = [alice["id"], a_admin["id"], a_member["id"], *users.values()]
    return World(
        a_org=a_org,
        a_purchase=purchase["id"],
        alice=alice["id"],
        alice_email=alice["email"],
        to_patch=users["patch"],
        to_deactivate=users["deactivate"],
        to_reactivate=users["reactivate"],
        to_act_on=users["act-on"],
        api_key_to_revoke=victims[0],
        page_key_to_revoke=victims[1],
        to_commit=reservations[0],
        to_release=reservations[1],
        to_approve=asked["approve"],
        to_deny=asked["deny"],
        to_withdraw=asked["withdraw"],
        personal_key_to_revoke=personal["alice"],
        my_key_to_revoke=personal["member"],
        webhook=webhooks[0],
        webhook_to_remove=webhooks[1],
        delivery_to_resend=await delivered_delivery(db, clock, a_org, webhooks[0]),
        batch_to_revert=saved["batches"][0]["id"],
        boost_to_end=boost["id"],
        b_org=b_org,
        b_user=b_user["id"],
        operator_email="olga@ops.example",
        callers=callers,
        a_markers={repr(uuid.UUID(i)) for i in [a_org, *a_users]} | {repr(f"org:{a_org}")},
        secrets=(a_org, *a_users, "alice@a.example", "Alice Aardvark", "ada@a.example"),
    )


# --- calling ---------------------------------------------------------------------------------


async def send(
    client: httpx.AsyncClient, req: Req, caller: Caller, *, idempotency_key: str | None = None
) -> httpx.Response:
    """One request as `caller`, with nothing else carried over (the cookie jar is emptied);
    API writes carry an Idempotency-Key, a new one unless given."""
    client.cookies.clear()
    headers = {"Accept": "text/html" if req.page else "application/json"}
    cookies = []
    if caller.key:
        headers["Authorization"] = f"Bearer {caller.key}"
    if caller.session:
        cookies.append(f"ta_session={caller.session}")
    form = dict(req.form) if req.form is not None else None
    if req.sign_in_form:
        assert form is not None
        await client.get("/login", headers={"Accept": "text/html"})
        token = client.cookies["ta_login_csrf"]
        client.cookies.clear()
        cookies.append(f"ta_login_csrf={token}")
        form["csrf_token"] = token
    elif req.is_dashboard and req.method != "GET" and caller.csrf:
        if form is not None:
            form["csrf_token"] = caller.csrf
        else:
            headers["X-CSRF-Token"] = caller.csrf
    if req.is_api and req.method != "GET":
        headers["Idempotency-Key"] = idempotency_key or uuid.uuid4().hex
    if cookies:
        headers["Cookie"] = "; ".join(cookies)
    response = await client.request(req.method, req.path, json=req.json, data=form, headers=headers)
    client.cookies.clear()
    return response


def is_sign_in_redirect(response: httpx.Response) -> bool:
    return response.status_code == 303 and response.headers["location"].startswith("/login?next=")


def refusal(req: Req, role: str, caller: Caller, response: httpx.Response) -> str | None:
    """None when `response` is the refusal this caller must get; else what is wrong."""
    status, what = response.status_code, f"{req.method} {req.path} as {role}"
    if req.path == "/metrics":  # its own token or nothing (404: metrics off), for everyone
        return None if status in (401, 404) else f"{what}: {status} (expected 401 or 404)"
    if req.is_api:
        if caller.key is None:
            expected = {401}
        elif req.path == "/v1/usage/batch" and status == 200:
            # A usage key of B: each event names a user B can't see, refused on its own.
            results = response.json()["results"]
            if all(r["status"] == 404 for r in results):
                return None
            return f"{what}: {results}"
        else:
            expected = {403, 404}
        if status not in expected:
            return f"{what}: {status} (expected {sorted(expected)}) {response.text[:300]}"
        code = response.json()["error"]["code"]
        if {401: code == "unauthenticated", 403: code == "forbidden"}.get(
            status, code.endswith("not_found")
        ):
            return None
        return f"{what}: {status} {code}"
    if caller.session is None:
        # No session: the dashboard sends browsers to sign in, and scripts a 401.
        if (req.page and is_sign_in_redirect(response)) or (not req.page and status == 401):
            return None
        return f"{what}: {status} {response.headers.get('location')} (expected to sign in)"
    if status in (403, 404):
        return None
    return f"{what}: {status} (expected 403 or 404) {response.text[:300]}"


def success(req: Req, role: str, response: httpx.Response) -> str | None:
    status = response.status_code
    if 200 <= status < 400 and not is_sign_in_redirect(response):
        return None
    return f"{req.method} {req.path} as {role}: {status} {response.text[:300]}"


def leaks(world: World, req: Req, response: httpx.Response) -> list[str]:
    """A's identifiers in an answer to a caller of B that did not send them."""
    sent = f"{req.path} {req.json} {req.form}"
    answer = response.text + response.headers.get("location", "")
    return [s for s in world.secrets if s not in sent and s in answer]


def by_order(routes: Iterable[Route]) -> list[Route]:
    """Signing out ends the caller's session: it goes last."""
    return sorted(routes, key=lambda route: (route == ("POST", "/logout"), route))


# --- the tests ------------------------------------------------------------------------------


SUITES_OF_THEIR_OWN = {
    # Mounted surfaces with their own credentials (an API key as Bearer or in
    # x-access-tokens, personal keys) and their own error shapes: each has a suite that
    # runs every endpoint against the callers that may and may not call it, other
    # organizations' objects included.
    ("GET", "/openai"): "tests/gateway",
    ("GET", "/user"): "tests/asksage",
    ("GET", "/server"): "tests/asksage",
}


def test_every_served_route_is_in_the_matrix_and_every_row_is_served(app: FastAPI) -> None:
    served = served_routes(app)
    for route, suite in SUITES_OF_THEIR_OWN.items():
        assert route in served, f"{route} is no longer mounted"
        assert any(Path(suite).glob("test_*.py")), f"{route}: {suite} has no tests"
        served.discard(route)
    assert ("POST", "/v1/usage") in served  # the walk sees into included routers
    assert ("POST", "/orgs/{org_id}/users/actions") in served
    missing = sorted(served - set(MATRIX))
    gone = sorted(set(MATRIX) - served)
    assert not missing, f"add these routes to MATRIX_TEXT in {__file__}: {missing}"
    assert not gone, f"MATRIX_TEXT names routes the app no longer serves: {gone}"
    assert set(REQUESTS) == set(MATRIX), sorted(set(REQUESTS) ^ set(MATRIX))


def test_the_matrix_denies_another_organization_everything_of_a() -> None:
    own = {("GET", "/v1/organizations"), ("GET", "/me"), ("GET", "/me/usage-per-{bucket}.csv")}
    own |= {("POST", "/me/requests"), ("POST", "/me/api-keys"), ("POST", "/logout")}
    public = {route for route, cells in MATRIX.items() if all(cells.values())}
    for route, cells in MATRIX.items():
        if route in own or route in public:
            continue
        allowed = [role for role, ok in cells.items() if ok and role.startswith("b-")]
        assert not allowed, f"{route} allows {allowed}"


@pytest.mark.parametrize("role", ROLES)
async def test_each_caller_gets_exactly_what_the_matrix_allows_and_refusals_change_nothing(
    api: Api, client: httpx.AsyncClient, db: Database, clock: FakeClock, role: str
) -> None:
    world = await build_world(api, db, clock)
    caller = world.callers[role]
    problems: list[str] = []
    denied = [route for route in by_order(MATRIX) if not MATRIX[route][role]]
    allowed = [route for route in by_order(MATRIX) if MATRIX[route][role]]

    before = await snapshot(db)
    for route in denied:
        req = REQUESTS[route](world)
        response = await send(client, req, caller)
        problems.append(refusal(req, role, caller, response) or "")
        if caller.org == "b":
            problems += leaks(world, req, response)
    after = await snapshot(db)
    changed = [name for name in before if before[name] != after[name]]
    problems = [p for p in problems if p]
    assert not changed, f"refused requests of {role} changed {changed}; " + "\n".join(problems)

    for route in allowed:
        req = REQUESTS[route](world)
        response = await send(client, req, caller)
        problems.append(success(req, role, response) or "")
        if caller.org == "b":
            problems += leaks(world, req, response)
    problems = [p for p in problems if p]
    assert not problems, "\n".join(problems)
    if caller.org == "b":
        assert rows_of(await snapshot(db), world.a_markers) == rows_of(before, world.a_markers)


FOREIGN: list[Callable[[World], Req]] = [
    lambda w: Req(
        "POST", f"/orgs/{w.b_org}/users/actions", form={"action": "deactivate", "user": [w.alice]}
    ),
    lambda w: Req("GET", f"/orgs/{w.b_org}/users/{w.alice}", page=True),
    lambda w: Req("GET", f"/orgs/{w.b_org}/users/{w.alice}/usage-per-day.csv"),
    lambda w: Req(
        "POST", f"/orgs/{w.b_org}/settings/keys/{w.page_key_to_revoke}/revoke", form={}, page=True
    ),
    lambda w: Req(
        "POST",
        f"/orgs/{w.b_org}/allowances",
        {"changes": [{"user": w.alice, "max_tokens": 1}, {"user": w.alice_email, "max_tokens": 1}]},
    ),
    lambda w: Req(
        "POST",
        f"/orgs/{w.b_org}/distribute",
        form={"action": "apply", "method": "fixed", "amount": "1", "scope": "selected"}
        | {"users": [w.alice]},
        page=True,
    ),
    lambda w: Req(
        "POST",
        f"/orgs/{w.b_org}/import",
        form={"action": "apply", "csv_text": f"email,max_tokens\n{w.alice_email},1\n"},
        page=True,
    ),
    lambda w: Req("GET", f"/orgs/{w.b_org}/journal?user={w.alice_email}", page=True),
    lambda w: Req("GET", f"/orgs/{w.b_org}/batches/{w.batch_to_revert}/revert", page=True),
    lambda w: Req(
        "POST", f"/orgs/{w.b_org}/batches/{w.batch_to_revert}/revert", form={}, page=True
    ),
    lambda w: Req("GET", f"/orgs/{w.b_org}/journal.csv?user={w.alice_email}"),
    lambda w: Req(
        "POST",
        "/operator/purchases",
        form={"org_id": w.b_org, "inference_amount": "1M"},
        page=True,
    ),
]


async def test_an_admin_naming_another_organizations_users_and_keys_on_their_own_pages_gets_nothing(
    api: Api, client: httpx.AsyncClient, db: Database, clock: FakeClock
) -> None:
    world = await build_world(api, db, clock)
    caller = world.callers["b-admin-session"]
    before = await snapshot(db)
    for build in FOREIGN:
        req = build(world)
        response = await send(client, req, caller)
        assert not leaks(world, req, response), (req, response.text)
        if req.path.startswith(f"/orgs/{world.b_org}/journal"):
            # Filtering B's journal by A's user finds no such user, and says so.
            assert response.status_code == 200, response.text
            if ".csv?" in req.path:
                assert response.text.count("\n") == 1, response.text  # the header alone
            else:
                shown = html.unescape(response.text)
                assert "No user 'alice@a.example' in this organization." in shown
            continue
        assert response.status_code in (403, 404, 422), (req, response.status_code, response.text)
    assert await snapshot(db) == before


async def test_a_replayed_idempotency_key_does_not_let_a_refused_caller_through(
    api: Api, client: httpx.AsyncClient, db: Database, clock: FakeClock
) -> None:
    """Keys are scoped to the organization, and a replay answers without running the write
    again: the caller must still be allowed to make it, or a read key could read the answer
    of an admin's write (with the same key and body) instead of being refused."""
    world = await build_world(api, db, clock)
    org_keys = [role for role in ROLES if role.startswith("a-") and role.endswith("-key")]
    replays = 0
    for route in by_order(MATRIX):
        if route[0] == "GET" or not route[1].startswith("/v1/"):
            continue
        allowed = [role for role in org_keys if MATRIX[route][role]]
        refused = [role for role in org_keys if not MATRIX[route][role]]
        if not allowed:
            continue  # the operator's keys are of another scope ("platform")
        req, key = REQUESTS[route](world), f"replay-{route[0]}-{route[1]}"
        first = await send(client, req, world.callers[allowed[0]], idempotency_key=key)
        assert first.status_code in (200, 201), (route, first.text)
        for role in refused:
            response = await send(client, req, world.callers[role], idempotency_key=key)
            replays += 1
            assert "idempotent-replayed" not in response.headers, (route, role)
            problem = refusal(req, role, world.callers[role], response)
            assert problem is None, problem
    assert replays >= 25
