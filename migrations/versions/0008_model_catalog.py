"""the model catalog, model access, personal API keys and access tokens

- `llm_models`: per model its prompt and completion rates (exact decimal text) and its
  upstream, as the platform's default (`org_id` NULL) or an organization's override.
- organizations: the models its users may call (NULL: all), and its own upstream.
- api_keys: `user_id`, for a person's own key.
- `access_tokens`: the short-lived tokens of the Ask Sage API, stored as hashes.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 05:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from tokenadmin.models.base import UTCDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

PLATFORM_ROW = sa.text("org_id IS NULL")
ORGANIZATION_ROW = sa.text("org_id IS NOT NULL")


def upgrade() -> None:
    op.create_table(
        "llm_models",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("org_id", sa.Uuid(), nullable=True),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("prompt_rate", sa.String(length=40), nullable=False),
        sa.Column("completion_rate", sa.String(length=40), nullable=False),
        sa.Column("upstream_base_url", sa.String(length=500), nullable=True),
        sa.Column("upstream_api_key", sa.String(length=500), nullable=True),
        sa.Column("upstream_model", sa.String(length=200), nullable=True),
        sa.Column("max_output_tokens", sa.BigInteger(), nullable=True),
        sa.Column("created_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["org_id"], ["organizations.id"], name=op.f("fk_llm_models_org_id_organizations")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_llm_models")),
    )
    op.create_index(
        "uq_llm_models_platform_name",
        "llm_models",
        ["name"],
        unique=True,
        sqlite_where=PLATFORM_ROW,
        postgresql_where=PLATFORM_ROW,
    )
    op.create_index(
        "uq_llm_models_org_id_name",
        "llm_models",
        ["org_id", "name"],
        unique=True,
        sqlite_where=ORGANIZATION_ROW,
        postgresql_where=ORGANIZATION_ROW,
    )
    with op.batch_alter_table("organizations") as batch:
        batch.add_column(sa.Column("allowed_models", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("upstream_base_url", sa.String(length=500), nullable=True))
        batch.add_column(sa.Column("upstream_api_key", sa.String(length=500), nullable=True))
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("user_id", sa.Uuid(), nullable=True))
        batch.create_foreign_key(op.f("fk_api_keys_user_id_users"), "users", ["user_id"], ["id"])
        batch.create_index(op.f("ix_api_keys_user_id"), ["user_id"])
    op.create_table(
        "access_tokens",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("api_key_id", sa.Uuid(), nullable=False),
        sa.Column("created_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["api_key_id"], ["api_keys.id"], name=op.f("fk_access_tokens_api_key_id_api_keys")
        ),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_access_tokens")),
    )
    op.create_index(op.f("ix_access_tokens_api_key_id"), "access_tokens", ["api_key_id"])
    op.create_index(op.f("ix_access_tokens_expires_at"), "access_tokens", ["expires_at"])


def downgrade() -> None:
    op.drop_table("access_tokens")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_index(op.f("ix_api_keys_user_id"))
        batch.drop_constraint(op.f("fk_api_keys_user_id_users"), type_="foreignkey")
        batch.drop_column("user_id")
    with op.batch_alter_table("organizations") as batch:
        batch.drop_column("upstream_api_key")
        batch.drop_column("upstream_base_url")
        batch.drop_column("allowed_models")
    op.drop_index("uq_llm_models_org_id_name", table_name="llm_models")
    op.drop_index("uq_llm_models_platform_name", table_name="llm_models")
    op.drop_table("llm_models")
