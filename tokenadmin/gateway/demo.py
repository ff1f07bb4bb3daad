"""The built-in demo model: a stand-in for an OpenAI-compatible server, so the gateway can
be tried on a fresh machine with nothing else running.

It is an httpx transport the gateway's HTTP client mounts for the host of
`catalog.service.DEMO_BASE_URL` (a `.invalid` name, which never resolves): requests to it
are answered in this process, and nothing leaves the machine. It runs no language model:
a chat or completion answers with a fixed sentence that says so, followed by the prompt's
last words echoed back; embeddings are vectors derived from a hash of the text. Streaming
answers come one word a chunk, and every answer reports its `usage` (counted with
gateway.estimate), the final chunk of a stream too when asked (`stream_options`).
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx

from tokenadmin.gateway.estimate import estimate_input, estimate_messages, estimate_tokens

MODEL = "demo-echo"
PREAMBLE = "This is tokenadmin's demo model, not a real language model. You said:"
DIMENSIONS = 8
ECHOED_WORDS = 200


class DemoModel(httpx.AsyncBaseTransport):
    """Answers OpenAI's chat completions, completions, embeddings and models requests."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.rstrip("/")
        if request.method == "GET" and path.endswith("/models"):
            model = {"id": MODEL, "object": "model", "created": 0, "owned_by": "tokenadmin-demo"}
            return httpx.Response(200, json={"object": "list", "data": [model]})
        if request.method != "POST":
            return _error(405, "Only POST is served here.")
        try:
            body = json.loads(await request.aread())
        except ValueError:
            return _error(400, "The body is not JSON.")
        if not isinstance(body, dict):
            return _error(400, "The body must be a JSON object.")
        if path.endswith("/chat/completions"):
            messages = body.get("messages") or []
            last = next((m.get("content") for m in reversed(messages) if isinstance(m, dict)), "")
            prompt = estimate_messages(messages)
            return _answer(body, "chat.completion", prompt, _reply(last, body))
        if path.endswith("/completions"):
            text = body.get("prompt")
            prompt = estimate_input(text)
            return _answer(body, "text_completion", prompt, _reply(text, body))
        if path.endswith("/embeddings"):
            return _embeddings(body)
        return _error(404, f"The demo model does not serve {path}.")


def _reply(prompt: Any, body: dict[str, Any]) -> list[str]:
    """The answer's words: the preamble, then the prompt's last words, within max_tokens."""
    said = prompt if isinstance(prompt, str) else json.dumps(prompt)
    words = [*PREAMBLE.split(), *said.split()[-ECHOED_WORDS:]]
    cap = body.get("max_completion_tokens") or body.get("max_tokens")
    if not isinstance(cap, int) or cap <= 0:
        return words
    kept: list[str] = []
    for word in words:
        if estimate_tokens(" ".join([*kept, word])) > cap:
            break
        kept.append(word)
    return kept


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _answer(body: dict[str, Any], kind: str, prompt: int, words: list[str]) -> httpx.Response:
    text = " ".join(words)
    completion = estimate_tokens(text)
    ident = f"demo-{uuid.uuid4().hex[:12]}"
    model = str(body.get("model") or MODEL)
    created = int(time.time())
    if body.get("stream"):
        options = body.get("stream_options") or {}
        usage = _usage(prompt, completion) if options.get("include_usage") else None
        stream = _stream(kind, ident, model, created, words, usage)
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=stream)
    if kind == "chat.completion":
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": "stop",
        }
    else:
        choice = {"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}
    answer = {
        "id": ident,
        "object": kind,
        "created": created,
        "model": model,
        "choices": [choice],
        "usage": _usage(prompt, completion),
    }
    return httpx.Response(200, json=answer)


async def _stream(
    kind: str,
    ident: str,
    model: str,
    created: int,
    words: list[str],
    usage: dict[str, int] | None,
) -> AsyncIterator[bytes]:
    chat = kind == "chat.completion"
    chunk_kind = "chat.completion.chunk" if chat else "text_completion"

    def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        chunk = {
            "id": ident,
            "object": chunk_kind,
            "created": created,
            "model": model,
            "choices": choices,
            **extra,
        }
        return f"data: {json.dumps(chunk)}\n\n".encode()

    def piece(text: str | None, finish: str | None, role: bool = False) -> dict[str, Any]:
        if not chat:
            return {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}
        delta: dict[str, Any] = {} if text is None else {"content": text}
        if role:
            delta["role"] = "assistant"
        return {"index": 0, "delta": delta, "finish_reason": finish}

    if chat:
        yield event([piece("", None, role=True)])
    for index, word in enumerate(words):
        yield event([piece(word if index == 0 else f" {word}", None)])
    yield event([piece(None, "stop")])
    if usage is not None:
        yield event([], usage=usage)
    yield b"data: [DONE]\n\n"


def _embeddings(body: dict[str, Any]) -> httpx.Response:
    given = body.get("input")
    inputs = (
        given if isinstance(given, list) and not all(isinstance(i, int) for i in given) else [given]
    )
    data = [
        {"object": "embedding", "index": index, "embedding": _vector(item)}
        for index, item in enumerate(inputs)
    ]
    prompt = estimate_input(given)
    answer = {
        "object": "list",
        "data": data,
        "model": str(body.get("model") or MODEL),
        "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
    }
    return httpx.Response(200, json=answer)


def _vector(item: Any) -> list[float]:
    digest = hashlib.sha256(json.dumps(item).encode()).digest()
    return [round(byte / 255 * 2 - 1, 6) for byte in digest[:DIMENSIONS]]


def _error(status: int, message: str) -> httpx.Response:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": None,
                      "code": None}}  # fmt: skip
    return httpx.Response(status, json=body)
