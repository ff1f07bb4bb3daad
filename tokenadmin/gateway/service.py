"""The metering gateway: a request to an OpenAI-compatible model, metered through a
reservation by usage.service, the one metering path (SPEC rule 10).

1. The model's route comes from the catalog (its rates, its upstream, whether the
   organization may use it).
2. An estimate is reserved: the prompt (gateway.estimate) plus `max_tokens` (else the
   model's `max_output_tokens`, else TOKENADMIN_GATEWAY_MAX_TOKENS), charged at the model's
   rates. When it does not fit, the request is refused and the upstream never called.
3. The upstream is called with no database connection or lock held.
4. What the upstream reports in `usage` is committed at the model's rates (the reservation's
   rest is released); an upstream error releases it all. A stream is committed when it
   ends, also when the client leaves or the upstream fails midway: the usage reported, else
   the prompt's estimate plus an estimate of the text streamed (the prompt counts once the
   upstream accepted the request, even if no word followed). Settling runs in a task of
   its own, so the request being cancelled can't stop it, and `Gateway.close` waits for it.
   If the process dies instead, the reservation expires (sweeper) and is journaled.

A commit larger than what the member has left (an answer longer than its estimate) commits
as much as fits and logs the rest: usage.service never lets used exceed an allowance.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Coroutine
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx

from tokenadmin.catalog import service as catalog
from tokenadmin.clock import Clock
from tokenadmin.config import Settings
from tokenadmin.database import Database
from tokenadmin.errors import InsufficientTokens, InvalidRequest, TokenAdminError
from tokenadmin.gateway.demo import DemoModel
from tokenadmin.gateway.estimate import (
    estimate_input,
    estimate_messages,
    estimate_tokens,
)
from tokenadmin.idempotency.service import Answer
from tokenadmin.tokens import Kind
from tokenadmin.usage.coalescer import Coalescer
from tokenadmin.usage.service import Caller, Operation

log = logging.getLogger("tokenadmin.gateway")

Endpoint = Literal["chat/completions", "completions", "embeddings"]
KINDS: dict[Endpoint, Kind] = {
    "chat/completions": Kind.inference,
    "completions": Kind.inference,
    "embeddings": Kind.training,
}
MAX_CONNECTIONS = 1000
"""Connections to upstreams a process keeps open at most (each stream holds one)."""


@dataclass(frozen=True)
class Member:
    """Whose tokens a request uses: the caller that meters, and the user (id or email)."""

    caller: Caller
    user: str
    org_id: uuid.UUID


class UpstreamFailed(Exception):
    """The upstream refused or failed: its status and its body (OpenAI's error shape)."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(f"upstream answered {status}")
        self.status = status
        self.body = body


def openai_error(
    message: str, type_: str, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    """A body in OpenAI's error shape."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


@cache
def _tls() -> ssl.SSLContext:
    """httpx's default TLS context (its certificate authorities), made once per process:
    loading the authorities costs about 25 ms, each app its client (tests make an app each)."""
    return httpx.create_ssl_context()


class Gateway:
    """What the gateway's requests share: the metering engine and one HTTP client."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        settings: Settings,
        coalescer: Coalescer,
        http: httpx.AsyncClient,
    ) -> None:
        self.db = db
        self.clock = clock
        self.settings = settings
        self.coalescer = coalescer
        self.http = http
        self._tasks: set[asyncio.Task[None]] = set()
        self._open = 0  # reservations made and not yet settled
        self._quiet = asyncio.Condition()

    @classmethod
    def create(
        cls, db: Database, clock: Clock, settings: Settings, coalescer: Coalescer
    ) -> Gateway:
        demo = urlsplit(catalog.DEMO_BASE_URL)
        timeout = settings.upstream_timeout_seconds
        http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            limits=httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=100),
            mounts={f"{demo.scheme}://{demo.netloc}": DemoModel()},
            follow_redirects=False,
            trust_env=False,
            verify=_tls(),
        )
        return cls(db, clock, settings, coalescer, http)

    async def close(self) -> None:
        """Wait for the settling under way, then close the HTTP client (at shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        await self.http.aclose()

    async def settled(self) -> None:
        """Wait until every reservation this process made has been committed or released."""
        async with self._quiet:
            await self._quiet.wait_for(lambda: self._open == 0)
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def opened(self) -> None:
        self._open += 1

    async def closed(self) -> None:
        async with self._quiet:
            self._open -= 1
            self._quiet.notify_all()

    def spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run `work` in a task of its own, which the caller being cancelled does not stop."""
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def submit(self, caller: Caller, operation: Operation) -> dict[str, Any]:
        """Meter one operation (the coalescer's path, as /v1/reservations); its answer's
        body, or its refusal raised."""
        answer = await self.coalescer.submit(caller, operation)
        if answer.status_code >= 400:
            raise refusal(answer)
        return answer.body


