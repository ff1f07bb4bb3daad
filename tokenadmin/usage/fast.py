"""The metering routes' lean path, in front of FastAPI.

POST /v1/usage, /v1/usage/batch, /v1/reservations and a reservation's /commit and /release
are the service's hot path: FastAPI's routing, dependencies and pydantic cost more per
request than the metering itself. `FastMetering`, a plain ASGI middleware inside RequestLog
and BodyLimit (a POST to these paths enters the app there: app.TokenAdminApp), answers the
requests it fully understands: a JSON body (read with msgspec) whose every field passes
checks at least as strict as the pydantic models of usage/schemas.py, a bearer key that
authenticates (the same remembered lookup as the routes, `deps.remembered_key`) and holds
the `usage` scope, and well-formed idempotency keys. It builds the same
`service.Operation`s, hands them to the same Coalescer and sends the same answers, byte
for byte, with the same headers.

Anything else (a body that is not JSON or breaks a rule, another content type, no key or a
refused one, a missing Idempotency-Key) goes on to the FastAPI routes of
usage/endpoints.py with its body replayed, so every refusal keeps its one shape and its
code; those routes also keep the OpenAPI description. So this path never refuses a request
itself: the only refusals it sends are the metering's own answers (insufficient_tokens,
user_not_found, a key in flight...), the same the routes send.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tokenadmin.auth.audit import log_denied
from tokenadmin.auth.principal import Principal
from tokenadmin.deps import bearer_of, remembered_key
from tokenadmin.errors import TokenAdminError
from tokenadmin.idempotency.service import MAX_KEY_LENGTH, Answer
from tokenadmin.tokens import MAX_AMOUNT, Kind
from tokenadmin.usage import service
from tokenadmin.usage.coalescer import Coalescer
from tokenadmin.usage.schemas import MAX_METADATA_BYTES

USAGE = "/v1/usage"
BATCH = "/v1/usage/batch"
RESERVATIONS = "/v1/reservations"
COMMIT = "/v1/reservations/{reservation_id}/commit"
RELEASE = "/v1/reservations/{reservation_id}/release"
PATHS = (USAGE, BATCH, RESERVATIONS, COMMIT, RELEASE)
"""The route templates this path answers (the FastAPI routes of the same templates are its
fallback, and name the route in the access log and /metrics)."""

JSON_TYPES = frozenset(
    {b"application/json", b"application/json; charset=utf-8", b"application/json;charset=utf-8"}
)
"""Content types read here; FastAPI's own reading of any other (or of none) is left to it."""

FIELDS = frozenset(
    {"user", "kind", "tokens", "model", "prompt_tokens", "completion_tokens", "dataset", "metadata"}
)
"""UsageFields' fields."""
RESERVE_FIELDS = FIELDS | {"ttl_seconds"}
EVENT_FIELDS = FIELDS | {"idempotency_key"}
DETAILS = ("model", "prompt_tokens", "completion_tokens", "dataset", "metadata")
"""UsageFields.details(), in the order of the model's fields."""
KINDS = {"inference": Kind.inference, "training": Kind.training}
MAX_BATCH = 1000
MAX_DEPTH = 32
"""Metadata nested deeper is left to the routes (and Python's JSON reader)."""

_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode
_JSON = (b"content-type", b"application/json")
_REPLAYED = (b"idempotent-replayed", b"true")


@dataclass
class FastSwitch:
    """Whether the lean path answers (`app.state.fast_metering`), and how many requests it
    has answered: off, every metering request goes to the FastAPI routes."""

    enabled: bool = True
    served: int = 0


@dataclass(frozen=True, slots=True)
class _Headers:
    authorization: str | None = None
    idempotency_key: str | None = None
    content_type: bytes | None = None


class _Unclear(Exception):
    """A request this path leaves to the FastAPI routes."""


def _headers(raw: Iterable[tuple[bytes, bytes]]) -> _Headers:
    authorization = key = content_type = None
    for name, value in raw:
        if name == b"authorization":
            if authorization is not None:
                raise _Unclear
            authorization = value.decode("latin-1")
        elif name == b"idempotency-key":
            if key is not None:
                raise _Unclear
            key = value.decode("latin-1")
        elif name == b"content-type":
            if content_type is not None:
                raise _Unclear
            content_type = value.lower()
    return _Headers(authorization, key, content_type)


def _key(key: object) -> str:
    """An idempotency key that `idempotency.check_key` accepts."""
    if type(key) is not str or not 0 < len(key) <= MAX_KEY_LENGTH or not key.isprintable():
        raise _Unclear
    return key


def _amount(value: object, least: int) -> int:
    # Whole numbers written as floats (250000.0) are read by the models too; here they go
    # to the routes, as any value that is not a plain integer in range.
    if type(value) is not int or not least <= value <= MAX_AMOUNT:
        raise _Unclear
    return value


def _text(value: object, longest: int, shortest: int = 0) -> str:
    # msgspec reads no unpaired surrogate (it refuses the body), so NUL is the one character
    # of schemas.Text left to check.
    if type(value) is not str or not shortest <= len(value) <= longest or "\x00" in value:
        raise _Unclear
    return value


