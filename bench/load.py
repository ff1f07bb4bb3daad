"""The load generators of the benchmarks and what they measure: wrk with a Lua script of
this folder, pgbench with a custom script, a timed loop in this process, and the memory
of the server's processes."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import statistics
import subprocess
import threading
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
    # The longest a request may take (wrk's --timeout: a slower answer would leave wrk's
    # latencies) and how long wrk waits, after the last request is sent, for the answers
    # still due; it is stopped as soon as they are all in (bench_wrk.lua).
    timeout: float = 30.0
    warmup: float = 1.0
    postgres_workers: int = 2
    batch_connections: int = 8  # each request is 1,000 events
    batch_events: int = 1_000
    scenarios: tuple[str, ...] = (
        "spread", "hot", "over-demand", "batch", "reservations", "binding",
    )  # fmt: skip


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
    timeout: float,
    threads: int,
    connections: int,
) -> dict[str, Any]:
    """wrk with bench/<script>, sending for `seconds`, then waiting for the answers still
    due: at most `timeout` (its --timeout too, above the slowest request), and no longer
    than until every thread says it has all its answers ("BENCH-DRAINED", then SIGINT: wrk
    stops and reports). The counts and latencies its done() printed ("run": the run's id,
    the prefix of every idempotency key sent), its stderr, and whether it was stopped
    early ("drained")."""
    run = uuid.uuid4().hex[:12]
    run_env = {
        **os.environ,
        **env,
        "LUA_PATH": f"{HERE}/?.lua;;",
        "BENCH_RUN": run,
        "BENCH_SECONDS": str(seconds),
    }
    # wrk checks timeouts every 2 s; -d leaves room for a request sent at the cutoff.
    duration = math.ceil(seconds + timeout + 2)
    command = [
        "wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s",
        "--timeout", f"{math.ceil(timeout)}s", "-s", str(HERE / script), base,
    ]  # fmt: skip
    drained: set[str] = set()
    messages = []
    with subprocess.Popen(
        command, env=run_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        guard = threading.Timer(duration + 60, process.kill)
        guard.start()
        try:
            assert process.stderr is not None
            assert process.stdout is not None
            for said in process.stderr:
                if said.startswith("BENCH-DRAINED "):
                    drained.add(said.split()[1])
                    if len(drained) == threads:
                        process.send_signal(signal.SIGINT)
                else:
                    messages.append(said)
            stdout = process.stdout.read()
            returncode = process.wait()
        finally:
            guard.cancel()
            if process.poll() is None:
                process.kill()
    line = next((x for x in stdout.splitlines() if x.startswith("BENCH ")), None)
    if returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({returncode}): {stdout}{''.join(messages)}")
    figures: dict[str, Any] = json.loads(line.removeprefix("BENCH "))
    figures["stderr"] = "".join(messages).strip()
    figures["run"] = run
    figures["drained"] = len(drained) == threads
    figures["timeout"] = timeout
    return figures


def unanswered(figures: dict[str, Any], answered: int) -> int:
    """The requests wrk sent and got no answer to within the timeout."""
    return max(0, int(figures["sent"]) - answered)


def wrk_problems(figures: dict[str, Any], answered: int) -> list[str]:
    """What went wrong in a wrk run: unexpected answers, socket errors. A request sent and
    not answered within the timeout is not one of them: the server may have committed it,
    which the exactness checks count (`figures.reconcile`)."""
    problems = []
    if figures["other"] or figures["socket_errors"]:
        problems.append(
            f"{figures['other']} unexpected answers, {figures['socket_errors']} socket errors"
            f" {figures['stderr'][:300]}"
        )
    if answered > figures["sent"]:
        problems.append(f"{answered - figures['sent']} answers more than the requests sent")
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
    for attempt in range(3):
        answer = subprocess.run(
            command, capture_output=True, text=True, timeout=seconds + 120, cwd=workdir
        )
        # pgbench connects every client before its first transaction: a server with no
        # connection slot left (other work on a shared machine) ran nothing; try again.
        if answer.returncode == 0 or "too many clients" not in answer.stderr or attempt == 2:
            break
        print("  (pgbench: too many clients on the server; again in 5 s)", flush=True)
        for log in logs.iterdir():
            log.unlink()
        time.sleep(5)
    if answer.returncode != 0:
        raise RuntimeError(f"pgbench failed: {answer.stderr[-1500:]}")
    output = answer.stdout
    processed = int(_field(r"number of transactions actually processed: (\d+)", output))
    # No tps line when nothing was processed (64 clients still connecting on a loaded
    # machine): 0 transactions, which the tables show as such.
    found = re.search(r"tps = ([\d.]+) \(without initial connection time\)", output)
    tps = float(found.group(1)) if found else 0.0
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


# --- the server's connections -------------------------------------------------------------


def connection_split(pid: int, port: int) -> list[int]:
    """How many of the established connections to `port` each of the server's processes
    holds, most first: uvicorn's workers (its spawned processes), or the server itself when
    it runs alone. The workers accept from one shared socket, and a client's connections
    opened at once can all land in one of them (docs/SCALING.md)."""
    established: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                established.add(f"socket:[{fields[9]}]")
    workers = [p for p in _descendants(pid) if p != pid and _spawned(p)] or [pid]
    split = []
    for worker in workers:
        try:
            links = [os.readlink(fd) for fd in Path(f"/proc/{worker}/fd").iterdir()]
        except OSError:
            continue
        split.append(sum(1 for link in links if link in established))
    return sorted(split, reverse=True)


def _spawned(pid: int) -> bool:
    try:
        return b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def split_midway(pid: int, base: str, seconds: float) -> tuple[threading.Timer, list[list[int]]]:
    """A timer, started, that reads `connection_split` halfway through a run of `seconds`
    into the list returned with it."""
    port = int(base.rsplit(":", 1)[1])
    found: list[list[int]] = []
    timer = threading.Timer(seconds / 2, lambda: found.append(connection_split(pid, port)))
    timer.start()
    return timer, found
