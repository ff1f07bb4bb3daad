from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, String, Uuid, text
from sqlalchemy.orm import Mapped, mapped_column
from uuid6 import uuid7

from tokenadmin.models.base import Base, UTCDateTime

PLATFORM_ROW = text("org_id IS NULL")
ORGANIZATION_ROW = text("org_id IS NOT NULL")


class LlmModel(Base):
    """A model of the catalog: its rates and where its requests go.

    `org_id` None is the platform's default for every organization; an organization's row
    of the same name overrides it for that organization. Rates are exact decimals kept as
    text (SQLite has no exact decimal type): tokens charged = ceil(prompt x prompt_rate +
    completion x completion_rate). `upstream_api_key` is write-only: no surface returns it.
    """

    __tablename__ = "llm_models"
    __table_args__ = (
        Index(
            "uq_llm_models_platform_name",
            "name",
            unique=True,
            sqlite_where=PLATFORM_ROW,
            postgresql_where=PLATFORM_ROW,
        ),
        Index(
            "uq_llm_models_org_id_name",
            "org_id",
            "name",
            unique=True,
            sqlite_where=ORGANIZATION_ROW,
            postgresql_where=ORGANIZATION_ROW,
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid7)
    org_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("organizations.id"), nullable=True)
    name: Mapped[str] = mapped_column(String(200))
    prompt_rate: Mapped[str] = mapped_column(String(40))
    completion_rate: Mapped[str] = mapped_column(String(40))
    upstream_base_url: Mapped[str | None] = mapped_column(String(500), nullable=True)
    upstream_api_key: Mapped[str | None] = mapped_column(String(500), nullable=True)
    upstream_model: Mapped[str | None] = mapped_column(String(200), nullable=True)
    max_output_tokens: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
