from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from tokenadmin.models.base import Base, UTCDateTime


class AccessToken(Base):
    """A short-lived token traded for an API key (the Ask Sage API's `get-token-with-api-key`).

    Only its SHA-256 is stored. It acts as its key, and stops when the key is revoked or
    the token expires."""

    __tablename__ = "access_tokens"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    api_key_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("api_keys.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
