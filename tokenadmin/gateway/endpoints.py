"""The OpenAI-compatible gateway, `/openai/v1`: its own sub-app, whose every answer,
refusals included, is in OpenAI's shape `{"error": {"message", "type", "param", "code"}}`,
so OpenAI's clients understand it. The metering is gateway.service's."""

from __future__ import annotations

import json
from typing import Any

import anyio
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.datastructures import State
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from tokenadmin.auth.audit import log_denied
from tokenadmin.catalog import service as catalog
from tokenadmin.deps import remembered_principal
from tokenadmin.errors import Forbidden, InvalidRequest, MalformedRequest, TokenAdminError
from tokenadmin.gateway import ingest, service
from tokenadmin.gateway.schemas import IngestIn
from tokenadmin.gateway.service import Endpoint, Gateway, Member, Stream, UpstreamFailed
from tokenadmin.usage.endpoints import REFUSALS, MeterDep, RequiredKeyDep
from tokenadmin.usage.schemas import UsageAccepted
from tokenadmin.usage.service import Caller

TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    402: "insufficient_quota",
    403: "invalid_request_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
}
CODES = {"unauthenticated": "invalid_api_key", "insufficient_tokens": "insufficient_quota"}


def openai_answer(error: TokenAdminError) -> JSONResponse:
    """A refusal in OpenAI's shape and statuses: out of tokens is OpenAI's `429
    insufficient_quota`, which OpenAI's clients are told not to retry (`x-should-retry:
    false`); a request that can't be served as sent is a 400."""
    status = {402: 429, 422: 400}.get(error.status_code, error.status_code)  # OpenAI's own
    type_ = TYPES.get(
        error.status_code, "server_error" if status >= 500 else "invalid_request_error"
    )
    param = error.details.get("param") if isinstance(error.details.get("param"), str) else None
    body = service.openai_error(error.message, type_, CODES.get(error.code, error.code), param)
    if error.details:
        body["error"]["details"] = error.details
    headers = dict(error.headers)
    if status < 500:
        headers["x-should-retry"] = "false"
    return JSONResponse(body, status_code=status, headers=headers)


def create_openai_app(state: State) -> FastAPI:
    """The sub-app mounted at /openai; it shares the main app's state (`state.gateway`,
    the database, the key cache)."""
    app = FastAPI(
        title="tokenadmin OpenAI-compatible gateway",
        summary="Point an OpenAI client's base URL at /openai/v1: every token is metered.",
        docs_url=None,
        redoc_url=None,
    )
    app.state = state

    @app.exception_handler(TokenAdminError)
    async def _refusal(request: Request, error: TokenAdminError) -> Response:
        if error.status_code in (401, 403):
            log_denied(request, error.status_code, error.code)
        return openai_answer(error)

    @app.exception_handler(UpstreamFailed)
    async def _upstream(request: Request, error: UpstreamFailed) -> Response:
        return JSONResponse(error.body, status_code=error.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, error: StarletteHTTPException) -> Response:
        refusal = TokenAdminError(
            str(error.detail),
            code="not_found" if error.status_code == 404 else "http_error",
            status_code=error.status_code,
        )
        response = openai_answer(refusal)
        response.headers.update(error.headers or {})
        return response

    @app.get("/v1/models")
    async def list_models(request: Request) -> JSONResponse:
        """The models the caller's organization may use, as OpenAI lists models."""
        principal = await remembered_principal(request)
        gateway = _gateway(request)
        infos = await gateway.db.read(
            lambda session: catalog.models_for(session, principal.org_id, gateway.settings)
        )
        data = [
            {
                "id": info.name,
                "object": "model",
                "created": 0,
                "owned_by": "organization" if info.source == "organization" else "tokenadmin",
                "prompt_rate": catalog.rate_text(info.rate.prompt),
                "completion_rate": catalog.rate_text(info.rate.completion),
            }
            for info in infos
            if info.allowed
        ]
        return JSONResponse({"object": "list", "data": data})

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        """A chat completion, metered as inference tokens; streamed when asked."""
        return await _metered(request, "chat/completions")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        """A text completion, metered as inference tokens; streamed when asked."""
        return await _metered(request, "completions")

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Response:
        """Embeddings, metered as training tokens."""
        return await _metered(request, "embeddings")

    return app


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        body = json.loads(raw)
    except ValueError:
        raise MalformedRequest("The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise MalformedRequest("The request body must be a JSON object.")
    return body


async def member_of(request: Request, body: dict[str, Any]) -> tuple[Member, bool]:
    """Whose tokens the request uses, and whether `user` named them (then it is not sent
    upstream). A member's own key meters for the member; an organization's key with the
    `usage` scope, for the member its body names in `user` (id or email)."""
    principal = await remembered_principal(request)
    if principal.org_id is None:
        raise Forbidden(
            "The gateway meters a member's tokens: call it with the member's own API key, or"
            " an organization's key with the 'usage' scope and the member in 'user'."
        )
    caller = Caller(
        principal.actor, principal.org_id, principal.idempotency_scope, principal.key_id
    )
    if principal.user_id is not None:
        return Member(caller, str(principal.user_id), principal.org_id), False
    if "usage" not in principal.scopes:
        raise Forbidden(
            "An organization's key needs the 'usage' scope to meter through the gateway.",
            details={"scope": "usage"},
        )
    user = body.get("user")
    if not isinstance(user, str) or not user.strip():
        raise InvalidRequest(
            "An organization's key meters for the member named in 'user' (their id or email).",
            details={"param": "user"},
        )
    return Member(caller, user.strip(), principal.org_id), True


async def _metered(request: Request, endpoint: Endpoint) -> Response:
    gateway = _gateway(request)
    body = await _body(request)
    who, named = await member_of(request, body)
    if body.get("stream") is True and endpoint != "embeddings":
        stream = await service.open_stream(gateway, who, endpoint, body, strip_user=named)
        return MeteredStream(stream)
    answer = await service.forward(gateway, who, endpoint, body, strip_user=named)
    return JSONResponse(answer)


class MeteredStream(StreamingResponse):
    """Server-sent events passed on as they arrive; when the answer ends, however it
    ends (the client gone, the upstream failed), the reservation is settled, shielded from
    the request's cancellation."""

    def __init__(self, stream: Stream) -> None:
        super().__init__(
            stream,
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )
        self.stream = stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.stream.finish()


ingest_router = APIRouter(prefix="/v1", tags=["metering"])


@ingest_router.post("/ingest", response_model=UsageAccepted, responses=REFUSALS)
async def ingest_document(body: IngestIn, meter: MeterDep, key: RequiredKeyDep) -> JSONResponse:
    """Meter a document's training tokens: its count, or its text's estimate."""
    operation = ingest.operation(
        body.user,
        tokens=body.tokens,
        text=body.text,
        dataset=body.dataset,
        document=body.document,
        idempotency_key=key,
    )
    return await meter.one(operation)