def refusal(answer: Answer) -> TokenAdminError:
    """The error a metering answer refused with, as the error it was."""
    error = answer.body["error"]
    kind = InsufficientTokens if error["code"] == "insufficient_tokens" else TokenAdminError
    return kind(
        error["message"],
        code=error["code"],
        status_code=answer.status_code,
        details=error.get("details") or {},
    )


# --- what a request costs ----------------------------------------------------------------


def _model(request: dict[str, Any]) -> str:
    name = request.get("model")
    if not isinstance(name, str) or not name:
        raise InvalidRequest(
            "Name the model: 'model' is required.",
            code="invalid_request",
            details={"param": "model"},
        )
    return name


def prompt_estimate(endpoint: Endpoint, request: dict[str, Any]) -> int:
    if endpoint == "chat/completions":
        messages = request.get("messages")
        if not isinstance(messages, list) or not messages:
            raise InvalidRequest(
                "'messages' must be a list of at least one message.",
                details={"param": "messages"},
            )
        return estimate_messages(messages)
    if endpoint == "completions":
        return estimate_input(request.get("prompt"))
    if request.get("input") in (None, "", []):
        raise InvalidRequest("'input' is required.", details={"param": "input"})
    return estimate_input(request.get("input"))


def completion_cap(request: dict[str, Any], route: catalog.Route, settings: Settings) -> int:
    """The completion tokens to reserve for: the request's own cap, else the model's, else
    the gateway's; times the number of choices asked for."""
    asked = request.get("max_completion_tokens", request.get("max_tokens"))
    if asked is not None and (not isinstance(asked, int) or isinstance(asked, bool) or asked < 1):
        raise InvalidRequest(
            "max_tokens must be a whole number of at least 1.", details={"param": "max_tokens"}
        )
    cap = asked or route.info.max_output_tokens or settings.gateway_max_tokens
    choices = request.get("n", 1)
    if not isinstance(choices, int) or isinstance(choices, bool) or not 1 <= choices <= 128:
        raise InvalidRequest("n must be a whole number from 1 to 128.", details={"param": "n"})
    return int(cap) * choices


# --- one metered call ----------------------------------------------------------------------


@dataclass
class Metering:
    """A request's reservation, settled once: committed at the model's rates, or released."""

    gateway: Gateway
    who: Member
    model: str
    kind: Kind
    rate: catalog.Rate
    reservation_id: uuid.UUID
    held: int
    prompt_tokens: int  # the estimate, used when the upstream reports no usage
    settling: asyncio.Task[None] | None = field(default=None, repr=False)

    def settle(self, prompt_tokens: int, completion_tokens: int) -> asyncio.Task[None]:
        """Commit this usage (none: release) in a task of its own; the first call wins."""
        if self.settling is None:
            self.settling = self.gateway.spawn(self._settle(prompt_tokens, completion_tokens))
        return self.settling

    def release(self) -> asyncio.Task[None]:
        return self.settle(0, 0)

    async def _settle(self, prompt_tokens: int, completion_tokens: int) -> None:
        try:
            await self._settle_now(prompt_tokens, completion_tokens)
        finally:
            await self.gateway.closed()

    async def _settle_now(self, prompt_tokens: int, completion_tokens: int) -> None:
        try:
            if prompt_tokens == 0 and completion_tokens == 0:
                await self._submit(Operation("release", reservation_id=self.reservation_id))
                return
            await self._commit(prompt_tokens, completion_tokens)
        except Exception:
            # The database out of reach, say: the reservation expires (sweeper), journaled.
            log.exception("reservation %s could not be settled", self.reservation_id)

    async def _submit(self, operation: Operation) -> dict[str, Any]:
        return await self.gateway.submit(self.who.caller, operation)

    async def _commit(self, prompt_tokens: int, completion_tokens: int) -> None:
        charged = self.rate.charge(prompt_tokens, completion_tokens)
        details: dict[str, Any] = {
            "model": self.model,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            **self.rate.as_details(),
        }
        tokens = charged
        for _ in range(3):
            operation = Operation(
                "commit", reservation_id=self.reservation_id, tokens=tokens, details=details
            )
            try:
                await self._submit(operation)
                return
            except InsufficientTokens as refused:
                # Longer than reserved, and more than the member has left: what fits (the
                # reservation and what remains) is committed, the rest logged.
                fits = int(refused.details.get("remaining", self.held))
                tokens = max(self.held, min(fits, tokens))
                details = {**details, "unmetered": charged - tokens}
                log.warning(
                    "reservation %s: %d tokens charged but only %d fit; committing %d",
                    self.reservation_id, charged, fits, tokens,
                )  # fmt: skip
            except TokenAdminError as refused:
                if refused.code != "reservation_expired":
                    raise
                await self._use_instead(charged, details)
                return
        # Still refused (others of the member used what remained meanwhile): the
        # reservation itself always fits.
        details = {**details, "unmetered": charged - self.held}
        await self._submit(
            Operation(
                "commit", reservation_id=self.reservation_id, tokens=self.held, details=details
            )
        )

    async def _use_instead(self, charged: int, details: dict[str, Any]) -> None:
        """The reservation ran out of time before the answer ended (its tokens went back):
        what was produced is recorded as usage, as much of it as fits."""
        tokens = charged
        for _ in range(2):
            if tokens <= 0:
                break
            operation = Operation(
                "usage", user=self.who.user, kind=self.kind, tokens=tokens, details=details
            )
            try:
                await self._submit(operation)
                return
            except InsufficientTokens as refused:
                tokens = int(refused.details.get("remaining", 0))
                details = {**details, "unmetered": charged - tokens}
        log.warning(
            "reservation %s expired; %d tokens charged could not be recorded",
            self.reservation_id, charged,
        )  # fmt: skip


