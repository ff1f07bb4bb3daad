"""Schemathesis against the app's /openapi.json (issue 5, item 10).

The app runs in process (ASGI) on SQLite and on PostgreSQL, with two organizations, their
users, purchases, keys and reservations. Schemathesis's engine runs every phase the CLI
runs — examples, coverage, fuzzing (valid and invalid data) and stateful, a state machine
that follows the OpenAPI links (create an organization, buy tokens, add users, meter,
reserve, commit...) — and every check it has, once as the platform operator and once with
an organization's key (the other organization's key is its peer for
object_level_authorization). Seeded and bounded: the same cases run every time, in about
ten seconds per run.

The engine runs here rather than `schemathesis.pytest.from_fixture`, whose tests touch
`Node._nodeid`, which pytest 9 no longer has; it is also what runs the stateful phase and
the checks that need one (use_after_free, ensure_resource_availability).

The OpenAPI says how requests authenticate (a bearer key), the error answers of every
operation in their one shape (`ErrorOut`, docs/api.md) and which headers are required, so
the checks hold the API to its declared contract; `openapi()` only adds the links between
operations, which the stateful phase follows. The tests at the end hold the OpenAPI to
these declarations.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import pytest
import schemathesis
from fastapi import FastAPI
from schemathesis import Case, CheckContext, GenerationMode, Response
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import Status, events
from schemathesis.engine.recorder import CheckNode, ScenarioRecorder
from schemathesis.python import asgi
from schemathesis.specs.openapi.schemas import OpenApiSchema

from tests.conftest import START
from tests.databases import empty_postgres
from tokenadmin.act import Act
from tokenadmin.api_key import service as api_key_service
from tokenadmin.app import create_app
from tokenadmin.clock import FakeClock
from tokenadmin.config import Settings
from tokenadmin.database import Database
from tokenadmin.journal.service import verify

SEED = 20260315
MAX_EXAMPLES = 12
"""Fuzzed cases per operation and generation mode; the coverage phase adds its own."""
STATEFUL_STEPS = 12

Schema = dict[str, Any]

# Every error the API answers has one shape (docs/api.md, "Errors"); these are the statuses
# any operation may answer with it: a malformed body (400), no or a bad key (401), a key
# without the scope (403), an object not found (404), a conflict (409), a body too large
# (413), an invalid request or a refusal by the rules (422), a server stopping or cut off
# from its database (503). Metering adds 402.
ERROR_STATUSES = ("400", "401", "403", "404", "409", "413", "422", "503")
METERING_STATUSES = ("402",)


def operation_ids(spec: Schema) -> dict[tuple[str, str], str]:
    return {
        (method.upper(), path): operation["operationId"]
        for path, operations in spec["paths"].items()
        for method, operation in operations.items()
    }


FROM_PATH = "$request.path.{}"
FROM_BODY = "$response.body#/{}"

LINKS: dict[tuple[str, str, str], list[tuple[str, str, dict[str, str]]]] = {
    ("POST", "/v1/organizations", "201"): [
        (method, path, {"org_id": FROM_BODY.format("id")})
        for method, path in (
            ("GET", "/v1/organizations/{org_id}"),
            ("PATCH", "/v1/organizations/{org_id}"),
            ("POST", "/v1/organizations/{org_id}/purchases"),
            ("GET", "/v1/organizations/{org_id}/purchases"),
            ("GET", "/v1/organizations/{org_id}/balance"),
            ("POST", "/v1/organizations/{org_id}/users"),
            ("GET", "/v1/organizations/{org_id}/users"),
            ("POST", "/v1/organizations/{org_id}/api-keys"),
            ("GET", "/v1/organizations/{org_id}/api-keys"),
            ("POST", "/v1/organizations/{org_id}/allowances"),
            ("GET", "/v1/organizations/{org_id}/journal"),
        )
    ],
    ("POST", "/v1/organizations/{org_id}/purchases", "201"): [
        (
            "PATCH",
            "/v1/organizations/{org_id}/purchases/{purchase_id}",
            {"org_id": FROM_PATH.format("org_id"), "purchase_id": FROM_BODY.format("id")},
        ),
        ("POST", "/v1/organizations/{org_id}/users", {"org_id": FROM_PATH.format("org_id")}),
        ("GET", "/v1/organizations/{org_id}/balance", {"org_id": FROM_PATH.format("org_id")}),
    ],
    ("POST", "/v1/organizations/{org_id}/users", "201"): [
        *(
            (method, path, {"user_id": FROM_BODY.format("id")})
            for method, path in (
                ("GET", "/v1/users/{user_id}"),
                ("PATCH", "/v1/users/{user_id}"),
                ("POST", "/v1/users/{user_id}/deactivate"),
                ("GET", "/v1/users/{user_id}/balance"),
                ("GET", "/v1/users/{user_id}/usage"),
            )
        ),
        (
            "POST",
            "/v1/organizations/{org_id}/allowances",
            {"org_id": FROM_BODY.format("org_id")},
        ),
        ("GET", "/v1/organizations/{org_id}/journal", {"org_id": FROM_BODY.format("org_id")}),
    ],
    ("POST", "/v1/users/{user_id}/deactivate", "200"): [
        ("POST", "/v1/users/{user_id}/reactivate", {"user_id": FROM_PATH.format("user_id")}),
        ("GET", "/v1/users/{user_id}", {"user_id": FROM_PATH.format("user_id")}),
    ],
    ("POST", "/v1/reservations", "201"): [
        (method, path, {"reservation_id": FROM_BODY.format("id")})
        for method, path in (
            ("POST", "/v1/reservations/{reservation_id}/commit"),
            ("POST", "/v1/reservations/{reservation_id}/release"),
        )
    ],
    ("POST", "/v1/organizations/{org_id}/api-keys", "201"): [
        (
            "DELETE",
            "/v1/organizations/{org_id}/api-keys/{key_id}",
            {"org_id": FROM_PATH.format("org_id"), "key_id": FROM_BODY.format("id")},
        )
    ],
}
"""OpenAPI links: (producer method, path, status) → the operations its answer feeds."""


def declare_links(spec: Schema) -> None:
    ids = operation_ids(spec)
    for (method, path, status), targets in LINKS.items():
        response = spec["paths"][path][method.lower()]["responses"][status]
        response["links"] = {
            f"{target_method.lower()}_{ids[(target_method, target)]}": {
                "operationId": ids[(target_method, target)],
                "parameters": parameters,
            }
            for target_method, target, parameters in targets
        }


def openapi(app: FastAPI) -> Schema:
    """The app's OpenAPI, with what the stateful phase and the checks need (see the top)."""
    spec = copy.deepcopy(app.openapi())
    declare_links(spec)
    return spec


