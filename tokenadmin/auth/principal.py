"""Who is calling, and what they may do: every route asks here before it acts."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from tokenadmin.errors import Forbidden, NotFound

SCOPES = ("admin", "usage", "read")


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: a platform operator, an organization's key, or a person."""

    actor: str
    org_id: uuid.UUID | None
    scopes: frozenset[str]
    user_id: uuid.UUID | None = None
    key_id: uuid.UUID | None = None

    @property
    def is_operator(self) -> bool:
        return self.org_id is None

    @property
    def idempotency_scope(self) -> str:
        return "platform" if self.org_id is None else f"org:{self.org_id}"

    def require_operator(self, scope: str = "admin") -> None:
        """Allow a platform operator whose key has `scope` (changes need `admin`)."""
        if not self.is_operator:
            raise Forbidden("Only platform operators may do this.")
        if scope not in self.scopes:
            raise Forbidden(f"This key lacks the '{scope}' scope.", details={"scope": scope})

    def require(self, org_id: uuid.UUID, scope: str) -> None:
        """Allow `scope` in organization `org_id`; another organization's objects do not exist."""
        if self.is_operator:
            if scope not in self.scopes:
                raise Forbidden(f"This key lacks the '{scope}' scope.")
            return
        if org_id != self.org_id:
            raise NotFound("Organization not found.")
        if scope in self.scopes or (scope == "read" and "admin" in self.scopes):
            return
        raise Forbidden(f"This key lacks the '{scope}' scope.", details={"scope": scope})

    def require_any(self, org_id: uuid.UUID, scopes: tuple[str, ...], what: str) -> None:
        """Allow a caller with one of `scopes` in the organization; refuse with the first
        scope's refusal (403), or, to another organization's caller, as "<what> not found"."""
        if any(self.may(org_id, scope) for scope in scopes):
            return
        try:
            self.require(org_id, scopes[0])
        except NotFound as error:
            raise NotFound(f"{what} not found.") from error

    def may(self, org_id: uuid.UUID, scope: str) -> bool:
        try:
            self.require(org_id, scope)
        except (Forbidden, NotFound):
            return False
        return True
