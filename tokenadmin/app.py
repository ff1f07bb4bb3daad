"""create_app(): the REST API, health, and the background jobs."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import gc
import logging
import re
from collections.abc import AsyncIterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.routing import iter_route_contexts
from fastapi.staticfiles import StaticFiles
from sqlalchemy import text
from starlette.applications import Starlette
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.errors import ServerErrorMiddleware
from starlette.routing import Match, Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tokenadmin import __version__, health, logs, metrics, sweeper
from tokenadmin.allowance.endpoints import router as allowance_router
from tokenadmin.api_key import endpoints as api_key_endpoints
from tokenadmin.api_key.cache import KeyCache
from tokenadmin.asksage import envelope as asksage
from tokenadmin.catalog import endpoints as catalog_endpoints
from tokenadmin.catalog.rates import RATE_ERROR
from tokenadmin.clock import Clock, SystemClock
from tokenadmin.config import Settings, get_settings
from tokenadmin.dashboard import router as dashboard_router
from tokenadmin.dashboard.transfer import MAX_UPLOAD_BYTES
from tokenadmin.dashboard.web import SignInRequired, error_page, sign_in_url, wants_html
from tokenadmin.database import Database
from tokenadmin.distribution.endpoints import router as distribution_router
from tokenadmin.errors import TokenAdminError
from tokenadmin.events import endpoints as events_endpoints
from tokenadmin.events import jobs as events_jobs
from tokenadmin.gateway.endpoints import create_openai_app, ingest_router
from tokenadmin.gateway.service import Gateway
from tokenadmin.idempotency.service import KeysInFlight
from tokenadmin.jobs.clock import FileClock
from tokenadmin.jobs.endpoints import router as jobs_router
from tokenadmin.jobs.scheduler import Scheduler
from tokenadmin.journal.endpoints import router as journal_router
from tokenadmin.organization.endpoints import router as organization_router
from tokenadmin.policy import service as policy_service
from tokenadmin.policy.endpoints import router as policy_router
from tokenadmin.report.endpoints import router as report_router
from tokenadmin.schemas import FieldRule, error_answers
from tokenadmin.token_request import endpoints as token_request_endpoints
from tokenadmin.usage.endpoints import KEY, metering
from tokenadmin.usage.endpoints import router as usage_router
from tokenadmin.usage.fast import PATHS as FAST_PATHS
from tokenadmin.usage.fast import FastMetering, FastSwitch
from tokenadmin.user.endpoints import org_router as org_user_router
from tokenadmin.user.endpoints import router as user_router
from tokenadmin.user.endpoints import table_router as user_table_router
from tokenadmin.webhooks import delivery as webhook_delivery
from tokenadmin.webhooks import email as webhook_email
from tokenadmin.webhooks.endpoints import deliveries_router as webhook_deliveries_router
from tokenadmin.webhooks.endpoints import router as webhooks_router

log = logging.getLogger("tokenadmin")
HERE = Path(__file__).parent
FAVICON = HERE / "dashboard" / "static" / "favicon.svg"


def _error(
    status: int, code: str, message: str, details: dict[str, Any] | None = None
) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": details or {}}}
    return JSONResponse(body, status_code=status)


class BodyLimit:
    """Refuse bodies over the configured size before the app sees any of them.

    A declared length over the limit is refused at once. Any other body is read ahead, up
    to the limit, before the app runs: counting it only as the app read it would let a
    route that reads no body (deactivate, release, revoke) apply its write under a chunked
    body of any size. The app then reads the body from memory; metering's bodies are small,
    so for them this is one message read a little earlier than the app would have read it.
    """

    def __init__(
        self, app: ASGIApp, max_bytes: int, uploads: Mapping[re.Pattern[str], int] | None = None
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        # Routes that read their own, larger body (the dashboard's CSV import): their body
        # is counted as they read it, streamed (a multipart file spills to disk), not held.
        self.uploads = dict(uploads or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = next(
            (size for path, size in self.uploads.items() if path.fullmatch(scope["path"])),
            None,
        )
        declared = dict(scope["headers"]).get(b"content-length")
        too_long = limit or self.max_bytes
        if declared is not None and declared.isdigit() and int(declared) > too_long:
            await self._refuse(scope, receive, send, too_long)
            return
        if limit is not None:
            await self.app(scope, self._counting(receive, limit), send)
            return
        message = await receive()
        chunks: list[bytes] = []
        seen = 0
        while message["type"] == "http.request":
            chunks.append(message.get("body", b""))
            seen += len(chunks[-1])
            if seen > self.max_bytes:
                await self._refuse(scope, receive, send, self.max_bytes)
                return
            if not message.get("more_body", False):
                break
            message = await receive()
        else:
            # The client left before its body ended: nothing is applied, no one is answered.
            return
        if len(chunks) > 1:
            message = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replay(message, receive), send)

    @staticmethod
    def _message(limit: int) -> str:
        return f"Request bodies are limited to {limit:,} bytes."

    def _counting(self, receive: Receive, limit: int) -> Receive:
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    # Raised while the route reads its body; the handler of HTTPException
                    # answers 413 request_too_large (a page to a browser).
                    raise StarletteHTTPException(413, self._message(limit))
            return message

        return counted

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        request = Request(scope)
        response: Response
        message = self._message(limit)
        if wants_html(request):  # a dashboard form over the limit: a page, as for any refusal
            refusal = TokenAdminError(message, code="request_too_large", status_code=413)
            response = error_page(request, refusal)
        else:
            response = _error(413, "request_too_large", message)
        await response(scope, receive, send)


def _replay(message: Message, receive: Receive) -> Receive:
    """A `receive` that gives `message` first, then what the server sends (a disconnect)."""
    pending = [message]

    async def replayed() -> Message:
        if pending:
            return pending.pop()
        return await receive()

    return replayed


AMOUNT_FIELDS = frozenset(
    {
        "tokens",
        "max_tokens",
        "max_train_tokens",
        "inference_amount",
        "training_amount",
        "min_inference",
        "min_training",
        "prompt_tokens",
        "completion_tokens",
        "amount",  # token requests' and boosts' amounts
        "floor",  # allocation policies (policy/schemas.py)
        "ceiling",
        "bump_amount",
    }
)


API_ERRORS = error_answers(400, 401, 403, 404, 409, 413, 422, 503)
# The CSV imports read a file of up to MAX_UPLOAD_BYTES: the dashboard's with room for its
# form, the API's with room for the file's JSON escapes (a quote or a line break is two bytes).
UPLOADS = {
    re.compile(r"/orgs/[^/]+/import"): MAX_UPLOAD_BYTES + 64 * 1024,
    re.compile(r"/v1/organizations/[^/]+/users/import"): MAX_UPLOAD_BYTES * 5 // 4 + 64 * 1024,
}
"""What any operation of the REST API may answer, in the one error shape of the handlers
below; declared, FastAPI no longer adds its own 422 (HTTPValidationError), which the API
never answers."""

BEARER = {
    "type": "http",
    "scheme": "bearer",
    "description": "An API key: `Authorization: Bearer ta_...` (docs/api.md, Keys).",
}


WRITES = frozenset({"post", "put", "patch", "delete"})

KEYS_IN_THE_BODY = frozenset({("post", "/v1/usage/batch")})
"""Writes whose events carry their own `idempotency_key` in the body instead of the header."""

REQUEST_ID_HEADER = {
    "description": "The request's id, as in the server's log lines: the request's own"
    " X-Request-ID if it sent a sane one (1 to 128 letters, digits and ._:+/=-), else a new one.",
    "schema": {"type": "string"},
}
"""Every answer carries it (logs.RequestLog); declared on each answer of the OpenAPI."""

IDEMPOTENCY_KEY_PARAMETER: dict[str, Any] = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": KEY.description,
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "title": "Idempotency-Key"},
}


def _declare_what_deps_check(app: FastAPI) -> None:
    """The OpenAPI says what the middleware and tokenadmin.deps do: every answer carries an
    X-Request-ID header (logs.RequestLog), every /v1 operation needs an API key as
    a bearer token, and every /v1 write takes an optional Idempotency-Key (docs/api.md,
    Idempotency), which `deps.idempotent_write` reads from the request. Said here rather
    than by dependencies on the routes, which would add steps to every request (metering's
    included) for nothing but the OpenAPI. Routes that declare the key themselves (metering,
    where POST /v1/usage requires it) keep their own declaration."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = generate()
            spec.setdefault("components", {})["securitySchemes"] = {"bearer": BEARER}
            for path, operations in spec["paths"].items():
                for operation in operations.values():
                    for answer in operation.get("responses", {}).values():
                        answer.setdefault("headers", {})[logs.HEADER] = REQUEST_ID_HEADER
                if path.startswith("/v1/"):
                    for method, operation in operations.items():
                        operation["security"] = [{"bearer": []}]
                        if method in WRITES and (method, path) not in KEYS_IN_THE_BODY:
                            _declare_idempotency_key(operation)
        assert app.openapi_schema is not None
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's way to extend it