def _storable(value: object, depth: int = 0) -> None:
    """schemas.check_json_value, as a check that leaves a doubt to the routes."""
    if type(value) is str:
        if "\x00" in value:
            raise _Unclear
    elif type(value) is dict:
        if depth >= MAX_DEPTH:
            raise _Unclear
        for key, item in value.items():
            _storable(key, depth + 1)
            _storable(item, depth + 1)
    elif type(value) is list:
        if depth >= MAX_DEPTH:
            raise _Unclear
        for item in value:
            _storable(item, depth + 1)
    elif type(value) is float:
        if value != value or value in (float("inf"), float("-inf")):
            raise _Unclear
    elif value is not None and type(value) not in (int, bool):
        raise _Unclear


def _fields(body: object, allowed: frozenset[str]) -> dict[str, Any]:
    if type(body) is not dict or not body.keys() <= allowed:
        raise _Unclear
    return body


def _debit(
    action: service.Action,
    fields: dict[str, Any],
    key: str | None,
    ttl_seconds: int | None = None,
) -> service.Operation:
    """The operation of a UsageFields body, checked as the model checks it."""
    user = _text(fields.get("user"), 320, 1)
    name = fields.get("kind")
    kind = KINDS.get(name) if type(name) is str else None
    if kind is None:
        raise _Unclear
    tokens = _amount(fields["tokens"], 1) if "tokens" in fields else None
    model = fields.get("model")
    if model is not None:
        _text(model, 200)
    prompt = fields.get("prompt_tokens")
    if prompt is not None:
        _amount(prompt, 0)
    completion = fields.get("completion_tokens")
    if completion is not None:
        _amount(completion, 0)
    dataset = fields.get("dataset")
    if dataset is not None:
        _text(dataset, 200)
    metadata = fields.get("metadata")
    if metadata is not None:
        if type(metadata) is not dict:
            raise _Unclear
        _storable(metadata)
        if len(json.dumps(metadata)) > MAX_METADATA_BYTES:
            raise _Unclear
    if tokens is None:
        if prompt is None or completion is None:
            raise _Unclear
    elif (
        model is None
        and prompt is not None
        and completion is not None
        and prompt + completion != tokens
    ):
        raise _Unclear
    details = {name: fields[name] for name in DETAILS if fields.get(name) is not None}
    return service.Operation(
        action,
        user=user,
        kind=kind,
        tokens=tokens,
        ttl_seconds=ttl_seconds,
        details=details or None,
        idempotency_key=key,
    )


def _reservation(path: str) -> tuple[str, uuid.UUID] | None:
    """The route template and reservation id of a commit or release path."""
    if not path.startswith("/v1/reservations/") or len(path) not in (60, 61):
        return None
    text, action = path[17:53], path[53:]
    if action == "/commit":
        template = COMMIT
    elif action == "/release":
        template = RELEASE
    else:
        return None
    # The hyphenated form only: the other spellings a UUID may take go to the route.
    if text.count("-") != 4 or [len(part) for part in text.split("-")] != [8, 4, 4, 4, 12]:
        return None
    try:
        return template, uuid.UUID(text)
    except ValueError:
        return None


def _operations(
    template: str, reservation_id: uuid.UUID | None, headers: _Headers, body: bytes
) -> list[service.Operation]:
    """The operations of a request the routes would accept, or _Unclear."""
    key = None if headers.idempotency_key is None else _key(headers.idempotency_key)
    if template == RELEASE:  # the route reads no body
        return [service.Operation("release", reservation_id=reservation_id, idempotency_key=key)]
    if template == COMMIT and not body:
        return [service.Operation("commit", reservation_id=reservation_id, idempotency_key=key)]
    if headers.content_type not in JSON_TYPES:
        raise _Unclear
    try:
        decoded = _decode(body)
    except (msgspec.DecodeError, ValueError, RecursionError) as error:  # ValueError: bad UTF-8
        raise _Unclear from error
    if template == USAGE:
        if key is None:
            raise _Unclear  # idempotency_key_required
        return [_debit("usage", _fields(decoded, FIELDS), key)]
    if template == BATCH:
        events = _fields(decoded, frozenset({"events"})).get("events")
        if type(events) is not list or not 0 < len(events) <= MAX_BATCH:
            raise _Unclear
        operations = []
        for event in events:
            fields = _fields(event, EVENT_FIELDS)
            operations.append(_debit("usage", fields, _key(fields.get("idempotency_key"))))
        return operations
    if template == RESERVATIONS:
        fields = _fields(decoded, RESERVE_FIELDS)
        ttl = fields.get("ttl_seconds")
        if ttl is not None and (type(ttl) is not int or not 1 <= ttl <= 86400):
            raise _Unclear
        return [_debit("reserve", fields, key, ttl)]
    assert template == COMMIT
    tokens = _fields(decoded, frozenset({"tokens"})).get("tokens")
    if tokens is not None:
        _amount(tokens, 0)
    return [
        service.Operation(
            "commit", reservation_id=reservation_id, tokens=tokens, idempotency_key=key
        )
    ]


