from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_serve_runs_the_api_with_several_workers(sqlite_template: Path, tmp_path: Path) -> None:
    database = tmp_path / "served.db"
    shutil.copy(sqlite_template, database)
    port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable, "-m", "tokenadmin", "--database-url", f"sqlite:///{database}",
            "serve", "--port", str(port), "--workers", "2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        health = None
        while time.monotonic() < deadline and health is None:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).json()
            except httpx.HTTPError:
                time.sleep(0.2)
        assert health is not None, "the server did not answer within 30 s"
        assert health["status"] == "ok"
        assert health["database"] == "sqlite"
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=30)
    assert f"Serving tokenadmin on http://127.0.0.1:{port}" in output
    assert "with 2 processes" in output
