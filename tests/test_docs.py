"""Every setting is documented; the docs are part of the product."""

from __future__ import annotations

import re
from pathlib import Path

from tokenadmin.config import Settings

ROOT = Path(__file__).parent.parent


def test_every_setting_is_documented_in_configuration_md() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    missing = [
        f"TOKENADMIN_{name.upper()}"
        for name in Settings.model_fields
        if f"`TOKENADMIN_{name.upper()}`" not in text
    ]
    assert not missing, f"document these in docs/configuration.md: {missing}"


def test_every_documented_setting_exists() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    documented = {
        word.strip("`").removeprefix("TOKENADMIN_").lower()
        for word in text.split()
        if word.startswith("`TOKENADMIN_") and word.endswith("`")
    }
    assert documented <= set(Settings.model_fields), documented - set(Settings.model_fields)


def _codes_in_source(*, cli: bool) -> set[str]:
    """Error codes written in the package: the command line's own, or everyone else's."""
    codes: set[str] = set()
    pattern = re.compile(r'code(?:=| = |": )"([a-z_]+)"')
    for path in (ROOT / "tokenadmin").rglob("*.py"):
        if (path.parent.name == "cli") == cli:
            codes.update(pattern.findall(path.read_text()))
    return codes - {"error", "http_error", "conflict"}


def test_every_error_code_is_documented_in_api_md() -> None:
    text = (ROOT / "docs" / "api.md").read_text()
    missing = sorted(code for code in _codes_in_source(cli=False) if f"`{code}`" not in text)
    assert not missing, f"document these error codes in docs/api.md: {missing}"


def test_every_command_line_error_code_is_documented_in_cli_md() -> None:
    # The command line also gives the API's refusals; those are documented once, in api.md.
    text = (ROOT / "docs" / "cli.md").read_text() + (ROOT / "docs" / "api.md").read_text()
    missing = sorted(code for code in _codes_in_source(cli=True) if f"`{code}`" not in text)
    assert not missing, f"document these error codes in docs/cli.md: {missing}"
