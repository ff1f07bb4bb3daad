"""A process that imports the server's code once, then forks a server from it for each
line read on its standard input (a port, or a port and a database URL), answering the
server's pid on its standard output (tests.servers.PreloadedServer, tests.servers.Preloader).
A server started so skips Python's start and every import, nearly all of a start's CPU time,
which the crash tests pay at each of their restarts and the browser tests at each test.
The app each server runs is made by create_app, with the environment this process was
started with, before the fork (the next one's right after it): an app that never served, as
`python -m uvicorn tokenadmin.app:create_app --factory` makes it. A line that names a
database URL too makes its app in the forked process, once that URL is its
TOKENADMIN_DATABASE_URL: the settings are read from the environment then, as at a start.

Run as `python -m tests.preload LOG`: the servers' output is appended to LOG, or goes to
this process's standard error when LOG is empty. Exits at the end of its input."""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType

import uvicorn
from fastapi import FastAPI

from tokenadmin.app import create_app
from tokenadmin.config import get_settings


def _reap(signum: int, frame: FrameType | None) -> None:
    """Wait for every server that ended, so that its pid is gone at once: the test knows a
    server died when its pid no longer exists."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _serve(app: FastAPI | None, port: int, log: str) -> None:
    """In the forked process: serve `app` (None: one made here, from this process's
    environment) on `port` until killed or stopped, never returning to the loop that forks."""
    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        if app is None:
            get_settings.cache_clear()
            app = create_app()
        output = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT) if log else 2
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        os.dup2(output, 1)  # not the pipe the pids are answered on
        os.dup2(output, 2)
        uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
        code = 0
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def main() -> None:
    log = sys.argv[1]
    signal.signal(signal.SIGCHLD, _reap)
    app = create_app()
    for line in sys.stdin:
        port, _, database_url = line.strip().partition(" ")
        pid = os.fork()
        if pid == 0:
            if database_url:
                os.environ["TOKENADMIN_DATABASE_URL"] = database_url
            _serve(None if database_url else app, int(port), log)
        print(pid, flush=True)
        if not database_url:
            app = create_app()


if __name__ == "__main__":
    main()
