"""The `/server` base of the Ask Sage API: the caller's usage, metering (query, train),
models and tokenizer, token requests, distribution, and the operators' superadmin-*
calls, over the usage, gateway, catalog, token request, distribution and organization
services."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin import logs
from tokenadmin.act import Act
from tokenadmin.asksage.deps import (
    PrincipalDep,
    admin_org,
    caller_of,
    fields,
    member,
    read,
    upload,
    write,
)
from tokenadmin.asksage.envelope import answer
from tokenadmin.asksage.schemas import (
    AddPurchase,
    AskTokens,
    Content,
    DistributionExecute,
    DistributionPreview,
    MyRequests,
    Nothing,
    OrgPurchases,
    OrgRequests,
    Query,
    Review,
    Train,
    TrainWithFile,
)
from tokenadmin.auth.principal import Principal
from tokenadmin.catalog import service as catalog
from tokenadmin.deps import clock_of, db_of, settings_of
from tokenadmin.distribution import service as distribution_service
from tokenadmin.distribution.schemas import DistributionOut, DistributionRequest
from tokenadmin.errors import InvalidRequest, NotFound, TokenAdminError
from tokenadmin.gateway.estimate import estimate_tokens
from tokenadmin.gateway.ingest import ingest
from tokenadmin.gateway.service import Member, UpstreamFailed, complete_chat
from tokenadmin.models import Organization
from tokenadmin.organization import repository as organization_repository
from tokenadmin.organization import service as organization_service
from tokenadmin.organization.schemas import OrganizationCreate, OrganizationOut, PurchaseOut
from tokenadmin.token_request import service as token_request_service
from tokenadmin.token_request.schemas import TokenRequestOut, TokenRequestPage
from tokenadmin.tokens import Kind
from tokenadmin.usage.service import KindAvailability, availability
from tokenadmin.user import service as user_service

router = APIRouter()
NoFields = Annotated[Nothing, Depends(fields(Nothing))]


# --- the caller's own usage ----------------------------------------------------------------


async def _availability(request: Request, user_id: uuid.UUID) -> dict[Kind, KindAvailability]:
    """What the caller used, holds and may still use this period, of each kind."""
    now = clock_of(request).now()
    user = await db_of(request).read(lambda session: user_service.get(session, user_id))

    async def work(session: AsyncSession) -> dict[Kind, KindAvailability]:
        fresh = await user_service.get(session, user_id)
        org = await organization_service.get(session, fresh.org_id)
        return await availability(session, org, fresh, now)

    return await read(request, user.org_id, work)


@router.post("/count-monthly-tokens")
async def count_monthly_tokens(
    request: Request, principal: PrincipalDep, _: NoFields
) -> JSONResponse:
    """The inference tokens the caller used this period."""
    kinds = await _availability(request, member(principal))
    return answer(kinds[Kind.inference].used)


@router.post("/count-monthly-teach-tokens")
async def count_monthly_teach_tokens(
    request: Request, principal: PrincipalDep, _: NoFields
) -> JSONResponse:
    """The training tokens the caller used this period."""
    kinds = await _availability(request, member(principal))
    return answer(kinds[Kind.training].used)


@router.post("/count-monthly-tokens-left-with-org")
async def count_monthly_tokens_left_with_org(
    request: Request, principal: PrincipalDep, _: NoFields
) -> JSONResponse:
    """The inference tokens the caller may still use: min(their remaining, the
    organization's), as metering counts it; `training` beside it, the same for training."""
    kinds = await _availability(request, member(principal))
    return answer(kinds[Kind.inference].available, training=kinds[Kind.training].available)


# --- models, tokenizer and metering --------------------------------------------------------


@router.post("/get-models")
async def get_models(request: Request, principal: PrincipalDep, _: NoFields) -> JSONResponse:
    """The models the caller's organization may use, with their rates (the catalog's)."""
    settings = settings_of(request)
    models = await db_of(request).read(
        lambda session: catalog.models_for(session, principal.org_id, settings)
    )
    owner = "platform" if principal.org_id is None else "organization"
    data = [
        {
            "id": model.name,
            "name": model.name,
            "object": "model",
            "owned_by": "tokenadmin" if model.source == "platform" else owner,
            **model.rate.as_details(),
            "max_output_tokens": model.max_output_tokens,
            "upstream_configured": model.upstream_configured,
        }
        for model in models
        if model.allowed
    ]
    return answer({"object": "list", "data": data})


@router.post("/tokenizer")
async def tokenizer(
    principal: PrincipalDep, body: Annotated[Content, Depends(fields(Content))]
) -> JSONResponse:
    """The token count of `content`, by the estimator the gateway meters with."""
    return answer(estimate_tokens(body.content))


NOT_SERVED_DATASETS = frozenset({"", "all", "none"})


def _refuse_unserved(body: Query) -> None:
    """What tokenadmin does not do is refused rather than silently left out of the answer."""
    if body.file is not None:
        raise InvalidRequest(
            "Files are not read by query here: put the text in `message`.",
            code="not_served",
            details={"field": "file"},
        )
    if body.dataset is not None and body.dataset.strip().lower() not in NOT_SERVED_DATASETS:
        raise InvalidRequest(
            f"Datasets are not served here, so '{body.dataset}' can't be searched: send"
            " dataset 'none' (or 'all', which has no dataset to search either).",
            code="not_served",
            details={"field": "dataset"},
        )
    if body.live:
        raise InvalidRequest(
            "Live web search is not served here: send live 0.",
            code="not_served",
            details={"field": "live"},
        )


def _json_field(text: str | None, field: str) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError as error:
        raise InvalidRequest(f"{field}: not valid JSON ({error}).") from error


def chat_messages(message: str, system_prompt: str | None) -> list[dict[str, Any]]:
    """OpenAI chat messages of an Ask Sage `message`: a prompt, or a JSON list of turns
    [{user: "me"|"gpt", message}] (a turn of "gpt" is the assistant's)."""
    messages: list[dict[str, Any]] = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    turns: Any = None
    if message.lstrip().startswith("["):
        with contextlib.suppress(ValueError):
            turns = json.loads(message)
    if (
        isinstance(turns, list)
        and turns
        and all(isinstance(t, dict) and isinstance(t.get("message"), str) for t in turns)
    ):
        for turn in turns:
            role = "assistant" if turn.get("user") == "gpt" else "user"
            messages.append({"role": role, "content": turn["message"]})
    else:
        messages.append({"role": "user", "content": message})
    return messages


def _answer_id(request: Request) -> str:
    """The answer's `uuid`: the request's id, as the server's log lines name it."""
    rid = logs.request_id_of(request.scope) or uuid.uuid4().hex
    try:
        return str(uuid.UUID(rid))
    except ValueError:
        return rid


@router.post("/query")
async def query(
    request: Request, principal: PrincipalDep, body: Annotated[Query, Depends(fields(Query))]
) -> JSONResponse:
    """A prompt to a model of the organization, through the metering gateway (inference
    tokens, reserved first, committed at the model's rates); the text in `message`."""
    user_id = member(principal)
    _refuse_unserved(body)
    completion: dict[str, Any] = {
        "model": body.model,
        "messages": chat_messages(body.message, body.system_prompt),
    }
    optional = {
        "temperature": body.temperature,
        "max_tokens": body.max_tokens,
        "tools": _json_field(body.tools, "tools"),
        "tool_choice": _json_field(body.tool_choice, "tool_choice"),
        "reasoning_effort": body.reasoning_effort,
    }
    completion.update({name: value for name, value in optional.items() if value is not None})
    assert principal.org_id is not None
    who = Member(caller_of(principal), str(user_id), principal.org_id)
    try:
        result = await complete_chat(request.app.state.gateway, who, completion)
    except UpstreamFailed as failed:
        raise upstream_refusal(failed) from failed
    choices = result.get("choices") or [{}]
    said = choices[0].get("message") or {}
    return JSONResponse(
        {
            "response": "OK",
            "status": 200,
            "message": said.get("content") or "",
            "uuid": _answer_id(request),
            "type": "completion",
            "references": "",
            "embedding_down": False,
            "vectors_down": False,
            "tool_calls": said.get("tool_calls"),
            "model": result.get("model", body.model),
            "usage": result.get("usage"),
        }
    )


def upstream_refusal(failed: UpstreamFailed) -> TokenAdminError:
    """The model's upstream refused or failed: its own 4xx passes through, anything else is
    502; the upstream's message is kept."""
    error = failed.body.get("error") if isinstance(failed.body, dict) else None
    said = error.get("message") if isinstance(error, dict) else None
    status = failed.status if 400 <= failed.status < 500 else 502
    return TokenAdminError(
        f"The model's upstream answered {failed.status}: {said or 'no message'}",
        code="upstream_failed",
        status_code=status,
    )


async def _train(
    request: Request, principal: Principal, text: str, dataset: str | None, details: Any
) -> JSONResponse:
    user_id = member(principal)
    metered = await ingest(
        request.app.state.coalescer,
        caller_of(principal),
        str(user_id),
        tokens=None,
        text=text,
        dataset=dataset,
        idempotency_key=request.headers.get("idempotency-key"),
        details=details,
    )
    used = metered.body
    return JSONResponse(
        {
            "response": "OK",
            "status": 200,
            "tokens": used["tokens"],
            "remaining": used["remaining"],
            "journal_entry_id": used["journal_entry_id"],
        }
    )


@router.post("/train")
async def train(
    request: Request, principal: PrincipalDep, body: Annotated[Train, Depends(fields(Train))]
) -> JSONResponse:
    """Meter `content` as training tokens (ingest, by the gateway's estimator). Nothing is
    stored: tokenadmin meters, the platform keeps its datasets."""
    details = {"context": body.context} if body.context else None
    return await _train(request, principal, body.content, body.force_dataset, details)


@router.post("/train-with-file")
async def train_with_file(
    request: Request,
    principal: PrincipalDep,
    body: Annotated[TrainWithFile, Depends(fields(TrainWithFile))],
) -> JSONResponse:
    """Meter a text file's content as training tokens (UTF-8 text only)."""
    file = upload(body.file, "file")
    try:
        text = file.content.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InvalidRequest(
            "file: only UTF-8 text files are read here; send the document's text.",
            code="not_served",
        ) from error
    details = {"file": file.filename} if file.filename else None
    return await _train(request, principal, text, body.dataset, details)


# --- token requests ------------------------------------------------------------------------


@router.post("/request-tokens")
async def request_tokens(
    request: Request,
    principal: PrincipalDep,
    body: Annotated[AskTokens, Depends(fields(AskTokens))],
) -> JSONResponse:
    """Ask the administrators for more tokens of a kind, with a reason (pending until decided)."""
    user_id = member(principal)

    async def work(session: AsyncSession, act: Act) -> TokenRequestOut:
        asker = await user_service.get(session, user_id)
        org = await organization_service.lock_for_change(session, act, asker.org_id)
        user = await user_service.get(session, user_id)
        return await token_request_service.ask(
            session, act, org, user, body.kind, body.tokens, body.reason
        )

    result: JSONResponse = await write(request, principal, work)
    return result


@router.post("/get-my-token-requests")
async def get_my_token_requests(
    request: Request,
    principal: PrincipalDep,
    body: Annotated[MyRequests, Depends(fields(MyRequests))],
) -> JSONResponse:
    """The caller's token requests in every state, newest first."""
    user_id = member(principal)

    async def work(session: AsyncSession) -> TokenRequestPage:
        user = await user_service.get(session, user_id)
        query = token_request_service.RequestQuery(
            org_id=user.org_id,
            user_id=user.id,
            state=body.state,
            kind=None if body.kind is None else body.kind.value,
            limit=body.limit,
            offset=body.start,
        )
        return await token_request_service.search(session, query)

    return answer(await db_of(request).read(work))


@router.post("/admin-get-token-requests")
async def admin_get_token_requests(
    request: Request,
    principal: PrincipalDep,
    body: Annotated[OrgRequests, Depends(fields(OrgRequests))],
) -> JSONResponse:
    """The organization's token requests, newest first: pending ones unless `state` says
    otherwise (`any`: every state)."""
    org_id = admin_org(principal, body.org_id)

    async def work(session: AsyncSession) -> TokenRequestPage:
        user_id = None
        if body.user is not None:
            user_id = (await user_service.find_by_ref(session, org_id, body.user)).id
        query = token_request_service.RequestQuery(
            org_id=org_id,
            user_id=user_id,
            state=None if body.state == "any" else body.state,
            kind=None if body.kind is None else body.kind.value,
            limit=body.limit,
            offset=body.start,
        )
        return await token_request_service.search(session, query)

    return answer(await db_of(request).read(work))


@router.post("/admin-review-token-request")
async def admin_review_token_request(
    request: Request,
    principal: PrincipalDep,
    body: Annotated[Review, Depends(fields(Review))],
) -> JSONResponse:
    """Approve (possibly another amount: `tokens`) or deny (with a `note`) a pending request."""
    found, _ = await db_of(request).read(lambda s: token_request_service.get(s, body.id))
    if principal.org_id is not None and found.org_id != principal.org_id:
        raise NotFound("Token request not found.")
    org_id = admin_org(principal, found.org_id if principal.is_operator else None)

    async def work(session: AsyncSession, act: Act) -> TokenRequestOut:
        org = await organization_service.lock_for_change(session, act, org_id)
        if body.decision == "approve":
            return await token_request_service.approve(
                session, act, org, body.id, amount=body.tokens, note=body.note
            )
        return await token_request_service.deny(session, act, org, body.id, note=body.note or "")

    result: JSONResponse = await write(request, principal, work)
    return result


# --- distribution --------------------------------------------------------------------------


Step = Callable[[AsyncSession, Act, Organization], Awaitable[distribution_service.Distribution]]


async def _distribution(
    request: Request, principal: Principal, org_id: uuid.UUID, step: Step
) -> JSONResponse:
    """A distribution step with the organization locked, answered as `DistributionOut`."""

    async def work(session: AsyncSession, act: Act) -> DistributionOut:
        org = await organization_service.lock_for_change(session, act, org_id)
        return (await step(session, act, org)).out()

    result: JSONResponse = await write(request, principal, work)
    return result


def _rules(body: DistributionPreview | DistributionExecute) -> DistributionRequest:
    return DistributionRequest.model_validate(body.model_dump(exclude={"org_id", "preview_token"}))


@router.post("/admin-token-distribution-preview")
async def admin_token_distribution_preview(
    request: Request,
    principal: PrincipalDep,
    body: Annotated[DistributionPreview, Depends(fields(DistributionPreview))],
) -> JSONResponse:
    """Preview distributing the balance (nothing is saved); `preview_token` names it."""
    org_id = admin_org(principal, body.org_id)
    rules = _rules(body)

    async def step(
        session: AsyncSession, act: Act, org: Organization
    ) -> distribution_service.Distribution:
        return await distribution_service.preview(session, act, org, rules)

    return await _distribution(request, principal, org_id, step)


@router.post("/admin-token-distribution-execute")
async def admin_token_distribution_execute(
    request: Request,
    principal: PrincipalDep,
    body: Annotated[DistributionExecute, Depends(fields(DistributionExecute))],
) -> JSONResponse:
    """Distribute the balance in one atomic change, or nothing; with `preview_token`, only if
    nothing changed since that preview."""
    org_id = admin_org(principal, body.org_id)
    rules = _rules(body)

    async def step(
        session: AsyncSession, act: Act, org: Organization
    ) -> distribution_service.Distribution:
        return await distribution_service.apply(session, act, org, rules, body.preview_token)

    return await _distribution(request, principal, org_id, step)


# --- operators -----------------------------------------------------------------------------


@router.post("/superadmin-get-all-organizations")
async def superadmin_get_all_organizations(
    request: Request, principal: PrincipalDep, _: NoFields
) -> JSONResponse:
    """Every organization (platform operators)."""
    principal.require_operator("read")
    orgs = await db_of(request).read(organization_repository.list_all)
    return answer([OrganizationOut.of(org) for org in orgs])


@router.post("/superadmin-add-organization")
async def superadmin_add_organization(
    request: Request,
    principal: PrincipalDep,
    body: Annotated[OrganizationCreate, Depends(fields(OrganizationCreate))],
) -> JSONResponse:
    """Create an organization (platform operators)."""
    principal.require_operator()

    async def work(session: AsyncSession, act: Act) -> OrganizationOut:
        return OrganizationOut.of(
            await organization_service.create(session, act, **body.model_dump())
        )

    result: JSONResponse = await write(request, principal, work)
    return result


@router.post("/superadmin-add-organization-purchase")
async def superadmin_add_organization_purchase(
    request: Request,
    principal: PrincipalDep,
    body: Annotated[AddPurchase, Depends(fields(AddPurchase))],
) -> JSONResponse:
    """Record a purchase of tokens for an organization, with an optional expiry (operators)."""
    principal.require_operator()

    async def work(session: AsyncSession, act: Act) -> PurchaseOut:
        org = await organization_service.lock_for_change(session, act, body.org_id)
        purchase = await organization_service.record_purchase(
            session,
            act,
            org,
            inference_amount=body.inference_amount,
            training_amount=body.training_amount,
            purchased_on=body.purchased_on,
            expires_at=body.expires_at,
            payer=body.payer,
            note=body.note,
        )
        return PurchaseOut.of(purchase)

    result: JSONResponse = await write(request, principal, work)
    return result


@router.post("/superadmin-get-organization-purchases")
async def superadmin_get_organization_purchases(
    request: Request,
    principal: PrincipalDep,
    body: Annotated[OrgPurchases, Depends(fields(OrgPurchases))],
) -> JSONResponse:
    """An organization's purchases, expired ones included (operators)."""
    principal.require_operator("read")

    async def work(session: AsyncSession) -> list[PurchaseOut]:
        org = await organization_service.get(session, body.org_id)
        return [PurchaseOut.of(p) for p in await organization_service.list_purchases(session, org)]

    return answer(await db_of(request).read(work))
