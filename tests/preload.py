"""A process that imports the server's code once, then forks a server from it for each
port read on its standard input, answering the server's pid on its standard output
(tests.servers.PreloadedServer). A server started so skips Python's start and every import,
about two thirds of a start's CPU time, which the crash tests pay at each of their restarts.
The server itself is as `python -m uvicorn tokenadmin.app:create_app --factory` makes it:
create_app runs in the forked process, with the environment this one was started with.

Run as `python -m tests.preload LOG`: the servers' output is appended to LOG, or goes to
this process's standard error when LOG is empty. Exits at the end of its input."""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType

import uvicorn

import tokenadmin.app  # noqa: F401  # the cost paid here once instead of at every start


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


def _serve(port: int, log: str) -> None:
    """In the forked process: serve on `port` until killed or stopped, never returning to
    the loop that forks."""
    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        output = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT) if log else 2
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        os.dup2(output, 1)  # not the pipe the pids are answered on
        os.dup2(output, 2)
        uvicorn.run(
            "tokenadmin.app:create_app",
            factory=True,
            host="127.0.0.1",
            port=port,
            log_level="warning",
        )
        code = 0
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def main() -> None:
    log = sys.argv[1]
    signal.signal(signal.SIGCHLD, _reap)
    for line in sys.stdin:
        pid = os.fork()
        if pid == 0:
            _serve(int(line), log)
        print(pid, flush=True)


if __name__ == "__main__":
    main()