# --- a check of our own ---------------------------------------------------------------------

RULES = ("Value error", "value is not a valid email address")
"""Validation messages of rules the OpenAPI can't state: sums that must match, a row that
needs a column, an email domain that can't receive mail."""


@schemathesis.check
def validation_agrees_with_the_openapi(
    ctx: CheckContext, response: Response, case: Case[Any]
) -> bool | None:
    """A request the OpenAPI calls valid may be refused by a rule of the service (402, 409,
    422 with the rule's code: positive_data_acceptance accepts those here), but never for a
    type or a bound its OpenAPI does not state."""
    meta = case.meta
    if meta is None or meta.generation.mode != GenerationMode.POSITIVE:
        return None
    if response.status_code not in (400, 422):
        return None
    try:
        error = json.loads(response.content)["error"]
    except (ValueError, KeyError, TypeError):
        return None
    disagreements = [
        problem
        for problem in error.get("details", {}).get("errors", [])
        if not str(problem.get("message", "")).startswith(RULES)
        and _sent_valid(case, str(problem.get("field", "")))
    ]
    if error.get("code") == "malformed_json" or disagreements:
        raise AssertionError(
            f"A request valid by the OpenAPI was refused by validation: {error['code']}"
            f" {disagreements or error['message']}"
        )
    return None


UUID = re.compile(r"[0-9a-fA-F]{8}-?([0-9a-fA-F]{4}-?){3}[0-9a-fA-F]{12}")


