"""A small fake OpenAI-compatible upstream, and a way to serve an app on loopback in the
test's own event loop.

The fake answers chat completions, completions and embeddings. A request steers it with a
`fake` object in its body (an OpenAI client sends it with `extra_body`), which the gateway
passes on like any field it does not know:

- `words` (5): the answer is `w0 w1 ...`; its usage reports `prompt` (7) prompt tokens and
  one completion token a word; `usage: false` reports none.
- `status`: answer this status with an OpenAI error body instead.
- `hold_after`: stream that many words, then wait until the test calls `release()`
  (`hold_after: 0` before the answer starts, streamed or not): a slow upstream.
- `die_after`: stream that many words, then drop the connection mid-answer.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp

PROMPT_TOKENS = 7


class Dropped(Exception):
    """Raised inside a streamed answer: the server drops the connection mid-answer."""


@dataclass
class FakeUpstream:
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    holding: asyncio.Event = field(default_factory=asyncio.Event)  # set when one holds
    _release: asyncio.Event = field(default_factory=asyncio.Event)

    def release(self) -> None:
        self._release.set()

    async def _hold(self) -> None:
        self.holding.set()
        await self._release.wait()

    def app(self) -> ASGIApp:
        routes = [
            Route("/v1/chat/completions", self._chat, methods=["POST"]),
            Route("/v1/completions", self._completions, methods=["POST"]),
            Route("/v1/embeddings", self._embeddings, methods=["POST"]),
        ]
        return Starlette(routes=routes)

    async def _received(self, request: Request) -> tuple[dict[str, Any], dict[str, Any]]:
        body = await request.json()
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        return body, body.get("fake") or {}

    async def _chat(self, request: Request) -> Response:
        return await self._answer(request, chat=True)

    async def _completions(self, request: Request) -> Response:
        return await self._answer(request, chat=False)

    async def _answer(self, request: Request, *, chat: bool) -> Response:
        body, fake = await self._received(request)
        if "status" in fake:
            error = {"message": "fake upstream refused", "type": "server_error", "code": "fake"}
            return JSONResponse({"error": error}, status_code=fake["status"])
        words = [f"w{i}" for i in range(fake.get("words", 5))]
        usage = {
            "prompt_tokens": PROMPT_TOKENS,
            "completion_tokens": len(words),
            "total_tokens": PROMPT_TOKENS + len(words),
        }
        if fake.get("usage") is False:
            usage = {}
        if body.get("stream"):
            include = (body.get("stream_options") or {}).get("include_usage")
            events = self._events(chat, words, usage if include else {}, fake)
            return StreamingResponse(events, media_type="text/event-stream")
        if fake.get("hold_after") == 0:
            await self._hold()
        text = " ".join(words)
        choice: dict[str, Any] = (
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            if chat
            else {"index": 0, "text": text, "finish_reason": "stop"}
        )
        answer: dict[str, Any] = {
            "id": "fake-1",
            "object": "chat.completion" if chat else "text_completion",
            "created": 0,
            "model": body["model"],
            "choices": [choice],
        }
        if usage:
            answer["usage"] = usage
        return JSONResponse(answer)

    async def _events(
        self, chat: bool, words: list[str], usage: dict[str, int], fake: dict[str, Any]
    ) -> AsyncIterator[bytes]:
        def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            chunk = {"id": "fake-1", "object": "chat.completion.chunk", "created": 0,
                     "model": "fake", "choices": choices, **extra}  # fmt: skip
            return f"data: {json.dumps(chunk)}\n\n".encode()

        def piece(text: str | None, finish: str | None = None) -> dict[str, Any]:
            if not chat:
                return {"index": 0, "text": text or "", "finish_reason": finish}
            return {"index": 0, "delta": {} if text is None else {"content": text},
                    "finish_reason": finish}  # fmt: skip

        for index, word in enumerate(words):
            if index == fake.get("hold_after"):
                await self._hold()
            if index == fake.get("die_after"):
                raise Dropped("the fake upstream drops the connection")
            yield event([piece(word if index == 0 else f" {word}")])
        yield event([piece(None, "stop")])
        if usage:
            yield event([], usage=usage)
        yield b"data: [DONE]\n\n"

    async def _embeddings(self, request: Request) -> Response:
        body, fake = await self._received(request)
        if "status" in fake:
            error = {"message": "fake upstream refused", "type": "server_error", "code": "fake"}
            return JSONResponse({"error": error}, status_code=fake["status"])
        given = body["input"]
        inputs = given if isinstance(given, list) else [given]
        data = [
            {"object": "embedding", "index": i, "embedding": [0.0, 1.0]} for i in range(len(inputs))
        ]
        tokens = fake.get("tokens", 11)
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": body["model"],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )


def bound_socket() -> socket.socket:
    """A listening loopback socket: clients may connect before the server accepts (they wait
    in its backlog), so nothing needs to wait for the server to be ready."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(512)
    return sock


@asynccontextmanager
async def serving(app: ASGIApp, *, lifespan: Literal["on", "off"] = "off") -> AsyncIterator[str]:
    """Serve `app` with uvicorn on a loopback port, in this event loop; yields its URL."""
    sock = bound_socket()
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, lifespan=lifespan, log_level="warning", timeout_graceful_shutdown=5
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()
