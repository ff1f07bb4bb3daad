"""Bodies and answers of the personal API key routes (the Python client imports these).

A personal key belongs to one user and acts as them, with their role: a member's key does
what the member may, an administrator's what the administrator may.
"""

from __future__ import annotations

import uuid

from pydantic import Field

from tokenadmin.organization.schemas import ApiKeyOut
from tokenadmin.schemas import Input, Name


class PersonalKeyCreate(Input):
    name: Name = Field(examples=["laptop"], description="What the key is for.")


class PersonalKeyOut(ApiKeyOut):
    user_id: uuid.UUID = Field(description="The user the key acts as.")


class PersonalKeyCreated(PersonalKeyOut):
    key: str = Field(description="The key itself. It is shown only this once.")
