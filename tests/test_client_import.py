"""The client installs and imports lightly, and its sync half is what the build generates."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import hatch_build

ROOT = Path(__file__).parent.parent
SERVER_PACKAGES = ("sqlalchemy", "fastapi", "starlette", "uvicorn", "alembic", "asyncpg", "typer")
SERVER_PARTS = ("service", "repository", "endpoints")


def _modules_after(code: str) -> list[str]:
    """The modules a fresh interpreter has loaded after running `code`."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )
    modules: list[str] = json.loads(done.stdout)
    return modules


def test_importing_the_client_loads_no_server_module() -> None:
    modules = _modules_after("import tokenadmin.client")

    assert "tokenadmin.client._sync" in modules
    server = [
        name
        for name in modules
        if name.partition(".")[0] in SERVER_PACKAGES
        or name == "tokenadmin.models"
        or name.startswith("tokenadmin.models.")
        or (name.startswith("tokenadmin.") and name.rpartition(".")[2] in SERVER_PARTS)
    ]
    assert server == [], "tokenadmin.client must not import the server's modules"


def test_the_sync_client_is_what_the_async_one_generates() -> None:
    present = (ROOT / hatch_build.SYNC).read_text(encoding="utf-8")
    expected = hatch_build.sync_source((ROOT / hatch_build.ASYNC).read_text(encoding="utf-8"))
    assert present == expected, (
        f"{hatch_build.SYNC} is stale: regenerate it from {hatch_build.ASYNC} with"
        f" `make {hatch_build.SYNC}` (or `python hatch_build.py`); never edit it by hand"
    )


def test_the_tests_generate_with_the_unasync_the_build_uses() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    build = {r for r in project["build-system"]["requires"] if r.startswith("unasync")}
    dev = {r for r in project["project"]["optional-dependencies"]["dev"] if r.startswith("unasync")}
    assert len(build) == 1
    assert build == dev


def test_the_client_needs_none_of_the_server_extra() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    base = " ".join(project["project"]["dependencies"])
    assert all(package not in base for package in SERVER_PACKAGES)
    assert project["project"]["scripts"]["tokenadmin"] == "tokenadmin:main"


def test_the_command_without_the_server_extra_says_how_to_install_it() -> None:
    # As if the server's packages were not installed: importing them fails.
    hide = "import sys\n" + "".join(f"sys.modules[{p!r}] = None\n" for p in SERVER_PACKAGES)
    done = subprocess.run(
        [sys.executable, "-c", f"{hide}import tokenadmin\ntokenadmin.main()"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )

    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1
    assert "pip install 'tokenadmin[server]'" in done.stderr
    assert "Traceback" not in done.stderr
