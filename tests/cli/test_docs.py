"""Every command and every option of `tokenadmin` is documented in docs/cli.md."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import typer

from tokenadmin.cli.main import app

DOCS = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def _commands(command: Any, path: tuple[str, ...], ctx: Any) -> dict[str, list[str]]:
    """Every leaf command's full name, with the option names it accepts."""
    if hasattr(command, "list_commands"):
        found: dict[str, list[str]] = {}
        for name in command.list_commands(ctx):
            found |= _commands(command.get_command(ctx, name), (*path, name), ctx)
        return found
    options = [
        name
        for param in command.params
        if param.param_type_name == "option"
        for name in (*param.opts, *param.secondary_opts)
        if name.startswith("--") and name != "--help"
    ]
    return {" ".join(path): options}


def _sections(text: str) -> dict[str, str]:
    """Each `### \\`tokenadmin ...\\`` heading with the text up to the next heading."""
    parts = re.split(r"^#{2,3} ", text, flags=re.MULTILINE)
    sections = {}
    for part in parts:
        heading, _, body = part.partition("\n")
        match = re.fullmatch(r"`(tokenadmin[^`]*)`", heading.strip())
        if match:
            sections[match.group(1)] = body
    return sections


def test_every_command_and_option_is_documented() -> None:
    root = typer.main.get_command(app)
    commands = _commands(root, ("tokenadmin",), typer.Context(root))
    assert len(commands) >= 28
    sections = _sections(DOCS.read_text())
    missing = [name for name in commands if name not in sections]
    assert not missing, f"commands without a section in docs/cli.md: {missing}"
    undocumented = [
        f"{name} {option}"
        for name, options in commands.items()
        for option in options
        if not re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", sections[name])
    ]
    assert not undocumented, f"options not documented in their command's section: {undocumented}"
    stale = [name for name in sections if name not in commands]
    assert not stale, f"docs/cli.md documents commands that do not exist: {stale}"


def test_the_global_options_are_documented() -> None:
    root = typer.main.get_command(app)
    text = DOCS.read_text()
    for param in root.params:
        for name in param.opts:
            assert f"`{name}" in text
