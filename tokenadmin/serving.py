"""Serving on several processes, each accepting connections on its own socket.

uvicorn's own `--workers` binds one socket and every process accepts from it. A process
woken by new connections takes all of those waiting, so a client that opens a few
keep-alive connections at once (a platform's pool) can find every one of them in one
process while the others idle: measured with 2 processes and 8 connections of batches,
one round in several had all 8 in one process, at 8,735 events/s against 13,300–15,800
for the others. Here each process binds its own socket to the same address with
SO_REUSEPORT, and the kernel spreads new connections across the sockets by a hash of each
connection's addresses, so no process is skipped (the way nginx's `reuse_port` does it).

The parent only supervises: it checks the address is free, starts the processes (spawned,
as uvicorn's are), starts again any that exits, and on SIGINT or SIGTERM stops them all
(SIGTERM: uvicorn's graceful shutdown, answering the requests in progress) and waits.
Where SO_REUSEPORT is missing (Windows) the processes share one socket, as uvicorn's do.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import socket
import threading
from types import FrameType
from typing import Any

import uvicorn

logger = logging.getLogger("tokenadmin.serving")

STOP_SECONDS = 30.0  # how long the processes have to finish their requests on a stop


def run(app: str, *, host: str, port: int, processes: int, **options: Any) -> None:
    """Serve `app` (an import string) from `processes` processes; returns when stopped."""
    if processes <= 1 or not hasattr(socket, "SO_REUSEPORT"):
        uvicorn.run(app, host=host, port=port, workers=processes, **options)
        return
    options = {"app": app, "host": host, "port": port, **options}
    _reserve(host, port)
    Supervisor(options, processes).run()


def listening_socket(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A socket listening on (host, port) alongside the other processes' (SO_REUSEPORT)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


class AddressInUse(Exception):
    """Something listens on the address already."""


def _reserve(host: str, port: int) -> None:
    """Fail at once, with the usual error, when anything listens on the address already: a
    bind without SO_REUSEPORT fails then, even if that listener set it (another tokenadmin),
    where the processes' own binds would join it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise AddressInUse(
                f"Cannot listen on {host}:{port}: {error.strerror or error}."
                " Stop what listens there, or choose another port (--port)."
            ) from error


def serve_one(options: dict[str, Any]) -> None:
    """One process: its own listening socket, then uvicorn's server on it."""
    config = uvicorn.Config(**options)
    sock = listening_socket(config.host, config.port, config.backlog)
    uvicorn.Server(config).run(sockets=[sock])


class Supervisor:
    """Keeps `processes` server processes running until told to stop."""

    def __init__(self, options: dict[str, Any], processes: int) -> None:
        self.options = options
        self.count = processes
        self.children: list[multiprocessing.process.BaseProcess] = []
        self.stopping = threading.Event()
        self.context = multiprocessing.get_context("spawn")

    def run(self) -> None:
        previous = {
            signum: signal.signal(signum, self._stop) for signum in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            self.children = [self._start() for _ in range(self.count)]
            while not self.stopping.wait(0.5):
                for index, child in enumerate(self.children):
                    if not child.is_alive() and not self.stopping.is_set():
                        logger.warning(
                            "server process %s exited with %s; starting another",
                            child.pid,
                            child.exitcode,
                        )
                        self.children[index] = self._start()
        finally:
            self._stop_children()
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _start(self) -> multiprocessing.process.BaseProcess:
        child = self.context.Process(target=serve_one, args=(self.options,))
        child.start()
        return child

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping.set()

    def _stop_children(self) -> None:
        for child in self.children:
            if child.is_alive():
                child.terminate()
        for child in self.children:
            child.join(STOP_SECONDS)
            if child.is_alive():
                child.kill()
                child.join()