def _declare_idempotency_key(operation: dict[str, Any]) -> None:
    parameters: list[dict[str, Any]] = operation.setdefault("parameters", [])
    if not any(p["in"] == "header" and p["name"].lower() == "idempotency-key" for p in parameters):
        parameters.append(copy.deepcopy(IDEMPOTENCY_KEY_PARAMETER))


IDEMPOTENCY_KEY = ("header", "Idempotency-Key")


def _validation_details(error: RequestValidationError) -> tuple[str, str, list[dict[str, Any]]]:
    """The code, message and `details.errors` of a refused request. Each problem names the
    field a person should fix (`field`), or none where no field is to blame (a body that is
    missing or not JSON): never an empty name, nor a character offset."""
    items = error.errors()
    if items and all(
        item.get("type") == "missing" and tuple(item.get("loc", ())) == IDEMPOTENCY_KEY
        for item in items
    ):
        message = "This needs an Idempotency-Key header, so a retry is never counted twice."
        return "idempotency_key_required", message, []
    for item in items:
        if item.get("type") == "json_invalid":
            offset = item.get("loc", ("body", "?"))[-1]
            reason = item.get("ctx", {}).get("error", "invalid JSON")
            message = f"The request body is not valid JSON: {reason} at character {offset}."
            return "malformed_json", message, []
        if item.get("loc") == ("body",) and item.get("type") in {
            "model_attributes_type",
            "dict_type",
        }:
            message = "The request body must be a JSON object, sent as application/json."
            return "malformed_json", message, []
        if item.get("loc") == ("body",) and item.get("type") == "missing":
            return "invalid_request", "The request needs a JSON object as its body.", []
    problems = [_problem(item) for item in items]
    first = problems[0] if problems else {"message": "invalid"}
    where = f"{first['field']}: " if "field" in first else ""
    if all(_is_amount(item) for item in items):
        # SPEC rule 8: say what an amount is, not only what was wrong with this one.
        message = f"{where}{first['message']}. Token amounts are whole numbers up to 2^53."
        return "invalid_amount", message, problems
    if all(item.get("type") == RATE_ERROR for item in items):
        return RATE_ERROR, f"{where}{first['message']}", problems
    return "invalid_request", f"{where}{first['message']}", problems