async def reserve(
    gateway: Gateway, who: Member, endpoint: Endpoint, request: dict[str, Any]
) -> tuple[catalog.Route, Metering]:
    """Route the request and reserve its estimate; refused before anything is sent."""
    name = _model(request)
    prompt = prompt_estimate(endpoint, request)

    async def route_of(session: Any) -> catalog.Route:
        return await catalog.route(session, gateway.settings, who.org_id, name)

    route = await gateway.db.read(route_of)
    completion = 0 if endpoint == "embeddings" else completion_cap(request, route, gateway.settings)
    kind = KINDS[endpoint]
    tokens = max(1, route.info.rate.charge(prompt, completion))
    held = await gateway.submit(
        who.caller,
        Operation(
            "reserve",
            user=who.user,
            kind=kind,
            tokens=tokens,
            details={"model": name, "prompt_tokens": prompt, "completion_tokens": completion},
        ),
    )
    metering = Metering(
        gateway, who, name, kind, route.info.rate, uuid.UUID(held["id"]), tokens, prompt
    )
    gateway.opened()
    return route, metering


def upstream_request(
    gateway: Gateway,
    route: catalog.Route,
    endpoint: Endpoint,
    request: dict[str, Any],
    *,
    strip_user: bool,
) -> httpx.Request:
    body = {**request, "model": route.upstream.model}
    if strip_user:
        body.pop("user", None)  # it named a member of ours, not the upstream's end user
    headers = {"accept": "application/json"}
    if route.upstream.api_key:
        headers["authorization"] = f"Bearer {route.upstream.api_key}"
    url = f"{route.upstream.base_url.rstrip('/')}/{endpoint}"
    return gateway.http.build_request("POST", url, json=body, headers=headers)


def _failed(error: httpx.HTTPError) -> UpstreamFailed:
    if isinstance(error, httpx.TimeoutException):
        message = "The model's upstream did not answer in time."
        return UpstreamFailed(504, openai_error(message, "server_error", "upstream_timeout"))
    message = f"The model's upstream could not be reached ({type(error).__name__})."
    return UpstreamFailed(502, openai_error(message, "server_error", "upstream_unavailable"))


def _error_body(response: httpx.Response, content: bytes) -> dict[str, Any]:
    try:
        body = json.loads(content)
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return body
    text = content.decode("utf-8", "replace").strip()[:500]
    message = f"The model's upstream answered {response.status_code}: {text or 'no body'}"
    return openai_error(message, "upstream_error", f"upstream_{response.status_code}")


def produced_text(endpoint: Endpoint, answer: dict[str, Any]) -> str:
    """The text of an answer's choices (what the completion tokens were spent on)."""
    pieces: list[str] = []
    for choice in answer.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        if endpoint == "completions":
            pieces.append(str(choice.get("text") or ""))
            continue
        message = choice.get("message") or choice.get("delta") or {}
        if isinstance(message, dict):
            pieces.append(str(message.get("content") or ""))
            for call in message.get("tool_calls") or ():
                pieces.append(json.dumps(call))
    return " ".join(pieces)


def reported(usage: Any) -> tuple[int, int] | None:
    """Prompt and completion tokens of an upstream's `usage`, when it reports them."""
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens", 0) or 0
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    return max(prompt, 0), max(completion, 0)


