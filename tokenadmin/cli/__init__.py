"""The tokenadmin command."""

from tokenadmin.cli.main import main

__all__ = ["main"]