def _location(item: Mapping[str, Any]) -> list[str]:
    location = [str(part) for part in item.get("loc", ()) if part != "body"]
    rule = item.get("ctx", {}).get("error")
    if isinstance(rule, FieldRule):  # a rule across fields names the one to fix
        location.append(rule.field)
    return location


def _problem(item: Mapping[str, Any]) -> dict[str, Any]:
    location = _location(item)
    problem: dict[str, Any] = {"field": ".".join(location)} if location else {}
    problem["message"] = item.get("msg", "invalid")
    return problem


def _is_amount(item: Mapping[str, Any]) -> bool:
    """Whether the problem is an amount's own value (its type or range), not a rule across
    fields that happens to name an amount."""
    location = _location(item)
    return bool(location) and location[-1] in AMOUNT_FIELDS and item.get("type") != "value_error"


def _included(*routers: APIRouter, responses: dict[int | str, dict[str, Any]]) -> APIRouter:
    """One router including `routers`, made once per process. FastAPI resolves an included
    route (its dependencies, its body and answer models) once per inclusion, lazily: half a
    second for this app's routes, which every app made would pay again if each included
    them itself (the tests make one per test). An app takes these inclusions as they are."""
    combined = APIRouter()
    for router in routers:
        combined.include_router(router, responses=responses)
    return combined


# Routes are matched in order: metering, the most frequent request by far, goes first.
METERING_ROUTES = _included(usage_router, ingest_router, responses=API_ERRORS)
FAST_ROUTES = {
    context.path: context.original_route
    for context in iter_route_contexts(METERING_ROUTES.routes)
    if context.path in FAST_PATHS and context.methods == {"POST"}
}
"""The routes the metering routes' lean path (usage/fast.py) stands in front of."""
assert set(FAST_ROUTES) == set(FAST_PATHS), "a metering route is missing"
DASHBOARD_ROUTES = _included(dashboard_router, responses={})
API_ROUTES = _included(
    organization_router,
    org_user_router,
    user_table_router,
    user_router,
    allowance_router,
    distribution_router,
    policy_router,
    journal_router,
    report_router,
    token_request_endpoints.router,
    token_request_endpoints.org_router,
    token_request_endpoints.user_router,
    events_endpoints.org_router,
    events_endpoints.user_router,
    catalog_endpoints.router,
    catalog_endpoints.org_router,
    api_key_endpoints.router,
    jobs_router,
    webhooks_router,
    webhook_deliveries_router,
    responses=API_ERRORS,
)