def _starlette_json(content: Any) -> bytes:
    """What JSONResponse sends for `content`."""
    return json.dumps(
        content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
    ).encode("utf-8")


def _body_of(answer: Answer) -> bytes:
    # A fresh success is endpoints.answer_of's: text, integers, booleans and null, which
    # msgspec writes as json.dumps does. Anything else (a refusal, a replay read back from
    # the database) is written by json.dumps itself, as JSONResponse writes it.
    if answer.status_code < 400 and not answer.replayed:
        return _encode(answer.body) if answer.encoded is None else answer.encoded
    return _starlette_json(answer.body)


def _batch_body(answers: Sequence[Answer]) -> bytes:
    """endpoints.record_usage_batch's answer, as JSONResponse writes it."""
    parts = []
    accepted = 0
    for index, answer in enumerate(answers):
        ok = answer.status_code < 400
        accepted += ok
        head = b'{"index":%d,"status":%d,"accepted":%s,"replayed":%s,' % (
            index,
            answer.status_code,
            b"true" if ok else b"false",
            b"true" if answer.replayed else b"false",
        )
        if ok:
            parts.append(head + b'"result":' + _body_of(answer) + b',"error":null}')
        else:
            error = _starlette_json(answer.body.get("error"))
            parts.append(head + b'"result":null,"error":' + error + b"}")
    return b'{"accepted":%d,"refused":%d,"results":[%s]}' % (
        accepted,
        len(answers) - accepted,
        b",".join(parts),
    )


async def _answer(
    send: Send, status: int, body: bytes, first: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    # JSONResponse's headers, in its order: those given, then length and type.
    headers = [*first, (b"content-length", b"%d" % len(body)), _JSON]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _refusal(send: Send, error: TokenAdminError) -> None:
    """A refusal raised by the metering (a key in flight, the database out of reach), as
    app.py's handler answers it: JSONResponse, then `response.headers.update(error.headers)`
    (each header replaces one of the same name, or comes last)."""
    body = _starlette_json(error.to_dict())
    headers = [(b"content-length", b"%d" % len(body)), _JSON]
    for name, value in error.headers.items():
        header = (name.lower().encode("latin-1"), value.encode("latin-1"))
        same = [i for i, (known, _) in enumerate(headers) if known == header[0]]
        if same:
            headers[same[0]] = header
        else:
            headers.append(header)
    await send({"type": "http.response.start", "status": error.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _replay(message: Message, receive: Receive) -> Receive:
    pending = [message]

    async def replayed() -> Message:
        if pending:
            return pending.pop()
        return await receive()

    return replayed


class FastMetering:
    """Answer the metering requests it fully understands; pass on everything else."""

    def __init__(self, app: ASGIApp, *, switch: FastSwitch, routes: Mapping[str, BaseRoute]):
        self.app = app
        self.switch = switch
        self.routes = dict(routes)
        self._exact = {USAGE: USAGE, BATCH: BATCH, RESERVATIONS: RESERVATIONS}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or not self.switch.enabled
            or scope.get("root_path")
        ):
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        reservation_id = None
        template = self._exact.get(path)
        if template is None:
            found = _reservation(path)
            if found is None:
                await self.app(scope, receive, send)
                return
            template, reservation_id = found
        body = b""
        if template != RELEASE:
            message = await receive()
            receive = _replay(message, receive)
            # BodyLimit has read the whole body into one message (or the client left).
            if message["type"] != "http.request" or message.get("more_body", False):
                await self.app(scope, receive, send)
                return
            body = message.get("body", b"")
        try:
            headers = _headers(scope["headers"])
            operations = _operations(template, reservation_id, headers, body)
            principal = await _principal(scope, headers)
        except _Unclear:
            await self.app(scope, receive, send)
            return
        scope["route"] = self.routes[template]
        caller = service.Caller(
            principal.actor, principal.org_id, principal.idempotency_scope, principal.key_id
        )
        coalescer: Coalescer = scope["app"].state.coalescer
        self.switch.served += 1
        try:
            if template == BATCH:
                answers = await coalescer.run(caller, operations)
                await _answer(send, 200, _batch_body(answers))
                return
            answer = await coalescer.submit(caller, operations[0])
        except TokenAdminError as error:  # as app.py's handler answers it
            await _refusal(send, error)
            return
        if answer.status_code == 401:  # a key revoked since it was remembered
            log_denied(Request(scope), answer.status_code, answer.body["error"]["code"])
        replayed = [_REPLAYED] if answer.replayed else []
        await _answer(send, answer.status_code, _body_of(answer), replayed)


async def _principal(scope: Scope, headers: _Headers) -> Principal:
    """The caller, if its key authenticates and may meter; else _Unclear (the route refuses)."""
    secret = None if headers.authorization is None else bearer_of(headers.authorization)
    if secret is None:
        raise _Unclear
    try:
        principal = await remembered_key(scope["app"].state, scope, secret)
    except TokenAdminError as error:
        raise _Unclear from error
    if not principal.is_operator and "usage" not in principal.scopes:
        raise _Unclear
    return principal
