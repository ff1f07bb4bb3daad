"""Every API operation, described once for both clients: method, path, body, query, answer.

Each function takes exactly the arguments of the client method of the same name and returns
a `Call`. Writes get their idempotency key here (the caller's, or a fresh uuid4), so the
key travels with the call through every retry.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from typing import Any, Literal
from urllib.parse import quote

from pydantic import BaseModel, TypeAdapter
from pydantic_core import to_jsonable_python

from tokenadmin.allowance.schemas import AllowancePreview, AllowanceRow
from tokenadmin.client._core import Call
from tokenadmin.journal.schemas import JournalPage
from tokenadmin.organization.schemas import (
    ApiKeyCreated,
    ApiKeyOut,
    BalanceOut,
    OrganizationOut,
    PurchaseOut,
)
from tokenadmin.tokens import Kind, Period
from tokenadmin.usage.schemas import BatchOut, ReservationOut, UsageAccepted, UsageFields
from tokenadmin.user.schemas import (
    Role,
    SortField,
    UsageHistoryOut,
    UserBalanceOut,
    UserOut,
    UserPage,
)

Id = uuid.UUID | str
"""An object's id, as a UUID or its text."""
UserRef = uuid.UUID | str
"""A user: their id, or their email address (metering accepts both)."""
KindName = Kind | Literal["inference", "training"]
PeriodName = Period | Literal["monthly", "none"]
UserStatus = Literal["active", "deactivated"]
Order = Literal["asc", "desc"]
Granularity = Literal["day", "month"]
AllowanceRowIn = AllowanceRow | Mapping[str, Any]
"""A row of an allowance change: an `AllowanceRow`, or a mapping with the same fields."""
UsageEventIn = UsageFields | Mapping[str, Any]
"""A usage event of a batch: `UsageEvent` (with its key), `UsageFields`, or a mapping."""

_ORGANIZATIONS = TypeAdapter(list[OrganizationOut]).validate_python
_PURCHASES = TypeAdapter(list[PurchaseOut]).validate_python
_API_KEYS = TypeAdapter(list[ApiKeyOut]).validate_python
_HEALTH = TypeAdapter(dict[str, str]).validate_python


def _id(value: Id) -> str:
    return quote(str(value), safe="")


def _key(given: str | None) -> str:
    return given if given is not None else str(uuid.uuid4())


def _body(**fields: Any) -> dict[str, Any]:
    """A JSON body of the fields that were given (None leaves the service's default)."""
    body: dict[str, Any] = to_jsonable_python({k: v for k, v in fields.items() if v is not None})
    return body


def _params(**fields: Any) -> dict[str, str]:
    given = to_jsonable_python({k: v for k, v in fields.items() if v is not None})
    return {k: v if isinstance(v, str) else str(v) for k, v in given.items()}


def _row(row: AllowanceRowIn) -> dict[str, Any]:
    if isinstance(row, BaseModel):
        return row.model_dump(mode="json", exclude_none=True)
    fields: dict[str, Any] = to_jsonable_python(dict(row))
    return fields


def _event(event: UsageEventIn) -> dict[str, Any]:
    if isinstance(event, BaseModel):
        fields = event.model_dump(mode="json", exclude_none=True)
    else:
        fields = to_jsonable_python(dict(event))
    # Keys are made now, so a retried batch sends every event with the same key.
    if fields.get("idempotency_key") is None:
        fields["idempotency_key"] = str(uuid.uuid4())
    return fields


# --- organizations -------------------------------------------------------------------------


def create_organization(
    name: str,
    *,
    time_zone: str | None = None,
    period: PeriodName | None = None,
    min_inference: int | None = None,
    min_training: int | None = None,
    overallocation: bool | None = None,
    idempotency_key: str | None = None,
) -> Call[OrganizationOut]:
    body = _body(
        name=name,
        time_zone=time_zone,
        period=period,
        min_inference=min_inference,
        min_training=min_training,
        overallocation=overallocation,
    )
    return Call(
        "POST",
        "/v1/organizations",
        OrganizationOut.model_validate,
        json=body,
        idempotency_key=_key(idempotency_key),
    )


def list_organizations() -> Call[list[OrganizationOut]]:
    return Call("GET", "/v1/organizations", _ORGANIZATIONS)


def get_organization(org_id: Id) -> Call[OrganizationOut]:
    return Call("GET", f"/v1/organizations/{_id(org_id)}", OrganizationOut.model_validate)


def update_organization(
    org_id: Id,
    *,
    name: str | None = None,
    time_zone: str | None = None,
    period: PeriodName | None = None,
    min_inference: int | None = None,
    min_training: int | None = None,
    overallocation: bool | None = None,
    idempotency_key: str | None = None,
) -> Call[OrganizationOut]:
    body = _body(
        name=name,
        time_zone=time_zone,
        period=period,
        min_inference=min_inference,
        min_training=min_training,
        overallocation=overallocation,
    )
    path = f"/v1/organizations/{_id(org_id)}"
    return Call(
        "PATCH",
        path,
        OrganizationOut.model_validate,
        json=body,
        idempotency_key=_key(idempotency_key),
    )