def resolve_routes(app: Starlette) -> None:
    """Have FastAPI resolve every included route of `app` and of the apps mounted in it
    now.

    FastAPI resolves an included route (its dependencies, its body and answer models) at
    the first request that reaches its router, and a request walks every router before the
    one it matches: the first request of a process paid for most of the app's routes (an
    allowance change of 10,000 users, the first after a start: 90 ms of its server CPU).
    A server resolves them while it starts instead, before it freezes what it holds.
    """
    for route in app.router.routes:
        if isinstance(route, Mount) and isinstance(route.app, Starlette):
            resolve_routes(route.app)
    for _ in iter_route_contexts(app.router.routes):
        pass  # each included router resolves its routes as it is walked


def _allowed_methods(request: Request) -> str:
    """The Allow header of a 405 (RFC 9110): the methods of every route of this path. The
    router's own names only the first route that matched the path, and each method of a
    path is a route of its own here."""
    methods: set[str] = set()
    for route in iter_route_contexts(request.app.router.routes):
        if route.methods and route.matches(request.scope)[0] != Match.NONE:
            methods |= route.methods
    return ", ".join(sorted(methods))


class TokenAdminApp(FastAPI):
    """FastAPI, entered at the metering routes' lean path for a POST to one of its paths.

    Every other request goes through FastAPI's whole stack, as any FastAPI app's. A metering
    POST enters the same middleware objects from RequestLog inwards (RequestLog, BodyLimit,
    FastMetering, then FastAPI's routes for what the lean path leaves to them), inside a
    ServerErrorMiddleware with the app's own 500 handler. What it skips are the layers
    around them that do nothing for tokenadmin and cost per request as much as the lean
    path's own reading: FastAPI's check of OpenTelemetry's global providers (three lookups
    through `os.environ`) and its two telemetry and body-size middlewares (tokenadmin sets
    no `max_body_size`; BodyLimit limits every body). An installation that configures an
    OpenTelemetry provider gets FastAPI's spans for every other request."""

    _metering: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"].startswith(_METERING_PREFIXES)
            and not self.root_path
            and not scope.get("root_path")
        ):
            metering = self._metering or self._metering_entry()
            scope["app"] = self
            await metering(scope, receive, send)
            return
        await super().__call__(scope, receive, send)

    def _metering_entry(self) -> ASGIApp:
        if self.middleware_stack is None:
            self.middleware_stack = self.build_middleware_stack()
        outermost = self.middleware_stack
        assert isinstance(outermost, ServerErrorMiddleware)
        layer: Any = outermost
        while not isinstance(layer, logs.RequestLog):
            layer = layer.app  # each middleware holds the next one as `app`
        self._metering = ServerErrorMiddleware(
            layer, handler=outermost.handler, debug=outermost.debug
        )
        return self._metering


_METERING_PREFIXES = ("/v1/usage", "/v1/reservations")
assert all(path.startswith(_METERING_PREFIXES) for path in FAST_PATHS)


