"""`tokenadmin serve --workers N`: each process accepts on its own socket (SO_REUSEPORT), so
the connections reach every process; a process that dies is replaced; a stop ends them all;
an address in use is refused at once.

Which process holds a socket is read from /proc (Linux only)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

from tests.servers import free_port, server_environment

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")

T = TypeVar("T")
LISTEN, ESTABLISHED = "0A", "01"


def _sockets(port: int, state: str) -> set[str]:
    """The inodes of the TCP sockets on local port `port` in `state`."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == state and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def _owners(inodes: set[str], pids: list[int]) -> Counter[int]:
    """How many of the sockets each of `pids` holds."""
    held: Counter[int] = Counter()
    for pid in pids:
        try:
            links = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
        except (FileNotFoundError, ProcessLookupError):
            continue
        held[pid] = sum(1 for link in links if link[len("socket:[") : -1] in inodes)
    return held


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else []


def _until(check: Callable[[], T | None], what: str, timeout: float = 60) -> T:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Served:
    def __init__(self, process: subprocess.Popen[bytes], port: int) -> None:
        self.process = process
        self.port = port

    def listeners(self) -> Counter[int] | None:
        """The server processes listening on the port (pid: sockets), once there are two."""
        held = _owners(_sockets(self.port, LISTEN), _children(self.process.pid))
        listening = Counter({pid: n for pid, n in held.items() if n})
        return listening if len(listening) == 2 else None


@pytest.fixture
def served(tmp_path: Path, sqlite_template: Path) -> Iterator[Served]:
    database = tmp_path / "tokenadmin.db"
    shutil.copy(sqlite_template, database)
    port = free_port()
    command = [
        sys.executable, "-m", "tokenadmin", "serve",
        "--host", "127.0.0.1", "--port", str(port), "--workers", "2",
    ]  # fmt: skip
    process = subprocess.Popen(command, env=server_environment(f"sqlite:///{database}"))
    try:
        yield Served(process, port)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_each_process_listens_on_its_own_socket_and_connections_reach_both(
    served: Served,
) -> None:
    listening = _until(served.listeners, "two listening processes")
    assert sorted(listening.values()) == [1, 1]  # one socket each,
    assert len(_sockets(served.port, LISTEN)) == 2  # not one socket shared
    assert served.process.pid not in listening  # the parent only supervises
    assert _owners(_sockets(served.port, LISTEN), [served.process.pid])[served.process.pid] == 0

    clients = [socket.create_connection(("127.0.0.1", served.port)) for _ in range(32)]
    try:

        def accepted() -> Counter[int] | None:
            held = _owners(_sockets(served.port, ESTABLISHED), list(listening))
            return held if sum(held.values()) == len(clients) else None

        held = _until(accepted, "the 32 connections accepted")
    finally:
        for client in clients:
            client.close()

    # Spread by a hash of each connection's ports: all 32 in one process is 2 in 2**32.
    assert all(held[pid] > 0 for pid in listening), held
    with httpx.Client(base_url=f"http://127.0.0.1:{served.port}") as http:
        assert all(http.get("/healthz").status_code == 200 for _ in range(8))


def test_a_process_that_dies_is_replaced_and_a_stop_ends_them_all(served: Served) -> None:
    first = _until(served.listeners, "two listening processes")
    killed = min(first)
    os.kill(killed, signal.SIGKILL)

    def replaced() -> Counter[int] | None:
        found = served.listeners()
        return found if found and killed not in found else None

    after = _until(replaced, "a new process in the killed one's place")
    assert len(set(after) & set(first)) == 1

    served.process.send_signal(signal.SIGTERM)
    assert served.process.wait(timeout=60) == 0
    assert not any(Path(f"/proc/{pid}").exists() for pid in after)
    assert not _sockets(served.port, LISTEN)


def test_an_address_in_use_is_refused_at_once(tmp_path: Path, sqlite_template: Path) -> None:
    database = tmp_path / "tokenadmin.db"
    shutil.copy(sqlite_template, database)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        command = [
            sys.executable, "-m", "tokenadmin", "serve",
            "--host", "127.0.0.1", "--port", str(port), "--workers", "2",
        ]  # fmt: skip
        done = subprocess.run(
            command,
            env=server_environment(f"sqlite:///{database}"),
            capture_output=True,
            text=True,
            timeout=120,
        )

    assert done.returncode != 0
    assert f"error: address_in_use: Cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "--port" in done.stderr