def _sent_valid(case: Case[Any], field: str) -> bool:
    """Whether the part of the request an error names was valid by the OpenAPI: the stateful
    phase fills a path from a link even when the answer it reads lacks the value ("None")."""
    location, _, name = field.partition(".")
    if location == "path":
        return bool(UUID.fullmatch(str((case.path_parameters or {}).get(name, ""))))
    return True


# --- the app, its data, and the schema ----------------------------------------------------


async def _operator_key(database_url: str) -> str:
    db = Database(database_url, pool_size=2)
    try:
        if not db.is_sqlite:
            await empty_postgres(db)
        _, secret = await db.write(
            lambda s: api_key_service.create(
                s, Act("test", START), org_id=None, name="ops", scopes=["admin", "usage", "read"]
            )
        )
        return secret
    finally:
        await db.dispose()


async def _verify(database_url: str) -> list[str]:
    db = Database(database_url, pool_size=2)
    try:
        report = await db.read(verify)
        return list(report.differences)
    finally:
        await db.dispose()


@dataclass
class World:
    """What the seeding made: ids by kind, and each organization's key (admin, usage, read)."""

    ids: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    keys: dict[str, str] = field(default_factory=dict)


def _seed(app: FastAPI, operator: str) -> World:
    """Two organizations, through the API, each with users, a purchase, keys and an open
    reservation."""
    world = World()
    auth = {"Authorization": f"Bearer {operator}"}
    with asgi.get_client(app) as client:  # type: ignore[arg-type]  # an ASGI app all the same

        def post(path: str, body: Any) -> Any:
            response = client.post(path, json=body, headers=auth)
            assert response.status_code == 201, response.text
            return response.json()

        for name in ("acme", "globex"):
            org = post("/v1/organizations", {"name": name.title()})["id"]
            amounts = {"inference_amount": 10**9, "training_amount": 10**8}
            purchase = post(f"/v1/organizations/{org}/purchases", amounts)
            users = [
                post(f"/v1/organizations/{org}/users", {"email": f"{n}@{name}.example", "name": n})
                for n in ("ana", "ben", "cy")
            ]
            keys = [
                post(f"/v1/organizations/{org}/api-keys", {"name": name, "scopes": scopes})
                for scopes in (["read"], ["admin", "usage", "read"])
            ]
            reservation = post(
                "/v1/reservations", {"user": users[0]["id"], "kind": "inference", "tokens": 1000}
            )
            world.ids["org"].append(org)
            world.ids["purchase"].append(purchase["id"])
            world.ids["user"] += [u["id"] for u in users]
            world.ids["email"] += [u["email"] for u in users]
            world.ids["key"] += [k["id"] for k in keys]
            world.ids["reservation"].append(reservation["id"])
            world.keys[name] = keys[-1]["key"]
    return world


