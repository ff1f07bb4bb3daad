"""Real processes for multi-process tests: `tokenadmin` servers (which crash tests kill and
start again) and a private PostgreSQL cluster (which crash tests stop as a crash would)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx
import pytest

WHOLE_MACHINE = pytest.mark.xdist_group("whole_machine")
"""For tests that load every core (several server processes under load, crashes, the
benchmark's smoke run): under pytest-xdist (`make test`, --dist loadgroup) they all run in
one worker, one after another, so two of them never compete for the machine (and for the
PostgreSQL server's connections)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def server_environment(database_url: str, more: dict[str, str] | None = None) -> dict[str, str]:
    """A test server's environment: this process's, its database, a sweep every second."""
    return {
        **os.environ,
        "TOKENADMIN_DATABASE_URL": database_url,
        "TOKENADMIN_SWEEP_INTERVAL_SECONDS": "1",
        "TOKENADMIN_LOG_LEVEL": "warning",
        **(more or {}),
    }


class Server:
    """One server process on a fixed loopback port; `kill` is kill -9, `start` starts it
    again on the same port (clients keep their URL)."""

    def __init__(
        self,
        database_url: str,
        *,
        environment: dict[str, str] | None = None,
        log: Path | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.database_url = database_url
        self.environment = server_environment(database_url, environment)
        self.process: subprocess.Popen[bytes] | None = None
        self.log = log  # where its output goes (appended to); None: the test's output

    def start(self) -> None:
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            "tokenadmin.app:create_app",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--log-level",
            "warning",
        ]
        if self.log is None:
            self.process = subprocess.Popen(command, env=self.environment)
            return
        with self.log.open("ab") as output:
            self.process = subprocess.Popen(
                command, env=self.environment, stdout=output, stderr=subprocess.STDOUT
            )

    def wait_ready(self, timeout: float = 30) -> None:
        """Until /healthz answers 200. One client for every try: httpx.get makes a client
        each time, whose TLS context alone costs about 40 ms of CPU, which a try every 50 ms
        took from the server starting on the same cores."""
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=1) as client:
            while True:
                if not self.running():
                    code = "" if self.process is None else f" with {self.process.returncode}"
                    raise RuntimeError(f"server {self.url} exited{code}")
                try:
                    if client.get(f"{self.url}/healthz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"server {self.url} did not start in {timeout} s")
                time.sleep(0.05)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown hook runs, open transactions die with their connections."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()


class Preloader:
    """A process that imported the server's code once (tests/preload.py), forking servers:
    each costs uvicorn's start and create_app, not Python's start and every import. Its
    servers run with its environment; one forked for a database URL of its own (`fork`'s
    `database_url`) with that URL in it, its app made after the fork."""

    def __init__(self, environment: dict[str, str], log: Path | None = None) -> None:
        # From the checkout's root, as the test's own servers import the code under test.
        command = [sys.executable, "-m", "tests.preload", str(log or "")]
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=environment,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def fork(self, port: int, database_url: str | None = None) -> int:
        """A server on `port`: its pid."""
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(f"{port} {database_url}\n" if database_url else f"{port}\n")
        self.process.stdin.flush()
        return int(self.process.stdout.readline())

    def close(self) -> None:
        """It exits at the end of its input (its servers stay as they are)."""
        self.process.communicate(timeout=10)


class PreloadedServer(Server):
    """A Server forked from a Preloader: each start after the preloader's first costs
    uvicorn's start only, for tests that kill and start servers many times. Its own
    preloader, started with its environment, or a `shared` one (its servers have their own
    database URLs, this server's its own). `kill` and `stop` are the same signals, to the
    server's own process."""

    pid: int | None = None

    def __init__(
        self,
        database_url: str,
        *,
        environment: dict[str, str] | None = None,
        log: Path | None = None,
        shared: Preloader | None = None,
    ) -> None:
        super().__init__(database_url, environment=environment, log=log)
        self.shared = shared
        self.preloader = shared

    def start(self) -> None:
        if self.preloader is None:
            self.preloader = Preloader(self.environment, self.log)
        url = self.database_url if self.shared is not None else None
        self.pid = self.preloader.fork(self.port, url)

    def running(self) -> bool:
        """The preloader waits for its servers as they end, so a dead one's pid is gone."""
        if self.pid is None:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def kill(self) -> None:
        self._signal(signal.SIGKILL, timeout=None)

    def stop(self) -> None:
        if not self._signal(signal.SIGTERM, timeout=10):
            self._signal(signal.SIGKILL, timeout=None)
        if self.preloader is not None and self.preloader is not self.shared:
            self.preloader.close()
            self.preloader = None

    def _signal(self, signum: int, *, timeout: float | None) -> bool:
        """Send `signum` to the server and wait until it has ended (within `timeout` s, or
        for as long as it takes); whether it ended."""
        if not self.running():
            return True
        assert self.pid is not None
        os.kill(self.pid, signum)
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.running():
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True


ROOT = Path(__file__).parent.parent


@contextmanager
def started_servers(
    database_url: str,
    count: int,
    *,
    timeout: float = 30,
    log: Path | None = None,
    preloaded: bool = False,
    preloader: Preloader | None = None,
) -> Iterator[list[Server]]:
    """`count` server processes on loopback sharing one database; `preloaded`: forked from
    processes that imported the server's code once (PreloadedServer), to restart quickly;
    `preloader`: forked from that one, shared with other tests (each server's database URL
    its own)."""
    servers: list[Server]
    if preloader is not None:
        servers = [PreloadedServer(database_url, log=log, shared=preloader) for _ in range(count)]
    else:
        kind = PreloadedServer if preloaded else Server
        servers = [kind(database_url, log=log) for _ in range(count)]
    try:
        for server in servers:
            server.start()
        for server in servers:
            server.wait_ready(timeout)
        yield servers
    finally:
        for server in servers:
            server.stop()


@contextmanager
def running_servers(database_url: str, count: int, *, timeout: float = 30) -> Iterator[list[str]]:
    """`count` server processes on loopback sharing one database; yields their base URLs."""
    with started_servers(database_url, count, timeout=timeout) as servers:
        yield [server.url for server in servers]


def postgres_bin() -> Path | None:
    """Where the PostgreSQL server programs are (pg_ctl, initdb), if installed."""
    if shutil.which("pg_config"):
        found = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        bindir = Path(found.stdout.strip())
        if (bindir / "pg_ctl").exists():
            return bindir
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "pg_ctl").exists():
            return candidate
    return None


class PrivatePostgres:
    """A throwaway PostgreSQL cluster of the test's own, so a test can crash it (`pg_ctl
    stop -m immediate`: no checkpoint, recovery from the WAL at the next start) without
    touching the server other tests use. Runs as the `postgres` user when the test runs as
    root (the server refuses root)."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="tokenadmin-pg-"))
        self.data = self.directory / "data"
        self.log = self.directory / "server.log"
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._as_postgres: list[str] = []
        if os.geteuid() == 0:
            self._as_postgres = ["runuser", "-u", "postgres", "--"]
            shutil.chown(self.directory, "postgres", "postgres")

    def _run(self, program: str, *arguments: str) -> None:
        command = [*self._as_postgres, str(self.bindir / program), *arguments]
        subprocess.run(command, check=True, capture_output=True, cwd=self.directory)

    def create(self) -> None:
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        self.start()

    def start(self) -> None:
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories=''"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")

    def crash(self) -> None:
        """Stop at once, as a power cut would look to the server's clients."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def remove(self) -> None:
        if (self.data / "postmaster.pid").exists():
            with suppress(subprocess.CalledProcessError):
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.directory, ignore_errors=True)
