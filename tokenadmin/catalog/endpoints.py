"""The model catalog routes: thin callers of catalog.service.

Platform operators keep the platform's default rates (`/v1/models`); an organization's
administrators (and operators) override them for their organization, choose which models
its users may call, and set its upstream. Anyone of the organization reads its models.
Upstream keys are write-only: answers say whether one is set.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.act import Act
from tokenadmin.auth.audit import AUDITED
from tokenadmin.auth.principal import Principal
from tokenadmin.catalog import repository, service
from tokenadmin.catalog.schemas import (
    AccessOut,
    CatalogModelOut,
    ModelAccessIn,
    ModelSet,
    OrganizationModelsOut,
    UpstreamIn,
    UpstreamOut,
)
from tokenadmin.config import Settings
from tokenadmin.deps import DatabaseDep, PrincipalDep, SettingsDep, idempotent_write, locked_write
from tokenadmin.errors import ModelNotFound
from tokenadmin.models import Organization
from tokenadmin.organization import service as organization_service

router = APIRouter(prefix="/v1/models", tags=["models"], dependencies=AUDITED)
org_router = APIRouter(prefix="/v1/organizations/{org_id}", tags=["models"], dependencies=AUDITED)

NameInPath = Annotated[
    str,
    Path(
        min_length=1,
        max_length=200,
        description="The model's name (it may hold slashes, as in meta-llama/Llama-3-8B).",
    ),
]


def allow_reader(principal: Principal, org_id: uuid.UUID) -> None:
    """Anyone of the organization (a member's own key included) reads its models; an
    operator needs `read`; to anyone else the organization does not exist."""
    if principal.is_operator or principal.org_id != org_id:
        principal.require(org_id, "read")


async def organization_models(
    session: AsyncSession, org_id: uuid.UUID, settings: Settings | None
) -> OrganizationModelsOut:
    """An organization's models merged with the platform's, its access list and upstream."""
    org = await organization_service.get(session, org_id)
    return OrganizationModelsOut.of(org, await service.models_for(session, org_id, settings))


async def set_model(
    session: AsyncSession, act: Act, org_id: uuid.UUID | None, name: str, body: ModelSet
) -> CatalogModelOut:
    """Save a row of the catalog. An upstream key left out of the body stays as stored."""
    await service.set_model(
        session,
        act,
        org_id,
        name,
        prompt_rate=body.prompt_rate,
        completion_rate=body.completion_rate,
        upstream_base_url=body.upstream_base_url,
        upstream_api_key=(
            body.upstream_api_key if "upstream_api_key" in body.model_fields_set else service.UNSET
        ),
        upstream_model=body.upstream_model,
        max_output_tokens=body.max_output_tokens,
    )
    return await stored(session, org_id, name)


async def stored(session: AsyncSession, org_id: uuid.UUID | None, name: str) -> CatalogModelOut:
    service.check_name(name)  # before any query: a name with NUL can't reach PostgreSQL
    row = await repository.named(session, org_id, name)
    if row is None:
        where = "The platform" if org_id is None else "This organization"
        raise ModelNotFound(f"{where} has no model '{name[:200]}'.")
    return CatalogModelOut.of(row)


async def delete_model(
    session: AsyncSession, act: Act, org_id: uuid.UUID | None, name: str
) -> CatalogModelOut:
    """Remove a row of the catalog; the answer is the row as it was."""
    removed = await stored(session, org_id, name)
    await service.delete_model(session, act, org_id, name)
    return removed


# --- the platform's defaults ---------------------------------------------------------------


@router.get("", response_model=list[CatalogModelOut])
async def list_platform_models(principal: PrincipalDep, db: DatabaseDep) -> list[CatalogModelOut]:
    """The platform's default rates, by name (platform operators)."""
    principal.require_operator("read")
    rows = await db.read(lambda session: repository.rows_for(session, None))
    return [CatalogModelOut.of(row) for row in rows]


@router.put("/{name:path}", response_model=CatalogModelOut)
async def set_platform_model(
    name: NameInPath, body: ModelSet, request: Request, principal: PrincipalDep
) -> JSONResponse:
    """Set a model's default rates and upstream for every organization (platform operators)."""
    principal.require_operator()

    async def work(session: AsyncSession, act: Act) -> CatalogModelOut:
        return await set_model(session, act, None, name, body)

    return await idempotent_write(request, principal, work)


@router.delete("/{name:path}", response_model=CatalogModelOut)
async def delete_platform_model(
    name: NameInPath, request: Request, principal: PrincipalDep
) -> JSONResponse:
    """Take a model out of the platform's catalog (platform operators); organizations'
    own rows of it stay."""
    principal.require_operator()

    async def work(session: AsyncSession, act: Act) -> CatalogModelOut:
        return await delete_model(session, act, None, name)

    return await idempotent_write(request, principal, work)


# --- an organization's models ----------------------------------------------------------------


@org_router.get("/models", response_model=OrganizationModelsOut)
async def list_organization_models(
    org_id: uuid.UUID, principal: PrincipalDep, db: DatabaseDep, settings: SettingsDep
) -> OrganizationModelsOut:
    """Every model with the rates that apply to the organization (its own or the
    platform's), whether its users may call it, and whether it has an upstream."""
    allow_reader(principal, org_id)
    return await db.read(lambda session: organization_models(session, org_id, settings))


@org_router.put("/models/{name:path}", response_model=CatalogModelOut)
async def set_organization_model(
    org_id: uuid.UUID,
    name: NameInPath,
    body: ModelSet,
    request: Request,
    principal: PrincipalDep,
) -> JSONResponse:
    """Set the organization's own rates (and upstream) of a model, over the platform's."""
    principal.require(org_id, "admin")

    async def work(session: AsyncSession, act: Act, org: Organization) -> CatalogModelOut:
        return await set_model(session, act, org.id, name, body)

    return await locked_write(request, principal, org_id, work)


@org_router.delete("/models/{name:path}", response_model=CatalogModelOut)
async def delete_organization_model(
    org_id: uuid.UUID, name: NameInPath, request: Request, principal: PrincipalDep
) -> JSONResponse:
    """Drop the organization's own rates of a model: the platform's apply again."""
    principal.require(org_id, "admin")

    async def work(session: AsyncSession, act: Act, org: Organization) -> CatalogModelOut:
        return await delete_model(session, act, org.id, name)

    return await locked_write(request, principal, org_id, work)


@org_router.put("/model-access", response_model=AccessOut)
async def set_model_access(
    org_id: uuid.UUID, body: ModelAccessIn, request: Request, principal: PrincipalDep
) -> JSONResponse:
    """Choose the models the organization's users may call (null: every model)."""
    principal.require(org_id, "admin")

    async def work(session: AsyncSession, act: Act, org: Organization) -> AccessOut:
        return AccessOut(
            allowed_models=await service.set_access(session, act, org.id, body.allowed)
        )

    return await locked_write(request, principal, org_id, work)


@org_router.put("/upstream", response_model=UpstreamOut)
async def set_upstream(
    org_id: uuid.UUID, body: UpstreamIn, request: Request, principal: PrincipalDep
) -> JSONResponse:
    """Set the organization's upstream: where its models' requests go when a model names
    none of its own. The key is write-only."""
    principal.require(org_id, "admin")

    async def work(session: AsyncSession, act: Act, org: Organization) -> UpstreamOut:
        api_key = body.api_key if "api_key" in body.model_fields_set else service.UNSET
        return UpstreamOut.of(
            await service.set_upstream(session, act, org.id, body.base_url, api_key)
        )

    return await locked_write(request, principal, org_id, work)
