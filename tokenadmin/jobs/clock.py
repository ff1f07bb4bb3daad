"""A clock read from a file, for tests of several server processes (TOKENADMIN_CLOCK_FILE):
the test writes one ISO 8601 moment to the file and every process reads it."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path


class FileClock:
    def __init__(self, path: Path) -> None:
        self.path = path

    def now(self) -> datetime:
        moment = datetime.fromisoformat(self.path.read_text().strip())
        if moment.tzinfo is None:
            raise ValueError(f"{self.path} needs a moment with its offset, such as +00:00")
        return moment.astimezone(UTC)

    def set(self, moment: datetime) -> None:
        # Written beside it and renamed: a reader never sees half a moment.
        draft = self.path.with_name(self.path.name + ".draft")
        draft.write_text(moment.astimezone(UTC).isoformat())
        os.replace(draft, self.path)
