"""Ask Sage's answer shape, `{"response": ..., "status": <code>}`, for every answer of a
base, refusals included: each base is a sub-app with its own handlers (as polar mounts
its backoffice), sharing the main app's state (database, clock, settings, gateway)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.datastructures import State
from starlette.exceptions import HTTPException as StarletteHTTPException

from tokenadmin import logs
from tokenadmin.auth.audit import DENIED, log_denied
from tokenadmin.errors import TokenAdminError
from tokenadmin.idempotency.service import Answer

log = logging.getLogger("tokenadmin.asksage")


def body(response: Any, status: int = 200, **extra: Any) -> dict[str, Any]:
    """An answer's body: what it says in `response`, its status again in `status`."""
    if isinstance(response, BaseModel):
        response = response.model_dump(mode="json")
    return {"response": jsonable_encoder(response), "status": status, **extra}


def answer(response: Any, status: int = 200, **extra: Any) -> JSONResponse:
    return JSONResponse(body(response, status, **extra), status_code=status)


def refusal(status: int, code: str, message: str) -> JSONResponse:
    """A refusal: the HTTP status, the same `status`, the message in `response`, and the
    machine code of the refusal in `code` (the codes of docs/api.md)."""
    return JSONResponse({"response": message, "status": status, "code": code}, status_code=status)


def of_answer(kept: Answer) -> JSONResponse:
    """An answer of the idempotent write path: a refusal kept there in the API's error
    shape is given in Ask Sage's."""
    error = kept.body.get("error") if kept.status_code >= 400 else None
    if isinstance(error, dict):
        return refusal(kept.status_code, str(error.get("code")), str(error.get("message")))
    headers = {"Idempotent-Replayed": "true"} if kept.replayed else None
    return JSONResponse(kept.body, status_code=kept.status_code, headers=headers)


def _validation_message(error: RequestValidationError) -> tuple[str, str]:
    items = error.errors()
    first = items[0] if items else {}
    field = ".".join(str(part) for part in first.get("loc", ()) if part not in ("body",))
    message = str(first.get("msg", "invalid request"))
    return "invalid_request", f"{field}: {message}" if field else message


def sub_app(router: APIRouter, state: State, *, title: str) -> FastAPI:
    """A base of the Ask Sage API: `router`'s routes, answered in Ask Sage's shape."""
    app = FastAPI(title=title, summary="Ask Sage-compatible API of tokenadmin (docs/api.md).")
    app.state = state
    app.include_router(router)

    @app.exception_handler(TokenAdminError)
    async def _refused(request: Request, error: TokenAdminError) -> JSONResponse:
        if error.status_code in DENIED:
            log_denied(request, error.status_code, error.code)
        response = refusal(error.status_code, error.code, error.message)
        response.headers.update(error.headers)
        return response

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        code, message = _validation_message(error)
        return refusal(422, code, message)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, error: StarletteHTTPException) -> JSONResponse:
        codes = {400: "malformed_json", 404: "not_found", 405: "method_not_allowed"}
        message = str(error.detail)
        if error.status_code == 404:
            message = f"No Ask Sage endpoint {request.url.path} here (docs/api.md lists them)."
        elif error.status_code == 405:
            message = "Every Ask Sage endpoint is called with POST."
        response = refusal(error.status_code, codes.get(error.status_code, "http_error"), message)
        response.headers.update(error.headers or {})
        return response

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unexpected error", exc_info=error)
        response = refusal(500, "internal_error", "Something went wrong on our side.")
        if (rid := logs.request_id_of(request.scope)) is not None:
            response.headers[logs.HEADER] = rid
        return response

    return app


def mount(app: FastAPI) -> None:
    """Serve the Ask Sage API's two bases in `app`, sharing its state."""
    from tokenadmin.asksage import server_endpoints, user_endpoints

    app.mount("/user", sub_app(user_endpoints.router, app.state, title="Ask Sage API: /user"))
    app.mount("/server", sub_app(server_endpoints.router, app.state, title="Ask Sage API: /server"))
