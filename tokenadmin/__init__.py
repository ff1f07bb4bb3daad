"""tokenadmin: token administration for enterprise AI platforms.

`pip install tokenadmin` installs the Python client (`tokenadmin.client`) and what it
needs; `pip install 'tokenadmin[server]'` adds the service, its dashboard and the
`tokenadmin` command.
"""

import sys

__version__ = "0.1.0"

SERVER_EXTRA = "pip install 'tokenadmin[server]'"


def main() -> None:
    """The `tokenadmin` command; without the server's packages, one line on how to get them."""
    try:
        from tokenadmin.cli import main as command
    except ModuleNotFoundError as missing:
        if (missing.name or "tokenadmin").partition(".")[0] == "tokenadmin":
            raise
        print(
            f"tokenadmin: the command needs the server's packages ({missing.name} is not"
            f" installed); install them with: {SERVER_EXTRA}",
            file=sys.stderr,
        )
        raise SystemExit(2) from None
    command()