def record_purchase(
    org_id: Id,
    *,
    inference_amount: int = 0,
    training_amount: int = 0,
    purchased_on: date | None = None,
    expires_at: datetime | date | None = None,
    payer: str | None = None,
    note: str | None = None,
    idempotency_key: str | None = None,
) -> Call[PurchaseOut]:
    body = _body(
        inference_amount=inference_amount,
        training_amount=training_amount,
        purchased_on=purchased_on,
        expires_at=expires_at,
        payer=payer,
        note=note,
    )
    path = f"/v1/organizations/{_id(org_id)}/purchases"
    return Call(
        "POST", path, PurchaseOut.model_validate, json=body, idempotency_key=_key(idempotency_key)
    )


def list_purchases(org_id: Id) -> Call[list[PurchaseOut]]:
    return Call("GET", f"/v1/organizations/{_id(org_id)}/purchases", _PURCHASES)


def change_purchase_expiry(
    org_id: Id,
    purchase_id: Id,
    expires_at: datetime | date | None,
    *,
    idempotency_key: str | None = None,
) -> Call[PurchaseOut]:
    # Sent even when None: null clears the expiry.
    body = {"expires_at": to_jsonable_python(expires_at)}
    path = f"/v1/organizations/{_id(org_id)}/purchases/{_id(purchase_id)}"
    return Call(
        "PATCH", path, PurchaseOut.model_validate, json=body, idempotency_key=_key(idempotency_key)
    )


def get_balance(org_id: Id) -> Call[BalanceOut]:
    return Call("GET", f"/v1/organizations/{_id(org_id)}/balance", BalanceOut.model_validate)


def create_api_key(
    org_id: Id, name: str, scopes: Sequence[str], *, idempotency_key: str | None = None
) -> Call[ApiKeyCreated]:
    body = _body(name=name, scopes=list(scopes))
    path = f"/v1/organizations/{_id(org_id)}/api-keys"
    return Call(
        "POST", path, ApiKeyCreated.model_validate, json=body, idempotency_key=_key(idempotency_key)
    )


def list_api_keys(org_id: Id) -> Call[list[ApiKeyOut]]:
    return Call("GET", f"/v1/organizations/{_id(org_id)}/api-keys", _API_KEYS)


def revoke_api_key(
    org_id: Id, key_id: Id, *, idempotency_key: str | None = None
) -> Call[ApiKeyOut]:
    path = f"/v1/organizations/{_id(org_id)}/api-keys/{_id(key_id)}"
    return Call("DELETE", path, ApiKeyOut.model_validate, idempotency_key=_key(idempotency_key))


# --- users and allowances ------------------------------------------------------------------


def list_users(
    org_id: Id,
    *,
    search: str | None = None,
    status: UserStatus | None = None,
    role: Role | None = None,
    near_limit: float | None = None,
    sort: SortField | None = None,
    order: Order | None = None,
    limit: int | None = None,
    offset: int | None = None,
) -> Call[UserPage]:
    params = _params(
        search=search,
        status=status,
        role=role,
        near_limit=near_limit,
        sort=sort,
        order=order,
        limit=limit,
        offset=offset,
    )
    return Call(
        "GET", f"/v1/organizations/{_id(org_id)}/users", UserPage.model_validate, None, params
    )


def create_user(
    org_id: Id,
    email: str,
    name: str,
    *,
    role: Role | None = None,
    max_tokens: int | None = None,
    max_train_tokens: int | None = None,
    password: str | None = None,
    idempotency_key: str | None = None,
) -> Call[UserOut]:
    body = _body(
        email=email,
        name=name,
        role=role,
        max_tokens=max_tokens,
        max_train_tokens=max_train_tokens,
        password=password,
    )
    path = f"/v1/organizations/{_id(org_id)}/users"
    return Call(
        "POST", path, UserOut.model_validate, json=body, idempotency_key=_key(idempotency_key)
    )


def get_user(user_id: Id) -> Call[UserOut]:
    return Call("GET", f"/v1/users/{_id(user_id)}", UserOut.model_validate)


def update_user(
    user_id: Id,
    *,
    name: str | None = None,
    role: Role | None = None,
    max_tokens: int | None = None,
    max_train_tokens: int | None = None,
    expected_version: int | None = None,
    reason: str | None = None,
    idempotency_key: str | None = None,
) -> Call[UserOut]:
    body = _body(
        name=name,
        role=role,
        max_tokens=max_tokens,
        max_train_tokens=max_train_tokens,
        expected_version=expected_version,
        reason=reason,
    )
    path = f"/v1/users/{_id(user_id)}"
    return Call(
        "PATCH", path, UserOut.model_validate, json=body, idempotency_key=_key(idempotency_key)
    )


