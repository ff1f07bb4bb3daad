"""The load generators of the benchmarks and what they measure: wrk with a Lua script of
this folder, pgbench with a custom script, a timed loop in this process, and the memory
of the server's processes."""

from __future__ import annotations

import json
import math
import os
import re
import statistics
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.user_table import _percentile

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Plan:
    """How big and how long: the defaults are the recorded run."""

    users: int = 10_000
    seconds: float = 8.0
    connections: int = 64
    threads: int = 2
    drain: float = 3.0  # extra wrk time so requests in flight at the end are answered
    warmup: float = 1.0
    postgres_workers: int = 2
    batch_connections: int = 8  # each request is 1,000 events
    batch_events: int = 1_000
    scenarios: tuple[str, ...] = ("spread", "hot", "over-demand", "batch", "reservations")


@dataclass(frozen=True)
class Timings:
    """What a load generator counted: the operations done and their latencies (ms, sorted)."""

    count: int
    seconds: float
    latencies: list[float]
    failed: int = 0

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies) if self.latencies else 0.0

    @property
    def p99(self) -> float:
        return _percentile(self.latencies, 0.99) if self.latencies else 0.0


# --- wrk ----------------------------------------------------------------------------------


def wrk(
    base: str,
    script: str,
    env: dict[str, str],
    *,
    seconds: float,
    drain: float,
    threads: int,
    connections: int,
) -> dict[str, Any]:
    """wrk with bench/<script> for `seconds` (plus `drain` for the answers still due); the
    counts and latencies its done() printed, and its stderr."""
    run_env = {
        **os.environ,
        **env,
        "LUA_PATH": f"{HERE}/?.lua;;",
        "BENCH_RUN": uuid.uuid4().hex[:12],
        "BENCH_SECONDS": str(seconds),
    }
    command = [
        "wrk", f"-t{threads}", f"-c{connections}", f"-d{math.ceil(seconds + drain)}s",
        "--timeout", "30s", "-s", str(HERE / script), base,
    ]  # fmt: skip
    answer = subprocess.run(
        command, env=run_env, capture_output=True, text=True, timeout=seconds + drain + 60
    )
    line = next((x for x in answer.stdout.splitlines() if x.startswith("BENCH ")), None)
    if answer.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({answer.returncode}): {answer.stdout}{answer.stderr}")
    figures: dict[str, Any] = json.loads(line.removeprefix("BENCH "))
    figures["stderr"] = answer.stderr.strip()
    return figures


def wrk_problems(figures: dict[str, Any], answered: int) -> list[str]:
    """What went wrong in a wrk run: requests sent but not answered, unexpected answers."""
    problems = []
    if figures["sent"] != answered:
        problems.append(f"{figures['sent'] - answered} requests sent but not answered")
    if figures["other"] or figures["socket_errors"]:
        problems.append(
            f"{figures['other']} unexpected answers, {figures['socket_errors']} socket errors"
            f" {figures['stderr'][:300]}"
        )
    return problems


# --- pgbench ------------------------------------------------------------------------------


def pgbench(
    url: str,
    script: str,
    variables: dict[str, object],
    *,
    clients: int,
    threads: int,
    seconds: float,
    workdir: Path,
) -> Timings:
    """pgbench -M prepared running `script` with `clients` clients."""
    name = f"pgbench-{uuid.uuid4().hex[:8]}"
    script_file = workdir / f"{name}.sql"
    script_file.write_text(script)
    logs = workdir / name
    logs.mkdir()
    defines = [part for key, value in variables.items() for part in ("-D", f"{key}={value}")]
    command = [
        "pgbench", "--no-vacuum", "-M", "prepared",
        "-c", str(clients), "-j", str(threads), "-T", str(math.ceil(seconds)),
        "-f", str(script_file), *defines, "-l", "--log-prefix", str(logs / "tx"), url,
    ]  # fmt: skip
    answer = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + 120, cwd=workdir
    )
    if answer.returncode != 0:
        raise RuntimeError(f"pgbench failed: {answer.stderr[-1500:]}")
    output = answer.stdout
    processed = int(_field(r"number of transactions actually processed: (\d+)", output))
    tps = float(_field(r"tps = ([\d.]+) \(without initial connection time\)", output))
    latencies: list[float] = []
    failed = 0
    for log in logs.iterdir():
        for line in log.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[2].isdigit():
                latencies.append(int(parts[2]) / 1000)
            else:
                failed += 1
    return Timings(processed, processed / tps if tps else seconds, sorted(latencies), failed)


def _field(pattern: str, output: str) -> str:
    match = re.search(pattern, output)
    if match is None:
        raise RuntimeError(f"no {pattern!r} in pgbench's output:\n{output}")
    return match.group(1)


# --- a loop in this process ---------------------------------------------------------------


def timed_loop(step: Callable[[], None], seconds: float) -> Timings:
    """Run `step` again and again for `seconds`, timing each."""
    latencies: list[float] = []
    started = time.perf_counter()
    deadline = started + seconds
    while (now := time.perf_counter()) < deadline:
        step()
        latencies.append((time.perf_counter() - now) * 1000)
    return Timings(len(latencies), time.perf_counter() - started, sorted(latencies))


# --- the server's memory ------------------------------------------------------------------


def _descendants(pid: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(parents.get(current, []))
    return found


@dataclass(frozen=True)
class Memory:
    """RSS and peak RSS (VmHWM) of each of the server's processes, in MB."""

    rss: list[float]
    peak: list[float]

    def __str__(self) -> str:
        return " + ".join(f"{r:.0f}" for r in self.rss) + f" (peak {max(self.peak):.0f})"


def server_memory(pid: int) -> Memory:
    """The memory of the server and of each of its worker processes."""
    rss, peak = [], []
    for process in sorted(_descendants(pid)):
        try:
            status = Path(f"/proc/{process}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        rss.append(int(fields.get("VmRSS", "0 kB").split()[0]) / 1024)
        peak.append(int(fields.get("VmHWM", "0 kB").split()[0]) / 1024)
    return Memory(rss, peak)
