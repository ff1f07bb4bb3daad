"""Start real `tokenadmin` server processes for multi-process tests, and stop them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def running_servers(database_url: str, count: int, *, timeout: float = 30) -> Iterator[list[str]]:
    """`count` server processes on loopback sharing one database; yields their base URLs."""
    env = {
        **os.environ,
        "TOKENADMIN_DATABASE_URL": database_url,
        "TOKENADMIN_SWEEP_INTERVAL_SECONDS": "1",
        "TOKENADMIN_LOG_LEVEL": "warning",
    }
    processes: list[subprocess.Popen[bytes]] = []
    urls: list[str] = []
    try:
        for _ in range(count):
            port = free_port()
            command = [
                sys.executable,
                "-m",
                "uvicorn",
                "tokenadmin.app:create_app",
                "--factory",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ]
            processes.append(subprocess.Popen(command, env=env))
            urls.append(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + timeout
        for url, process in zip(urls, processes, strict=True):
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"server {url} exited with {process.returncode}")
                try:
                    if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"server {url} did not start in {timeout} s")
                time.sleep(0.1)
        yield urls
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
