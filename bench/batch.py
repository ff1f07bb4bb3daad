"""POST /v1/usage/batch under load: 1,000 events a request, each its own idempotency key,
a random seeded user and 1 token. Measured in events a second (target: 50,000); latency
is per request (per batch)."""

from __future__ import annotations

from bench.data import Seeded, balances
from bench.figures import Result, grew_by
from bench.load import Plan, server_memory, wrk, wrk_problems
from bench.usage import TOKENS, api_system, wrk_env

TARGET_EVENTS_PER_SECOND = 50_000


def api_run(seeded: Seeded, database: str, plan: Plan, base: str, pid: int) -> Result:
    """Batches through wrk and batch.lua for `plan.seconds`. Exact when the tokens used grew
    by exactly the events the answers accepted, and every event sent was accepted (the
    allowances are far from running out)."""
    before = balances(seeded.url, "user").used
    figures = wrk(
        base,
        "batch.lua",
        {**wrk_env(seeded, "user", plan.users, TOKENS), "BENCH_EVENTS": str(plan.batch_events)},
        seconds=plan.seconds,
        drain=plan.drain,
        threads=min(plan.threads, plan.batch_connections),
        connections=plan.batch_connections,
    )
    after = balances(seeded.url, "user").used
    notes = wrk_problems(figures, figures["batches"] + figures["other"])
    accepted, refused = figures["accepted"], figures["refused"]
    exact, exactness = grew_by(before, after, accepted, TOKENS)
    sent_events = figures["sent"] * plan.batch_events
    everything = accepted == sent_events and refused == 0
    exactness += f"; {accepted:,} of {sent_events:,} events accepted, {refused:,} refused"
    return Result(
        database,
        "batch",
        api_system(database, plan) + f", {plan.batch_connections} connections",
        accepted + refused,
        accepted,
        figures["seconds"],
        figures["p50_us"] / 1000,
        figures["p99_us"] / 1000,
        exact and everything and not notes,
        exactness,
        unit="events",
        memory=server_memory(pid),
        notes=notes,
    )
