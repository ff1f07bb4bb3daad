"""allocation policies: floor, ceiling, auto-increase, reclamation, temporary boosts

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02 11:40:00
"""

from __future__ import annotations

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
