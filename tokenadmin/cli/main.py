from __future__ import annotations


def main() -> None:
    raise SystemExit("the CLI is being written")
