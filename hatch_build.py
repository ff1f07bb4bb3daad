"""Writes the synchronous client, tokenadmin/client/_sync.py, from the asynchronous one.

`AsyncClient` (tokenadmin/client/_async.py) is the one definition of every API operation;
`Client` is derived from it by unasync, which drops `async` and `await` and renames what
`REPLACEMENTS` lists. The generated file is not committed. It is written by:

- every build of the package (wheel, sdist, editable install): the build hook below, with
  unasync in `[build-system].requires`;
- `make`, before it lints, type-checks, tests or serves, whenever _async.py changed;
- `python hatch_build.py`, by hand.

tests/test_client_import.py checks that the file present is what _async.py gives.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import unasync
from hatchling.builders.hooks.plugin.interface import BuildHookInterface

ROOT = Path(__file__).resolve().parent
ASYNC = Path("tokenadmin/client/_async.py")
SYNC = Path("tokenadmin/client/_sync.py")
REPLACEMENTS = {
    "AsyncClient": "Client",  # the class, and httpx.AsyncClient
    "aclose": "close",
    "asyncio": "time",  # asyncio.sleep
}
"""Besides unasync's own (`__aenter__` → `__enter__`, `AsyncX` → `SyncX`, …)."""
DOCSTRING = '''"""`Client`: the tokenadmin REST API, synchronously.

Generated from `AsyncClient` in _async.py by hatch_build.py (unasync): do not edit. Edit
_async.py, then run `make tokenadmin/client/_sync.py` (any build of the package writes this
file too). docs/client.md says how the client is organized.
"""
'''


def sync_source(async_source: str) -> str:
    """The text of _sync.py for this text of _async.py."""
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder, ASYNC.name)
        source.write_text(async_source, encoding="utf-8")
        rule = unasync.Rule(ASYNC.name, SYNC.name, additional_replacements=REPLACEMENTS)
        unasync.unasync_files([str(source)], [rule])
        generated = Path(folder, SYNC.name).read_text(encoding="utf-8")
    # The module docstring is the sync file's own; the code below it is unasync's.
    if not generated.startswith('"""'):
        raise ValueError(f"{ASYNC} must start with its module docstring")
    end = generated.index('"""', 3) + 3
    return DOCSTRING + "\n" + generated[end:].lstrip("\n")


def generate(root: Path = ROOT) -> bool:
    """Write _sync.py below `root` from _async.py; whether it changed."""
    text = sync_source((root / ASYNC).read_text(encoding="utf-8"))
    target = root / SYNC
    if target.exists() and target.read_text(encoding="utf-8") == text:
        return False
    target.write_text(text, encoding="utf-8")
    return True


class SyncClientHook(BuildHookInterface):  # type: ignore[type-arg]
    """Hatchling's build hook (`[tool.hatch.build.hooks.custom]`): writes _sync.py first."""

    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        generate(Path(self.root))


if __name__ == "__main__":
    changed = generate()
    print(f"{SYNC} {'written' if changed else 'is up to date'}", file=sys.stderr)
