"""Ingestion metered outside the gateway: a platform that reads documents into an index
(retrieval, fine-tuning data) meters the training tokens of each, given their count or the
document's text (counted by gateway.estimate). Usage like any other (usage.service), with
its own idempotency key."""

from __future__ import annotations

from typing import Any

from tokenadmin.errors import InvalidRequest
from tokenadmin.gateway.estimate import estimate_tokens
from tokenadmin.gateway.service import refusal
from tokenadmin.idempotency.service import Answer, check_key
from tokenadmin.tokens import Kind
from tokenadmin.usage.coalescer import Coalescer
from tokenadmin.usage.service import Caller, Operation


def operation(
    user: str,
    *,
    tokens: int | None,
    text: str | None,
    dataset: str | None = None,
    document: str | None = None,
    idempotency_key: str | None = None,
    details: dict[str, Any] | None = None,
) -> Operation:
    """The usage a document's ingestion meters: `tokens`, else the estimate of `text`."""
    counted = tokens
    if counted is None:
        if text is None:
            raise InvalidRequest(
                "Give the document's tokens or its text.", details={"field": "tokens"}
            )
        counted = estimate_tokens(text)
        if counted == 0:
            raise InvalidRequest(
                "The document's text has no tokens to meter.",
                code="empty_document",
                details={"field": "text"},
            )
    kept: dict[str, Any] = {
        **(details or {}),
        "source": "ingest",
        "counted": "text" if tokens is None else "tokens",
    }
    if dataset is not None:
        kept["dataset"] = dataset
    if document is not None:
        kept["document"] = document
    if idempotency_key is not None:
        check_key(idempotency_key)
    return Operation(
        "usage",
        user=user,
        kind=Kind.training,
        tokens=counted,
        details=kept,
        idempotency_key=idempotency_key,
    )


async def ingest(
    coalescer: Coalescer,
    caller: Caller,
    user: str,
    *,
    tokens: int | None,
    text: str | None,
    dataset: str | None = None,
    document: str | None = None,
    idempotency_key: str | None = None,
    details: dict[str, Any] | None = None,
) -> Answer:
    """Meter a document's training tokens; its answer as POST /v1/usage's (status, body,
    replayed), or its refusal raised (insufficient_tokens, user_not_found, ...)."""
    answer = await coalescer.submit(
        caller,
        operation(
            user,
            tokens=tokens,
            text=text,
            dataset=dataset,
            document=document,
            idempotency_key=idempotency_key,
            details=details,
        ),
    )
    if answer.status_code >= 400:
        raise refusal(answer)
    return answer