def deactivate_user(user_id: Id, *, idempotency_key: str | None = None) -> Call[UserOut]:
    path = f"/v1/users/{_id(user_id)}/deactivate"
    return Call("POST", path, UserOut.model_validate, idempotency_key=_key(idempotency_key))


def reactivate_user(
    user_id: Id,
    *,
    max_tokens: int | None = None,
    max_train_tokens: int | None = None,
    idempotency_key: str | None = None,
) -> Call[UserOut]:
    body = _body(max_tokens=max_tokens, max_train_tokens=max_train_tokens)
    path = f"/v1/users/{_id(user_id)}/reactivate"
    return Call(
        "POST", path, UserOut.model_validate, json=body, idempotency_key=_key(idempotency_key)
    )


def get_user_balance(user_id: Id) -> Call[UserBalanceOut]:
    return Call("GET", f"/v1/users/{_id(user_id)}/balance", UserBalanceOut.model_validate)


def get_usage_history(user_id: Id, *, granularity: Granularity = "day") -> Call[UsageHistoryOut]:
    path = f"/v1/users/{_id(user_id)}/usage"
    params = _params(granularity=granularity)
    return Call("GET", path, UsageHistoryOut.model_validate, params=params)


def change_allowances(
    org_id: Id,
    rows: Sequence[AllowanceRowIn],
    *,
    dry_run: bool = False,
    reason: str | None = None,
    idempotency_key: str | None = None,
) -> Call[AllowancePreview]:
    body = _body(changes=[_row(r) for r in rows], dry_run=dry_run, reason=reason)
    path = f"/v1/organizations/{_id(org_id)}/allowances"
    return Call(
        "POST",
        path,
        AllowancePreview.model_validate,
        json=body,
        idempotency_key=_key(idempotency_key),
    )


# --- journal -------------------------------------------------------------------------------


def list_journal(
    org_id: Id,
    *,
    user: Id | None = None,
    kind: KindName | None = None,
    action: str | None = None,
    actor: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    before_id: int | None = None,
    limit: int | None = None,
) -> Call[JournalPage]:
    params = _params(
        user=user,
        kind=kind,
        action=action,
        actor=actor,
        since=since,
        until=until,
        before_id=before_id,
        limit=limit,
    )
    path = f"/v1/organizations/{_id(org_id)}/journal"
    return Call("GET", path, JournalPage.model_validate, params=params)


# --- metering ------------------------------------------------------------------------------


def record_usage(
    user: UserRef,
    kind: KindName,
    tokens: int,
    *,
    model: str | None = None,
    prompt_tokens: int | None = None,
    completion_tokens: int | None = None,
    dataset: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    idempotency_key: str | None = None,
) -> Call[UsageAccepted]:
    body = _body(
        user=user,
        kind=kind,
        tokens=tokens,
        model=model,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        dataset=dataset,
        metadata=None if metadata is None else dict(metadata),
    )
    return Call(
        "POST",
        "/v1/usage",
        UsageAccepted.model_validate,
        json=body,
        idempotency_key=_key(idempotency_key),
    )


def record_usage_batch(events: Sequence[UsageEventIn]) -> Call[BatchOut]:
    # The batch itself takes no key: each event carries its own (see _event).
    body = {"events": [_event(e) for e in events]}
    return Call("POST", "/v1/usage/batch", BatchOut.model_validate, json=body)


def reserve(
    user: UserRef,
    kind: KindName,
    tokens: int,
    *,
    ttl_seconds: int | None = None,
    model: str | None = None,
    prompt_tokens: int | None = None,
    completion_tokens: int | None = None,
    dataset: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    idempotency_key: str | None = None,
) -> Call[ReservationOut]:
    body = _body(
        user=user,
        kind=kind,
        tokens=tokens,
        ttl_seconds=ttl_seconds,
        model=model,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        dataset=dataset,
        metadata=None if metadata is None else dict(metadata),
    )
    parse = ReservationOut.model_validate
    return Call("POST", "/v1/reservations", parse, json=body, idempotency_key=_key(idempotency_key))


def commit_reservation(
    reservation_id: Id, *, tokens: int | None = None, idempotency_key: str | None = None
) -> Call[ReservationOut]:
    path = f"/v1/reservations/{_id(reservation_id)}/commit"
    body = _body(tokens=tokens)
    return Call(
        "POST",
        path,
        ReservationOut.model_validate,
        json=body,
        idempotency_key=_key(idempotency_key),
    )


def release_reservation(
    reservation_id: Id, *, idempotency_key: str | None = None
) -> Call[ReservationOut]:
    path = f"/v1/reservations/{_id(reservation_id)}/release"
    return Call("POST", path, ReservationOut.model_validate, idempotency_key=_key(idempotency_key))


# --- health --------------------------------------------------------------------------------


def health() -> Call[dict[str, str]]:
    return Call("GET", "/healthz", _HEALTH)