def create_app(
    settings: Settings | None = None,
    *,
    clock: Clock | None = None,
    database: Database | None = None,
    run_sweeper: bool = True,
) -> FastAPI:
    settings = settings or get_settings()
    logs.configure(settings)
    if clock is None:
        clock = FileClock(settings.clock_file) if settings.clock_file else SystemClock()
    db = database or Database(settings.database_url, pool_size=settings.db_pool_size)
    scheduler = Scheduler(db, clock, lease=timedelta(seconds=settings.job_lease_seconds))
    sweeper.register(scheduler, settings)  # later jobs register here the same way
    policy_service.register(scheduler, settings)
    events_jobs.register(scheduler, settings)
    webhook_delivery.register(scheduler, settings)
    webhook_email.register(scheduler, settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = None
        if run_sweeper:
            for name in sorted(set(settings.job_intervals) - set(scheduler.jobs)):
                log.warning("TOKENADMIN_JOB_INTERVALS names %s, which is no job", name)
            task = asyncio.create_task(scheduler.run_forever())
        resolve_routes(app)
        # What the process holds once started (modules, routes, models: some 185,000
        # objects) is never garbage: moved out of the cyclic collector's sight, a full
        # collection walks only what requests made since, instead of 0.1 s each, taken
        # by whatever request happened to trigger it (a batch triggers them by the dozen).
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            gc.unfreeze()
            await app.state.gateway.close()  # its reservations settled, through the coalescer
            await app.state.coalescer.close()
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if database is None:
                await db.dispose()
            metrics.process_ended()

    app = TokenAdminApp(
        title="tokenadmin",
        version=__version__,
        summary="Token allowances, exact metering and an append-only journal.",
        lifespan=lifespan,
    )
    app.router.routes.extend(METERING_ROUTES.routes)  # first: matched in order
    app.state.db = db
    app.state.clock = clock
    app.state.jobs = scheduler
    app.state.key_cache = KeyCache()
    app.state.keys_in_flight = KeysInFlight()  # API writes and metering alike
    app.state.coalescer = metering(db, clock, settings, app.state.keys_in_flight)
    app.state.gateway = Gateway.create(db, clock, settings, app.state.coalescer)
    app.state.settings = settings
    metrics.watch_pools(db)

    @app.exception_handler(TokenAdminError)
    async def _refusal(request: Request, error: TokenAdminError) -> Response:
        if wants_html(request):
            response: Response = error_page(request, error)
        else:
            response = JSONResponse(error.to_dict(), status_code=error.status_code)
        response.headers.update(error.headers)
        return response

    @app.exception_handler(SignInRequired)
    async def _sign_in(request: Request, error: SignInRequired) -> Response:
        if wants_html(request):
            return RedirectResponse(sign_in_url(error.next_path), status_code=303)
        return _error(401, "unauthenticated", "Sign in again: the session has ended.")

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, error: RequestValidationError) -> Response:
        code, message, problems = _validation_details(error)
        status = 400 if code == "malformed_json" else 422
        if wants_html(request):  # a dashboard form: a page that says what was wrong
            return error_page(request, TokenAdminError(message, code=code, status_code=status))
        return _error(status, code, message, {"errors": problems} if problems else {})

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, error: StarletteHTTPException) -> Response:
        codes = {
            400: "malformed_json",  # a body that can't be read: bad UTF-8, too deep, too long
            404: "not_found",
            405: "method_not_allowed",
            413: "request_too_large",
        }
        code = codes.get(error.status_code, "http_error")
        if wants_html(request):
            refusal = TokenAdminError(str(error.detail), code=code, status_code=error.status_code)
            response: Response = error_page(request, refusal)
        else:
            response = _error(error.status_code, code, str(error.detail))
        response.headers.update(error.headers or {})
        if error.status_code == 405 and (allowed := _allowed_methods(request)):
            response.headers["allow"] = allowed  # else the raiser's own (static files)
        return response

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        # Answered outside RequestLog (by Starlette's outermost middleware), which has
        # logged the request as a 500: the answer carries its id here.
        log.exception("unexpected error", exc_info=error)
        response = _error(
            500, "internal_error", "Something went wrong on our side; nothing was changed."
        )
        if (rid := logs.request_id_of(request.scope)) is not None:
            response.headers[logs.HEADER] = rid
        return response

    @app.get("/healthz", tags=["health"], responses=error_answers(503))
    async def healthz() -> dict[str, str]:
        """Whether the service and its database answer."""
        await db.read(lambda session: session.execute(text("SELECT 1")))
        return {"status": "ok", "database": db.dialect, "version": __version__}

    health.add_routes(app, db)  # GET /readyz
    metrics.add_route(app, settings, db)  # GET /metrics

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> FileResponse:
        # Browsers ask for it whatever the page links; every current one reads SVG icons.
        cache = {"Cache-Control": "public, max-age=604800"}  # a week
        return FileResponse(FAVICON, media_type="image/svg+xml", headers=cache)

    app.mount("/static", StaticFiles(directory=HERE / "dashboard" / "static"), name="static")
    # /openai/v1: the OpenAI-compatible gateway, its own sub-app answering in OpenAI's shape
    app.mount("/openai", create_openai_app(app.state))
    asksage.mount(app)  # /user and /server: the Ask Sage API, its own sub-apps and handlers
    app.router.routes.extend(DASHBOARD_ROUTES.routes)
    app.router.routes.extend(API_ROUTES.routes)
    _declare_what_deps_check(app)
    # Innermost: the metering routes' lean path sees bodies BodyLimit has read and limited,
    # and its answers get their request id and access line from RequestLog.
    app.state.fast_metering = FastSwitch()
    app.add_middleware(FastMetering, switch=app.state.fast_metering, routes=FAST_ROUTES)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, uploads=UPLOADS)
    app.add_middleware(logs.RequestLog)  # added last, so outermost: every answer has an id
    return app
