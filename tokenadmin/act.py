from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class Act:
    """Who acts and when: every journal entry of one change carries both."""

    actor: str
    now: datetime
