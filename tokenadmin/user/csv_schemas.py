"""The user table's CSV import: its request and what it answers (the API, the CLI's --json
and the dashboard's preview show the same result)."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, Field, StrictBool, computed_field

from tokenadmin.allowance.schemas import KindAfterOut
from tokenadmin.schemas import Input, Text

MAX_IMPORT_BYTES = 32 * 1024 * 1024
"""The largest file an import reads (a 100,000-user export is about 10 MB)."""


def _within_the_import_limit(text: str) -> str:
    # Checked here rather than declared as the OpenAPI's maxLength: a bound that large
    # makes schema-driven generators (Schemathesis) produce no valid body at all.
    if len(text) > MAX_IMPORT_BYTES:
        raise ValueError(f"the file is over {MAX_IMPORT_BYTES // (1024 * 1024)} MB")
    return text


class UserImport(Input):
    csv: Annotated[Text, AfterValidator(_within_the_import_limit)] = Field(
        min_length=1,
        description="The CSV file's text, header first (as `users.csv` exports it), up to 32 MB.",
    )
    dry_run: StrictBool = Field(
        default=False, description="Check and preview every row; save nothing."
    )


class RowProblem(BaseModel):
    """Why one row of the file is refused (a row may be refused for several reasons)."""

    line: int
    email: str
    code: str
    message: str


class NewUserRow(BaseModel):
    line: int
    email: str
    name: str
    role: str
    max_tokens: int
    max_train_tokens: int


class FieldChange(BaseModel):
    """One column of one existing user: max_tokens, max_train_tokens, name or role."""

    line: int
    email: str
    field: str
    before: int | str
    after: int | str


class ImportResult(BaseModel):
    """What an import did, or (dry run, or any row refused) would do."""

    dry_run: bool
    applied: bool
    rows: int
    new_users: list[NewUserRow] = Field(default_factory=list)
    changes: list[FieldChange] = Field(default_factory=list)
    unchanged: int = 0
    refused: list[RowProblem] = Field(default_factory=list)
    balance_after: dict[str, KindAfterOut] = Field(default_factory=dict)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def accepted(self) -> bool:
        return not self.refused

    @property
    def changed_users(self) -> int:
        return len({c.email for c in self.changes})