async def forward(
    gateway: Gateway,
    who: Member,
    endpoint: Endpoint,
    request: dict[str, Any],
    *,
    strip_user: bool = False,
) -> dict[str, Any]:
    """A metered call answered whole: the upstream's JSON answer."""
    route, metering = await reserve(gateway, who, endpoint, request)
    try:
        outgoing = upstream_request(
            gateway, route, endpoint, {**request, "stream": False}, strip_user=strip_user
        )
        response = await gateway.http.send(outgoing)
    except httpx.HTTPError as error:
        await asyncio.shield(metering.release())
        raise _failed(error) from error
    except BaseException:
        metering.release()
        raise
    if response.status_code >= 400:
        await asyncio.shield(metering.release())
        raise UpstreamFailed(response.status_code, _error_body(response, response.content))
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        await asyncio.shield(metering.release())
        message = "The model's upstream answered something other than a JSON object."
        raise UpstreamFailed(502, openai_error(message, "server_error", "upstream_invalid"))
    counts = reported(answer.get("usage"))
    if counts is None:
        counts = (metering.prompt_tokens, estimate_tokens(produced_text(endpoint, answer)))
    await asyncio.shield(metering.settle(*counts))
    return answer


async def complete_chat(gateway: Gateway, who: Member, request: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI chat completion, metered as inference through a reservation (not streamed)."""
    return await forward(gateway, who, "chat/completions", {**request, "stream": False})


# --- streaming -----------------------------------------------------------------------------


class Stream:
    """A streamed answer passed through event by event, as it arrives, while what it
    produced is tallied; `finish` settles the reservation, however the stream ended."""

    def __init__(
        self,
        endpoint: Endpoint,
        metering: Metering,
        response: httpx.Response,
        *,
        usage_asked: bool,
    ) -> None:
        self.endpoint = endpoint
        self.metering = metering
        self.response = response
        self.usage_asked = usage_asked
        self.usage: tuple[int, int] | None = None
        self.text: list[str] = []
        self.ended = False  # the upstream's answer ended as it should
        self._events = self._pass()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._events

    async def _pass(self) -> AsyncGenerator[bytes, None]:
        pending = b""
        try:
            async for data in self.response.aiter_bytes():
                pending += data.replace(b"\r\n", b"\n")
                while (cut := pending.find(b"\n\n")) >= 0:
                    event, pending = pending[: cut + 2], pending[cut + 2 :]
                    if self._read(event):
                        yield event
            if pending.strip() and self._read(pending):
                yield pending + b"\n\n"
            self.ended = True
        except httpx.HTTPError as error:
            log.warning("upstream stream of %s broke: %r", self.metering.model, error)
            message = "The model's upstream failed before the answer ended."
            body = openai_error(message, "server_error", "upstream_failed")
            yield f"data: {json.dumps(body)}\n\n".encode()

    def _read(self, event: bytes) -> bool:
        """Note what an event carries; whether to pass it on (a usage chunk the client did
        not ask for is not: the gateway asked for it, for itself)."""
        for line in event.split(b"\n"):
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                continue
            try:
                chunk = json.loads(data)
            except ValueError:
                continue
            if not isinstance(chunk, dict):
                continue
            counts = reported(chunk.get("usage"))
            if counts is not None:
                self.usage = counts
            text = produced_text(self.endpoint, chunk)
            if text:
                self.text.append(text)
            if counts is not None and not chunk.get("choices") and not self.usage_asked:
                return False
        return True

    def counts(self) -> tuple[int, int]:
        """What to commit: the usage reported, else the prompt's estimate and the text's.
        The upstream accepted the request, so it read the prompt: a stream cut before its
        first word still costs the prompt (upstreams bill it), never nothing."""
        if self.usage is not None:
            return self.usage
        return (self.metering.prompt_tokens, estimate_tokens("".join(self.text)))

    async def finish(self) -> None:
        """Close the upstream's answer and settle the reservation (call it shielded)."""
        try:
            await self._events.aclose()
            await self.response.aclose()
        finally:
            await self.metering.settle(*self.counts())


async def open_stream(
    gateway: Gateway,
    who: Member,
    endpoint: Endpoint,
    request: dict[str, Any],
    *,
    strip_user: bool = False,
) -> Stream:
    """Reserve, then start a streamed call: refusals and upstream errors before the first
    byte are raised (nothing was produced; the reservation is released)."""
    route, metering = await reserve(gateway, who, endpoint, request)
    options = request.get("stream_options")
    usage_asked = isinstance(options, dict) and options.get("include_usage") is True
    body = {
        **request,
        "stream": True,
        "stream_options": {**(options if isinstance(options, dict) else {}), "include_usage": True},
    }
    try:
        outgoing = upstream_request(gateway, route, endpoint, body, strip_user=strip_user)
        response = await gateway.http.send(outgoing, stream=True)
    except httpx.HTTPError as error:
        await asyncio.shield(metering.release())
        raise _failed(error) from error
    except BaseException:
        metering.release()
        raise
    if response.status_code >= 400:
        try:
            content = await response.aread()
        except httpx.HTTPError:
            content = b""
        finally:
            await response.aclose()
        await asyncio.shield(metering.release())
        raise UpstreamFailed(response.status_code, _error_body(response, content))
    return Stream(endpoint, metering, response, usage_asked=usage_asked)
