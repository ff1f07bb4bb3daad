"""Benchmark: the gateway's overhead per request, against the upstream called directly.

    .venv/bin/python -m bench.gateway [--quick] [--databases sqlite,postgresql]
                                      [--seconds 5] [--concurrency 16] [--no-record]

For each database it makes a throwaway one, seeds an organization, a member with a
personal key and a model whose upstream is a fake OpenAI-compatible server (a process of
its own, answering every chat completion at once, with its usage). Then, in the same run
and with the same client (httpx, `--concurrency` requests in flight, on loopback), it sends
non-streamed chat completions for `--seconds` each, after a warm-up:

- directly to the fake upstream;
- through tokenadmin's gateway (one server process): each request reserved, forwarded,
  and committed at the model's rates, so two metering transactions a request.

It reports both requests/s and latency p50/p99, and the gateway's added latency (gateway
minus direct, at p50 and p99). Exactness: the member's used tokens must equal the answered
requests times their charge, nothing left reserved, and `tokenadmin verify` clean.
Bounded in time, loopback only; results are appended to bench/RESULTS.md (not with
--quick or --no-record).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from sqlalchemy import select

from bench.data import _with_database, add_users, create_organization, verify
from bench.figures import append_to_results, heading, yes_no
from bench.user_table import _free_port, _state_of_the_code, _throwaway_database, server
from tokenadmin.act import Act
from tokenadmin.api_key import service as api_key_service
from tokenadmin.catalog import service as catalog
from tokenadmin.migrate import upgrade
from tokenadmin.models import User

MODEL = "bench-model"
PROMPT_TOKENS = 12
COMPLETION_TOKENS = 3
CHARGE = PROMPT_TOKENS + COMPLETION_TOKENS  # rates 1 and 1
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 16}
ALLOWANCE = 10_000_000_000


# --- the fake upstream, a process of its own ----------------------------------------------


def upstream_app() -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    usage = {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": COMPLETION_TOKENS,
        "total_tokens": CHARGE,
    }

    async def chat(request: Request) -> JSONResponse:
        body = await request.json()
        message = {"role": "assistant", "content": "pong"}
        return JSONResponse(
            {
                "id": "bench",
                "object": "chat.completion",
                "created": 0,
                "model": body.get("model"),
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": usage,
            }
        )

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


@contextmanager
def fake_upstream(timeout: float = 30) -> Iterator[str]:
    port = _free_port()
    command = [
        sys.executable, "-m", "uvicorn", "bench.gateway:upstream_app", "--factory",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
    ]  # fmt: skip
    process = subprocess.Popen(command)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the fake upstream exited with {process.returncode}")
            try:
                httpx.post(f"{base}/chat/completions", json=BODY, timeout=1).raise_for_status()
                break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("the fake upstream did not start")
            time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=15)


# --- data ---------------------------------------------------------------------------------


def seed(url: str, upstream: str) -> tuple[uuid.UUID, str]:
    """A member with a personal key, and the model routed to the fake upstream."""
    seeded = create_organization(url, "Bench Gateway", ALLOWANCE * 2)
    add_users(url, seeded.org_id, 1, max_tokens=ALLOWANCE, prefix="member")

    async def work(session: Any) -> tuple[uuid.UUID, str]:
        act = Act("bench", datetime.now(UTC))
        await catalog.set_model(
            session,
            act,
            None,
            MODEL,
            prompt_rate="1",
            completion_rate="1",
            upstream_base_url=upstream,
        )
        member = await session.scalar(select(User).where(User.org_id == seeded.org_id))
        _, secret = await api_key_service.create_personal(session, act, member, name="bench")
        return member.id, secret

    return asyncio.run(_with_database(url, lambda db: db.write(work)))


def used_and_reserved(url: str, user_id: uuid.UUID) -> tuple[int, int]:
    async def read(session: Any) -> tuple[int, int]:
        member = await session.get(User, user_id)
        return member.inference_used, member.inference_reserved

    return asyncio.run(_with_database(url, lambda db: db.read(read)))


# --- load ---------------------------------------------------------------------------------


@dataclass
class Load:
    name: str
    answered: int
    failed: int
    seconds: float
    latencies_ms: list[float]

    @property
    def per_second(self) -> float:
        return self.answered / self.seconds

    def percentile(self, share: float) -> float:
        ordered = sorted(self.latencies_ms)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def _drive(url: str, headers: dict[str, str], seconds: float, concurrency: int) -> Load:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    latencies: list[float] = []
    failed = 0
    async with httpx.AsyncClient(limits=limits, timeout=30, headers=headers) as http:
        end = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal failed
            while time.perf_counter() < end:
                started = time.perf_counter()
                response = await http.post(url, json=BODY)
                if response.status_code == 200:
                    latencies.append((time.perf_counter() - started) * 1000)
                else:
                    failed += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return Load(url, len(latencies), failed, elapsed, latencies)


def drive(
    url: str, headers: dict[str, str], seconds: float, concurrency: int, warmup: float
) -> Load:
    asyncio.run(_drive(url, headers, warmup, concurrency))
    return asyncio.run(_drive(url, headers, seconds, concurrency))


# --- one database -------------------------------------------------------------------------


@dataclass
class Run:
    database: str
    direct: Load
    gateway: Load
    exact: bool
    exact_note: str
    verify_clean: bool
    verify_summary: str


def run_database(kind: str, seconds: float, concurrency: int, postgres_admin_url: str) -> Run:
    warmup = min(2.0, seconds / 2)
    with fake_upstream() as upstream, _throwaway_database(kind, postgres_admin_url) as url:
        upgrade(url)
        user_id, key = seed(url, upstream)
        direct = drive(f"{upstream}/chat/completions", {}, seconds, concurrency, warmup)
        with server(url, workers=1) as (base, _pid):
            headers = {"authorization": f"Bearer {key}"}
            through = f"{base}/openai/v1/chat/completions"
            # The warm-up's requests are metered too: counted from the used tokens before.
            asyncio.run(_drive(through, headers, warmup, concurrency))
            before, _ = used_and_reserved(url, user_id)
            gateway = asyncio.run(_drive(through, headers, seconds, concurrency))
        used, reserved = used_and_reserved(url, user_id)
        expected = before + gateway.answered * CHARGE
        exact = used == expected and reserved == 0 and gateway.failed == 0
        note = (
            f"used grew by {used - before:,} = {gateway.answered:,} × {CHARGE}, reserved {reserved}"
        )
        clean, summary = verify(url)
    return Run(kind, direct, gateway, exact, note, clean, summary)


def _row(run: Run, load: Load, what: str, added: tuple[float, float] | None) -> str:
    p50, p99 = load.percentile(0.5), load.percentile(0.99)
    added_text = "" if added is None else f"{added[0]:.1f} | {added[1]:.1f}"
    if added is None:
        added_text = " | "
    return (
        f"| {run.database} | {what} | {load.answered:,} | {load.per_second:,.0f} |"
        f" {p50:.1f} | {p99:.1f} | {added_text} |"
    )


def show(run: Run) -> None:
    for name, load in (("direct", run.direct), ("gateway", run.gateway)):
        print(
            f"{run.database} {name}: {load.per_second:,.0f} req/s, p50"
            f" {load.percentile(0.5):.1f} ms, p99 {load.percentile(0.99):.1f} ms,"
            f" {load.failed} failed",
            flush=True,
        )
    print(f"{run.database}: exact {run.exact} ({run.exact_note}); verify {run.verify_summary}")


def record(runs: list[Run], code: str, seconds: float, concurrency: int) -> None:
    lines = [
        "",
        heading("Gateway overhead", code),
        "",
        f"`python -m bench.gateway`: non-streamed chat completions, {concurrency} in flight"
        f" from one httpx client, {seconds:g} s each after a warm-up, on loopback; the fake"
        " upstream (a uvicorn process) answers at once. Direct: the client calls the fake"
        " upstream. Gateway: the client calls /openai/v1 of one tokenadmin process, which"
        " reserves, forwards and commits each request. Added latency = gateway − direct, at"
        " the same percentile.",
        "",
        "| database | path | requests | requests/s | p50 ms | p99 ms | added p50 ms"
        " | added p99 ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        added = (
            run.gateway.percentile(0.5) - run.direct.percentile(0.5),
            run.gateway.percentile(0.99) - run.direct.percentile(0.99),
        )
        lines.append(_row(run, run.direct, "fake upstream, direct", None))
        lines.append(_row(run, run.gateway, "through the gateway", added))
    lines.append("")
    for run in runs:
        lines.append(
            f"- {run.database}: exact {yes_no(run.exact)} ({run.exact_note}); verify"
            f" {yes_no(run.verify_clean)} ({run.verify_summary})."
        )
    lines.append("")
    append_to_results(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--quick", action="store_true", help="1 s each, nothing recorded")
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument(
        "--postgres-admin-url",
        default=os.environ.get(
            "TOKENADMIN_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    arguments, _ = parser.parse_known_args()  # BENCH_ARGS may hold bench.metering's too
    seconds = 1.0 if arguments.quick else arguments.seconds
    code = _state_of_the_code()
    runs = []
    for kind in arguments.databases.split(","):
        run = run_database(
            kind.strip(), seconds, arguments.concurrency, arguments.postgres_admin_url
        )
        show(run)
        runs.append(run)
    if not (arguments.quick or arguments.no_record):
        record(runs, code, seconds, arguments.concurrency)
    if not all(run.exact and run.verify_clean for run in runs):
        sys.exit(1)


if __name__ == "__main__":
    main()