def config(caller: str, operator: str, world: World, directory: Path) -> SchemathesisConfig:
    """Every check and phase, seeded, with the seeded ids offered half of the time. The
    operator calls with its key; "organizations" calls with Acme's key, and Globex's key is
    its peer for object_level_authorization: neither may see the other's objects."""
    if caller == "operator":
        auth: dict[str, Any] = {"openapi": {"bearer": {"bearer": operator}}}
    else:
        peers = {
            "auth": [
                {
                    "name": name,
                    "fixedHeaders": [{"name": "Authorization", "value": f"Bearer {key}"}],
                }
                for name, key in world.keys.items()
            ]
        }
        path = directory / "peers.json"
        path.write_text(json.dumps(peers))
        auth = {"wfc": {"path": str(path), "user": "acme", "peers": sorted(world.keys)}}
    every_check = {
        name: {"enabled": True}
        for name in (
            *(["object_level_authorization"] if caller == "organizations" else []),
            "not_a_server_error",
            "status_code_conformance",
            "content_type_conformance",
            "response_headers_conformance",
            "response_schema_conformance",
            "negative_data_rejection",
            "positive_data_acceptance",
            "missing_required_header",
            "unsupported_method",
            "allow_header_conformance",
            "use_after_free",
            "ensure_resource_availability",
            "ignored_auth",
        )
    }
    return SchemathesisConfig.from_dict(
        {
            "seed": SEED,
            "generation": {
                "max-examples": MAX_EXAMPLES,
                "deterministic": True,
                "database": "none",
            },
            "checks": {
                **every_check,
                # The rules refuse what a schema can't describe (402 insufficient_tokens,
                # 422 below_minimum...); validation_agrees_with_the_openapi checks the rest.
                # Seconds; generous, as CI machines are shared.
                "max_response_time": 10,
                "positive_data_acceptance": {
                    "enabled": True,
                    "expected-statuses": ["2xx", "401", "402", "403", "404", "409", "422"],
                },
            },
            "phases": {
                # What an organization's key may do is a matter of whom the objects belong
                # to, which fuzzing and the stateful phase test; the coverage phase's
                # boundary values are the operator run's.
                "examples": {"enabled": caller == "operator"},
                "coverage": {"enabled": caller == "operator"},
                "stateful": {"max-steps": STATEFUL_STEPS},
            },
            "auth": auth,
            "dictionaries": {
                "orgs": {"values": world.ids["org"]},
                "users": {"values": world.ids["user"]},
                "people": {"values": world.ids["user"] + world.ids["email"]},
                "purchases": {"values": world.ids["purchase"]},
                "keys": {"values": world.ids["key"]},
                "reservations": {"values": world.ids["reservation"]},
            },
            "parameters": {
                "path.org_id": {"dictionary": "orgs", "probability": 0.5},
                "path.user_id": {"dictionary": "users", "probability": 0.5},
                "path.purchase_id": {"dictionary": "purchases", "probability": 0.5},
                "path.key_id": {"dictionary": "keys", "probability": 0.5},
                "path.reservation_id": {"dictionary": "reservations", "probability": 0.5},
                "body.user": {"dictionary": "people", "probability": 0.5},
                "body.changes[*].user": {"dictionary": "people", "probability": 0.5},
                "body.events[*].user": {"dictionary": "people", "probability": 0.5},
            },
        }
    )


@dataclass(frozen=True)
class Failure:
    phase: str
    check: str
    title: str
    message: str
    sent: str
    answered: str

    def __str__(self) -> str:
        return (
            f"[{self.phase}] {self.check}: {self.title}: {self.message}\n"
            f"    sent {self.sent}\n    answered {self.answered}"
        )


@dataclass
class Run:
    """What the engine did: requests per phase and operation, checks run, what failed."""

    requests: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    operations: set[str] = field(default_factory=set)
    checks: Counter[str] = field(default_factory=Counter)
    failures: list[Failure] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stop_reason: str = ""

    def record(self, phase: str, recorder: ScenarioRecorder) -> None:
        self.requests[phase] += len(recorder.interactions)
        for interaction in recorder.interactions.values():
            if interaction.response is not None:
                self.statuses[interaction.response.status_code] += 1
        for case in recorder.cases.values():
            self.operations.add(case.value.operation.label)
        for case_id, checks in recorder.checks.items():
            for check in checks:
                self.checks[check.name] += 1
                if check.status == Status.FAILURE and check.failure_info is not None:
                    self.failures.append(_failure(phase, recorder, case_id, check))


def _failure(phase: str, recorder: ScenarioRecorder, case_id: str, node: CheckNode) -> Failure:
    assert node.failure_info is not None
    failure = node.failure_info.failure
    sent = answered = ""
    interaction = recorder.interactions.get(case_id)
    if interaction is not None:
        request = interaction.request
        sent = f"{request.method} {request.uri} {(request.body or b'')[:300]!r}"
        if interaction.response is not None:
            body = interaction.response.content or b""
            answered = f"{interaction.response.status_code} {body[:300]!r}"
    return Failure(phase, node.name, failure.title, failure.message, sent, answered)


