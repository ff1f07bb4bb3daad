"""POST /v1/usage/batch under load: 1,000 events a request, each its own idempotency key,
a random seeded user and 1 token. Measured in events a second (target, issue 14: 15,000 on
both databases, flat as the journal grows: bench/growth.py); latency is per request (per
batch)."""

from __future__ import annotations

from bench.data import Seeded, balances, journal_mark, settled, trace
from bench.figures import Result, reconcile, unanswered_note
from bench.load import Plan, server_memory, split_midway, unanswered, wrk, wrk_problems
from bench.usage import TOKENS, api_system, wrk_env

TARGET_EVENTS_PER_SECOND = 15_000


def api_run(
    seeded: Seeded, database: str, plan: Plan, base: str, pid: int, *, scenario: str = "batch"
) -> Result:
    """Batches through wrk and batch.lua for `plan.seconds`. Exact when the tokens used grew
    by exactly the events the server accepted, each once (`figures.reconcile`: the events
    the answers accepted, and those of a batch committed but unanswered within the timeout),
    and every event answered was accepted (the allowances are far from running out)."""
    before = balances(seeded.url, "user").used
    mark = journal_mark(seeded.url)
    timer, split = split_midway(pid, base, plan.seconds)
    figures = wrk(
        base,
        "batch.lua",
        {**wrk_env(seeded, "user", plan.users, TOKENS), "BENCH_EVENTS": str(plan.batch_events)},
        seconds=plan.seconds,
        timeout=plan.timeout,
        threads=min(plan.threads, plan.batch_connections),
        connections=plan.batch_connections,
    )
    timer.cancel()
    answered = figures["batches"] + figures["other"]
    problems = wrk_problems(figures, answered)
    missing = unanswered(figures, answered)
    after = (settled if missing else balances)(seeded.url, "user").used
    accepted, refused = figures["accepted"], figures["refused"]
    exact, exactness = reconcile(
        after - before,
        TOKENS,
        accepted,
        trace(seeded.url, seeded.org_id, figures["run"], mark),
        statuses=(200,),
        actions=("usage",),
        unanswered=missing,
        per_request=plan.batch_events,
        what="events accepted",
    )
    answered_events = figures["batches"] * plan.batch_events
    everything = accepted == answered_events and refused == 0
    exactness += (
        f"; {accepted:,} of the {answered_events:,} events answered accepted, {refused:,} refused"
    )
    return Result(
        database,
        scenario,
        api_system(database, plan) + f", {plan.batch_connections} connections",
        accepted + refused,
        accepted,
        figures["seconds"],
        figures["p50_us"] / 1000,
        figures["p99_us"] / 1000,
        exact and everything and not problems,
        exactness,
        unit="events",
        memory=server_memory(pid),
        notes=problems + unanswered_note(missing, plan.timeout) + _split_note(split),
    )


def _split_note(split: list[list[int]]) -> list[str]:
    """The connections per server process halfway through, where there are several."""
    if not split or len(split[0]) < 2:
        return []
    return ["connections per server process halfway: " + " + ".join(map(str, split[0]))]
