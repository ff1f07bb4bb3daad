"""Issue 14's targets, each beside the figure one `make bench` run measured: the table
RESULTS.md gets after the metering, growth and administration tables of the same run."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bench import admin, batch, growth
from bench.figures import Result, append_to_results, heading, yes_no

MEMORY_TARGET_MB = 150
P99_TARGET_MS = 25.0
RATIO_TARGETS = {  # API ÷ its limit, by database and scenario
    ("postgresql", "spread"): 1.0,
    ("postgresql", "hot"): 3.0,
    ("sqlite", "spread"): 0.8,
}
BEFORE = {  # the "now" (same-run, quiet machine), for comparison
    "spread ratio postgresql": "0.30",
    "spread ratio sqlite": "0.22–0.44",
    "hot ratio postgresql": "1.33",
    "p99 postgresql": "174 ms",
    "batch": "0.9k–3.9k",
    "allowance": "2.4 s",
    "verify": "33 s",
    "memory": "≤ 122 MB",
}


@dataclass(frozen=True)
class Row:
    figure: str
    database: str
    measured: str
    target: str
    met: bool | None  # None: not measured
    before: str = ""

    def line(self) -> str:
        met = "not measured" if self.met is None else yes_no(self.met)
        return (
            f"| {self.figure} | {self.database} | {self.measured} | {self.target} | {met}"
            f" | {self.before} |"
        )


def _find(results: Sequence[Result], scenario: str, limit: bool) -> Result | None:
    return next((r for r in results if r.scenario == scenario and r.is_limit == limit), None)


def _ratio_row(database: str, scenario: str, results: Sequence[Result]) -> Row:
    target = RATIO_TARGETS[(database, scenario)]
    limit_name = "pgbench" if database == "postgresql" else "bare sqlite3 loop"
    api, limit = _find(results, scenario, False), _find(results, scenario, True)
    figure = f"{scenario}, API ÷ {limit_name}"
    before = BEFORE.get(f"{scenario} ratio {database}", "")
    if api is None or limit is None or not limit.per_second:
        return Row(figure, database, "", f"≥ {target:.1f}", None, before)
    ratio = api.per_second / limit.per_second
    measured = (
        f"{ratio:.2f} ({api.per_second:,.0f} ÷ {limit.per_second:,.0f} {api.unit}/s; {api.system})"
    )
    return Row(figure, database, measured, f"≥ {target:.1f}", ratio >= target, before)


def _p99_row(database: str, results: Sequence[Result], connections: int) -> Row:
    api = _find(results, "spread", False)
    figure = f"spread p99 at {connections} connections"
    before = BEFORE.get(f"p99 {database}", "")
    if api is None:
        return Row(figure, database, "", f"≤ {P99_TARGET_MS:g} ms", None, before)
    measured = f"{api.p99_ms:.1f} ms (p50 {api.p50_ms:.1f})"
    return Row(
        figure, database, measured, f"≤ {P99_TARGET_MS:g} ms", api.p99_ms <= P99_TARGET_MS, before
    )


def _batch_row(database: str, results: Sequence[Result]) -> Row:
    result = _find(results, "batch", False)
    target = batch.TARGET_EVENTS_PER_SECOND
    figure = "batch, events/s"
    if result is None:
        return Row(figure, database, "", f"≥ {target:,}", None, BEFORE["batch"])
    measured = f"{result.per_second:,.0f} (p99 {result.p99_ms:,.0f} ms a request)"
    return Row(
        figure, database, measured, f"≥ {target:,}", result.per_second >= target, BEFORE["batch"]
    )


def _flat_row(run: growth.GrowthRun | None, database: str) -> Row:
    target = batch.TARGET_EVENTS_PER_SECOND
    figure = "batch as the journal grows"
    wanted = f"each size ≥ {target:,} and ≥ {growth.FLAT:g}× the first (median round)"
    rounds = growth.batch_rounds(run) if run is not None else []
    flat = growth.flatness(run) if run is not None else None
    if flat is None:
        return Row(figure, database, "", wanted, None, "2,371 → 872 over three rounds")
    measured = (
        " → ".join(f"{r.per_second:,.0f}" for _, r in rounds)
        + " events/s at "
        + ", ".join(f"{rows:,}" for rows, _ in rounds)
        + f" journal rows (slowest ÷ first {flat:.2f})"
    )
    met = flat >= growth.FLAT and all(r.per_second >= target for _, r in rounds)
    return Row(figure, database, measured, wanted, met, "2,371 → 872 over three rounds")


def _step_row(
    run: admin.AdminRun | None,
    database: str,
    figure: str,
    pick: Callable[[admin.Step], bool],
    before: str,
) -> Row:
    step = next((s for s in run.steps if pick(s)), None) if run is not None else None
    if step is None or step.target_seconds is None:
        return Row(figure, database, "", "", None, before)
    if not step.entries:
        figure = step.what  # the allowance change, of as many users as this run changed
    target = f"≤ {step.target_seconds:g} s"
    if step.entries:
        measured = f"{step.per_million:.1f} s ({step.seconds:.1f} s for {step.entries:,} entries)"
    else:
        measured = f"{step.seconds:.2f} s"
    if not step.ok:
        measured += " (**not done**: " + step.detail + ")"
    return Row(figure, database, measured, target, bool(step.met) and step.ok, before)


def _memory_row(database: str, results: Sequence[Result]) -> Row:
    peaks = [max(r.memory.peak) for r in results if r.memory is not None and r.memory.peak]
    figure = "memory per process (peak RSS)"
    if not peaks:
        return Row(figure, database, "", f"≤ {MEMORY_TARGET_MB} MB", None, BEFORE["memory"])
    peak = max(peaks)
    return Row(
        figure,
        database,
        f"{peak:.0f} MB",
        f"≤ {MEMORY_TARGET_MB} MB",
        peak <= MEMORY_TARGET_MB,
        BEFORE["memory"],
    )


def rows(
    metering: dict[str, list[Result]],
    at_scale: dict[str, growth.RunAtScale],
    connections: int,
) -> list[Row]:
    """Every target of the issue, for each database the run measured (by database: the
    metering part's results, the growth and administration part's run)."""
    databases = list(dict.fromkeys([*metering, *at_scale]))
    found: list[Row] = []
    if "postgresql" in databases:
        found.append(_ratio_row("postgresql", "spread", metering.get("postgresql", [])))
    found += [_p99_row(d, metering.get(d, []), connections) for d in databases]
    if "postgresql" in databases:
        found.append(_ratio_row("postgresql", "hot", metering.get("postgresql", [])))
    if "sqlite" in databases:
        found.append(_ratio_row("sqlite", "spread", metering.get("sqlite", [])))
    found += [_batch_row(d, metering.get(d, [])) for d in databases]
    found += [_flat_row(at_scale[d].growth if d in at_scale else None, d) for d in databases]
    for d in databases:
        run = at_scale[d].admin if d in at_scale else None
        found.append(
            _step_row(
                run,
                d,
                "allowance change of 10,000 users",
                lambda s: s.how.startswith("POST"),
                BEFORE["allowance"],
            )
        )
    for d in databases:
        run = at_scale[d].admin if d in at_scale else None
        found.append(
            _step_row(
                run, d, "verify per 1,000,000 entries", lambda s: s.entries > 0, BEFORE["verify"]
            )
        )
    for d in databases:
        results = list(metering.get(d, []))
        if d in at_scale:
            for point in at_scale[d].growth.points:
                results += [point.api] + ([point.batch] if point.batch else [])
        found.append(_memory_row(d, results))
    return found


def table(found: list[Row]) -> list[str]:
    return [
        "| figure | database | measured | target | met | before (issue 14) |",
        "|---|---|---|---|---|---|",
        *(row.line() for row in found),
    ]


def record(found: list[Row], code: str, exact: bool, load: tuple[float, float]) -> None:
    met = sum(1 for row in found if row.met)
    measured = sum(1 for row in found if row.met is not None)
    lines = [
        "",
        heading("Issue 14 targets", code),
        "",
        "From the metering, growth and administration tables of this run above (one"
        " `make bench`, every figure measured side by side on the same machine; load"
        f" average (1 min) {load[0]:.1f} at the start, {load[1]:.1f} at the end). Ratios are"
        " the API against the bare work in the same schema (pgbench; a bare sqlite3 loop);"
        " the 10,000-user change and verify are the client's wall-clock time (verify's"
        " includes the interpreter's start). \"before\" is the issue's own figure.",
        "",
        *table(found),
        "",
        f"Met: {met} of {measured} measured."
        + (
            " Every run exact, verify clean."
            if exact
            else " **An exactness check or verify failed: see the tables above.**"
        ),
        "",
    ]
    append_to_results(lines)
