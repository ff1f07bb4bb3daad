"""The client's model catalog and personal key operations, through the async client against
the app (SQLite and PostgreSQL): rates as exact Decimals both ways, write-only upstream
keys, model access, and personal keys whose secret is shown once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
from fastapi import FastAPI

from tests.client_support import async_client, funded
from tokenadmin.client import AsyncClient, InvalidRequest, NotFound, Unauthenticated


@pytest.fixture
async def tokens(app: FastAPI, operator_key: str) -> AsyncIterator[AsyncClient]:
    async with async_client(app, operator_key) as client:
        yield client


async def test_rates_access_and_upstream_round_trip_exactly(tokens: AsyncClient) -> None:
    org = await funded(tokens)
    platform = await tokens.set_platform_model_rate(
        "meta-llama/Llama-3-8B",
        Decimal("0.125"),
        "0.5",
        upstream_base_url="https://llm.example/v1",
        upstream_api_key="sk-platform",
    )
    assert (platform.prompt_rate, platform.completion_rate) == (Decimal("0.125"), Decimal("0.5"))
    assert platform.upstream_api_key_set
    assert [m.name for m in await tokens.list_platform_models()] == ["meta-llama/Llama-3-8B"]

    own = await tokens.set_model_rate(org.id, "meta-llama/Llama-3-8B", 1, "2.75")
    assert own.org_id == str(org.id)
    assert own.completion_rate == Decimal("2.75")
    access = await tokens.set_model_access(org.id, ["meta-llama/Llama-3-8B"])
    assert access.allowed_models == ["meta-llama/Llama-3-8B"]
    upstream = await tokens.set_upstream(org.id, "https://ours.example/v1", api_key="sk-ours")
    assert (upstream.base_url, upstream.api_key_set) == ("https://ours.example/v1", True)
    kept = await tokens.set_upstream(org.id, "https://two.example/v1")
    assert kept.api_key_set
    cleared = await tokens.set_upstream(org.id, "https://two.example/v1", clear_api_key=True)
    assert not cleared.api_key_set

    listed = await tokens.list_models(org.id)
    (model,) = listed.models
    assert (model.source, model.prompt_rate, model.allowed) == ("organization", Decimal(1), True)
    assert listed.allowed_models == ["meta-llama/Llama-3-8B"]

    await tokens.delete_model_rate(org.id, "meta-llama/Llama-3-8B")
    (model,) = (await tokens.list_models(org.id)).models
    assert (model.source, model.prompt_rate) == ("platform", Decimal("0.125"))
    everything = await tokens.set_model_access(org.id, None)
    assert everything.allowed_models is None
    await tokens.delete_platform_model_rate("meta-llama/Llama-3-8B")
    assert (await tokens.list_models(org.id)).models == []
    with pytest.raises(NotFound) as missing:
        await tokens.delete_platform_model_rate("meta-llama/Llama-3-8B")
    assert missing.value.code == "model_not_found"


async def test_an_inexact_rate_raises_invalid_rate(tokens: AsyncClient) -> None:
    with pytest.raises(InvalidRequest) as refused:
        await tokens.set_platform_model_rate("m", "0.1234567", 1)
    assert refused.value.code == "invalid_rate"


async def test_personal_keys_are_created_listed_and_revoked(
    app: FastAPI, tokens: AsyncClient
) -> None:
    org = await funded(tokens)
    ana = await tokens.create_user(org.id, "ana@example.com", "Ana")
    created = await tokens.create_personal_key(ana.id, "laptop")
    assert created.user_id == ana.id
    async with async_client(app, created.key) as as_ana:
        assert (await as_ana.get_user(ana.id)).email == "ana@example.com"
        second = await as_ana.create_personal_key(ana.id, "script")
        listed = await as_ana.list_personal_keys(ana.id)
        assert [k.name for k in listed] == ["laptop", "script"]
        revoked = await as_ana.revoke_personal_key(ana.id, second.id)
        assert revoked.revoked_at is not None
    async with async_client(app, second.key) as revoked_key:
        with pytest.raises(Unauthenticated):
            await revoked_key.get_user(ana.id)


async def test_usage_by_counts_is_charged_at_the_rates_and_documents_are_ingested(
    tokens: AsyncClient,
) -> None:
    org = await funded(tokens)
    ana = await tokens.create_user(org.id, "ana@example.com", "Ana", max_train_tokens=10_000)
    await tokens.set_model_rate(org.id, "gpt-x", "0.5", 3)
    used = await tokens.record_usage(
        ana.id, "inference", model="gpt-x", prompt_tokens=11, completion_tokens=2
    )
    assert used.tokens == 12  # ceil(5.5 + 6)
    by_count = await tokens.ingest(ana.id, tokens=40, dataset="handbook", document="a.md")
    by_text = await tokens.ingest(ana.email, text="Ingest this sentence, please.")
    assert by_count.tokens == 40
    assert by_text.tokens > 0
    assert by_text.used == 40 + by_text.tokens
    assert by_text.kind == "training"
    with pytest.raises(InvalidRequest):
        await tokens.ingest(ana.id, tokens=1, text="both")