def run(schema: OpenApiSchema) -> Run:
    """Every phase of the engine (examples, coverage, fuzzing, stateful), as the CLI runs it."""
    result = Run()
    for event in schemathesis.engine.from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            result.record(event.phase.value, event.recorder)
        elif isinstance(event, events.NonFatalError):
            result.errors.append(f"{event.label}: {event.info.title}: {event.info.message}")
        elif isinstance(event, events.FatalError):
            raise event.exception
        elif isinstance(event, events.EngineFinished):
            result.stop_reason = event.stop_reason.value
            result.failures += [
                Failure("run", "", f.title, f.message, "", "") for f in event.failures
            ]
    return result


@pytest.fixture
def served(database_url: str) -> Iterator[tuple[FastAPI, str, World]]:
    """The app on a fresh database, served in the event loop Schemathesis calls it in, with
    an operator key and two organizations."""
    operator = asyncio.run(_operator_key(database_url))
    app = create_app(Settings(database_url=database_url), clock=FakeClock(START), run_sweeper=False)
    try:
        yield app, operator, _seed(app, operator)
    finally:
        # Stops the app in the loop it ran in, which closes its database connections.
        asgi.shutdown_lifespans()
    differences = asyncio.run(_verify(database_url))
    assert not differences, "tokenadmin verify found differences:\n" + "\n".join(differences)


@pytest.mark.parametrize("caller", ["operator", "organizations"])
def test_every_operation_answers_as_its_openapi_says_in_every_phase_and_check(
    caller: str, served: tuple[FastAPI, str, World], tmp_path: Path
) -> None:
    app, operator, world = served
    schema = schemathesis.openapi.from_dict(
        openapi(app), config=config(caller, operator, world, tmp_path)
    )
    schema.app = app
    result = run(schema)
    print(
        f"\nSchemathesis as {caller}: {len(result.operations)} operations,"
        f" requests per phase {dict(result.requests)}, {sum(result.checks.values())} checks"
        f" ({sorted(result.checks)}), answers {sorted(result.statuses.items())}"
    )
    assert result.stop_reason == "completed"
    assert not result.errors, "\n".join(result.errors)
    failures = result.failures
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(map(str, failures))
    phases = (
        {"coverage", "fuzzing", "stateful"} if caller == "operator" else {"fuzzing", "stateful"}
    )
    assert phases <= set(result.requests)
    assert len(result.operations) == len(operation_ids(schema.raw_schema))


# --- what the OpenAPI declares --------------------------------------------------------------


def product_openapi() -> Schema:
    """The OpenAPI as the app serves it (building the app opens no database connection)."""
    app = create_app(Settings(database_url="sqlite:///unused.db"), run_sweeper=False)
    return app.openapi()


def test_the_openapi_says_how_requests_authenticate() -> None:
    spec = product_openapi()
    assert spec["components"]["securitySchemes"] == {
        "bearer": {"type": "http", "scheme": "bearer", "description": ANY}
    }
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            expected: list[Schema] | None = [{"bearer": []}] if path.startswith("/v1/") else None
            assert operation.get("security") == expected, f"{method.upper()} {path}"


def test_the_openapi_lists_every_error_answer_in_its_one_shape() -> None:
    spec = product_openapi()
    missing = []
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if path == "/healthz":
                continue
            statuses: tuple[str, ...] = ERROR_STATUSES
            if path.startswith("/v1/reservations") or path == "/v1/usage":
                statuses += METERING_STATUSES
            for status in statuses:
                answer = operation["responses"].get(status, {})
                schema = answer.get("content", {}).get("application/json", {}).get("schema")
                if schema != {"$ref": "#/components/schemas/ErrorOut"} or not answer.get(
                    "description"
                ):
                    missing.append(f"{method.upper()} {path} {status}")
    assert not missing, missing
    # FastAPI's own 422 shape, which the API never answers, is declared nowhere.
    assert "HTTPValidationError" not in json.dumps(spec)


def test_the_openapi_says_usage_needs_an_idempotency_key() -> None:
    paths = product_openapi()["paths"]
    for method, path in (("post", "/v1/usage"), ("post", "/v1/reservations")):
        parameters = paths[path][method]["parameters"]
        key = next(p for p in parameters if p["name"] == "Idempotency-Key")
        # Usage refuses a request without one (idempotency_key_required); the others take it.
        assert key["required"] is (path == "/v1/usage"), path
