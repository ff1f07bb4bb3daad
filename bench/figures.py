"""What a benchmark run measured, how it is checked for exactness, and how it is shown."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import UTC, datetime

from bench.data import Trace
from bench.load import Memory, Timings
from bench.user_table import RESULTS


@dataclass
class Result:
    database: str
    scenario: str
    system: str
    answered: int  # operations (requests, events or pairs) answered in the measured time
    accepted: int
    seconds: float
    p50_ms: float
    p99_ms: float
    exact: bool
    exactness: str
    unit: str = "requests"
    memory: Memory | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def per_second(self) -> float:
        return self.answered / self.seconds if self.seconds else 0.0

    @property
    def is_limit(self) -> bool:
        return self.system.startswith("limit")

    @property
    def rate(self) -> str:
        return f"{self.per_second:,.0f} {self.unit}/s"


def limit_result(
    database: str, scenario: str, system: str, timings: Timings, exactness: tuple[bool, str]
) -> Result:
    """A limit's figures: every operation it counted was accepted."""
    exact, text = exactness
    if timings.failed:
        exact, text = False, f"{timings.failed} failed transactions; {text}"
    return Result(
        database,
        scenario,
        system,
        timings.count,
        timings.count,
        timings.seconds,
        timings.p50,
        timings.p99,
        exact,
        text,
        unit="pairs" if scenario == "reservations" else "requests",
    )


def grew_by(before: int, after: int, accepted: int, tokens: int) -> tuple[bool, str]:
    """Whether the tokens used grew by exactly the accepted operations times their tokens."""
    expected = accepted * tokens
    grew = after - before
    if grew == expected:
        return True, f"used grew {grew:,} = {accepted:,} accepted × {tokens}"
    return False, f"used grew {grew:,} but {accepted:,} accepted × {tokens} = {expected:,}"


def reconcile(
    grew: int,
    tokens: int,
    answered: int,
    trace: Trace,
    *,
    statuses: tuple[int, ...],
    actions: tuple[str, ...],
    unanswered: int,
    per_request: int = 1,
    what: str = "accepted",
) -> tuple[bool, str]:
    """Whether the tokens used grew by exactly the operations the database committed, each
    once: the accepted answers the client counted, plus those the server committed whose
    answer never came (a request unanswered within wrk's timeout: a timeout, never an
    inexactness). The committed operations are read from the database: the idempotency
    records of the run's keys with an accepting status (one per key) and the journal
    entries written meanwhile (one per operation). Exact when used grew = recorded ×
    tokens, the journal has one entry per recorded operation, and the operations committed
    but unanswered are no more than the unanswered requests could hold."""
    recorded = trace.recorded(*statuses)
    journal = sum(trace.entries.get(action, 0) for action in actions)
    late = recorded - answered
    if late == 0:
        text = f"used grew {grew:,} = {answered:,} {what} × {tokens}"
    else:
        text = (
            f"used grew {grew:,} = ({answered:,} {what} + {late:,} committed but unanswered)"
            f" × {tokens}"
        )
    problems = []
    if grew != recorded * tokens:
        problems.append(f"used grew {grew:,} but {recorded:,} recorded × {tokens}")
    if journal != recorded:
        problems.append(f"{journal:,} journal entries for {recorded:,} recorded")
    if late < 0:
        problems.append(f"{-late:,} answered {what} but not recorded")
    if late > unanswered * per_request:
        problems.append(f"{late:,} committed but unanswered, from {unanswered:,} requests")
    if problems:
        counted = (
            f"{answered:,} {what} answered, {recorded:,} recorded, {journal:,} journal entries,"
            f" {unanswered:,} requests unanswered"
        )
        return False, "; ".join(problems) + f" ({counted})"
    return True, f"{text}; {recorded:,} recorded under their keys, {journal:,} journal entries"


def unanswered_note(unanswered: int, timeout: float) -> list[str]:
    """A note of the requests wrk sent and got no answer to (not an inexactness)."""
    if not unanswered:
        return []
    return [f"{unanswered:,} requests unanswered within wrk's timeout of {timeout:g} s"]


def show(result: Result) -> Result:
    """Print one result as it comes."""
    print(
        f"  {result.scenario:12} {result.system:38} {result.rate:>18}"
        f"  p50 {result.p50_ms:7.1f}  p99 {result.p99_ms:7.1f} ms"
        + (f"  RSS MB {result.memory}" if result.memory else "")
        + f"  exact: {'yes' if result.exact else 'NO'} ({result.exactness})"
        + "".join(f"; {note}" for note in result.notes),
        flush=True,
    )
    return result


def heading(title: str, code: str) -> str:
    """A RESULTS.md heading: what, when, which commit (as `_state_of_the_code` found it at the
    start), how
    many cores."""
    return (
        f"## {title}: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, commit {code},"
        f" {os.cpu_count() or 0} cores"
    )


def yes_no(met: bool) -> str:
    return "yes" if met else "**no**"


def append_to_results(lines: list[str]) -> None:
    """Append a table and its text to bench/RESULTS.md."""
    with RESULTS.open("a") as results_file:
        results_file.write("\n".join(lines))
