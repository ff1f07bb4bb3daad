from __future__ import annotations

from pydantic import Field, model_validator

from tokenadmin.schemas import FieldRule, Input, PositiveAmount, Text, one_of_required


class IngestIn(Input):
    user: Text = Field(min_length=1, max_length=320, description="User id or email.")
    tokens: PositiveAmount | None = Field(
        default=None, description="The document's training tokens, when the platform counted them."
    )
    text: Text | None = Field(
        default=None,
        description="The document's text, when `tokens` is not given: its tokens are estimated"
        " (docs/gateway.md, The estimator). The text is not stored.",
    )
    dataset: Text | None = Field(default=None, max_length=200)
    document: Text | None = Field(default=None, max_length=200, description="The document's name.")

    _one = one_of_required("tokens", "text", message="give the document's tokens or its text")

    @model_validator(mode="after")
    def _not_both(self) -> IngestIn:
        if self.tokens is not None and self.text is not None:
            raise FieldRule("text", "give the document's tokens or its text, not both")
        return self
