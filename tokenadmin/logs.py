"""The server's log: tokenadmin's own loggers at the configured level, one access line per
request, and a request id that the log lines and the answer's X-Request-ID header carry.

`configure(settings)` runs at startup (create_app, hence every server process); uvicorn's
own access log is turned off by `tokenadmin serve`, so each request is logged once, here.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import re
import sys
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tokenadmin import metrics
from tokenadmin.auth.audit import printable

if TYPE_CHECKING:
    from tokenadmin.config import Settings

ROOT = "tokenadmin"
access_log = logging.getLogger("tokenadmin.access")

HEADER = "X-Request-ID"
_HEADER = HEADER.lower().encode()
SANE_ID = re.compile(rb"[A-Za-z0-9._:+/=-]{1,128}")
"""An incoming X-Request-ID is kept if it is 1 to 128 of these characters (no spaces,
quotes or control characters, which could forge or break a log line); otherwise a new one
is made."""

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "tokenadmin_request_id", default=None
)
"""The id of the request being answered, for every log line written while it is."""

ACCESS_FIELDS = ("method", "path", "route", "status", "duration_ms", "actor")
"""What an access line carries besides its message: fields of its own in the JSON format."""


def request_id_of(scope: Scope) -> str | None:
    """The id RequestLog gave this request (for answers sent outside it: a 500)."""
    rid: str | None = scope.get("state", {}).get("request_id")
    return rid


def note_actor(scope: Scope, actor: str) -> None:
    """Name the caller of this request in its access line (known once its key or session is)."""
    state = scope.get("state")
    if state is not None:
        state["actor"] = actor


class RequestLog:
    """Give each request an id (a sane incoming X-Request-ID, else a new one), answer it in
    the X-Request-ID header, and log one line when the answer is sent: method, path, route
    template, status, duration, request id and actor; the duration also goes to the request
    histogram of /metrics. A plain ASGI middleware: metering passes through it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        # 32 hex digits, as uuid4().hex reads, at a fourth of its cost per request
        rid = _incoming(scope) or os.urandom(16).hex()
        state = scope.setdefault("state", {})
        state["request_id"] = rid
        header = (_HEADER, rid.encode())
        status = 500  # unless an answer starts: an error that escapes is answered 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        token = REQUEST_ID.set(rid)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            metrics.observe_request(scope, status, seconds)
            if access_log.isEnabledFor(logging.INFO):
                _log_access(scope, state, status, seconds, rid)
            REQUEST_ID.reset(token)


def _incoming(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == _HEADER:
            return value.decode("ascii") if SANE_ID.fullmatch(value) else None
    return None


def _log_access(scope: Scope, state: dict[str, Any], status: int, seconds: float, rid: str) -> None:
    duration = round(seconds * 1000, 1)
    actor = state.get("actor")
    if actor is None and (viewer := state.get("viewer")) is not None:
        actor = viewer.principal.actor  # a dashboard session (dashboard.web.current_viewer)
    # Both may hold what a client sent (a path, a key's name): escaped, they can't forge a line.
    path = printable(scope["path"])
    actor = None if actor is None else printable(actor)
    access_log.info(
        "%s %s %d %.1fms%s",
        scope["method"],
        path,
        status,
        duration,
        f" actor={actor}" if actor else "",
        extra={
            "request_id": rid,
            "method": scope["method"],
            "path": path,
            "route": metrics.route_of(scope),
            "status": status,
            "duration_ms": duration,
            "actor": actor,
        },
    )


class _RequestId(logging.Filter):
    """Give each line the id of the request it was written for ("-" outside requests)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get() or "-"
        return True


class JsonLines(logging.Formatter):
    """One JSON object a line: time, level, logger, message, request_id, and the fields of
    an access line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
        }
        for name in ACCESS_FIELDS:
            if hasattr(record, name):
                line[name] = getattr(record, name)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


TEXT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


class _Stderr(logging.StreamHandler[TextIO]):
    """Writes to the standard error of the moment (a test runner may have replaced it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # read-only here: always the standard error of the moment
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def configure(settings: Settings) -> None:
    """tokenadmin's loggers log at `settings.log_level`, to standard error, in
    `settings.log_format`. Idempotent: a second app in the same process reconfigures the same
    handler. A `tokenadmin` logger given handlers by the program that embeds the app is left
    to them (only its level is set)."""
    root = logging.getLogger(ROOT)
    root.setLevel(settings.log_level.upper())
    ours = [h for h in root.handlers if isinstance(h, _Stderr)]
    if root.handlers and not ours:
        return
    handler = ours[0] if ours else _Stderr()
    handler.setFormatter(JsonLines() if settings.log_format == "json" else logging.Formatter(TEXT))
    if not ours:
        handler.addFilter(_RequestId())
        root.addHandler(handler)
