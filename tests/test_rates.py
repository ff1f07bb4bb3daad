"""The catalog service: exact rates, model access, where a model's requests go, and
personal API keys acting as their user."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest

from tests.helpers import Api, funded_org
from tokenadmin.act import Act
from tokenadmin.api_key import service as api_key_service
from tokenadmin.catalog import service as catalog
from tokenadmin.catalog.service import DEFAULT_RATE, Rate
from tokenadmin.clock import FakeClock
from tokenadmin.config import Settings
from tokenadmin.database import Database
from tokenadmin.errors import (
    InvalidRate,
    InvalidRequest,
    ModelNotAllowed,
    ModelNotFound,
    Unauthenticated,
    UpstreamNotConfigured,
)
from tokenadmin.journal.service import verify
from tokenadmin.models import User


def test_tokens_charged_are_the_ceiling_of_the_exact_sum() -> None:
    rate = Rate(Decimal("0.1"), Decimal("0.3"))
    assert rate.charge(10, 10) == 4  # 1 + 3 exactly: no float would give 4.000000000000001
    assert rate.charge(1, 0) == 1  # 0.1 is charged as a whole token
    assert rate.charge(0, 0) == 0
    assert Rate(Decimal("0.000001"), Decimal(0)).charge(2**53, 0) == 9_007_199_255
    assert Rate(Decimal(1_000_000), Decimal(1_000_000)).charge(2**53, 2**53) == 2 * 2**53 * 10**6
    assert DEFAULT_RATE.charge(123, 456) == 579


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("0.5", "0.5"),
        ("2", "2"),
        ("1.250000", "1.25"),
        ("0.000001", "0.000001"),
        (" 3 ", "3"),
        ("0", "0"),
    ],
)
def test_rates_are_exact_decimals_kept_in_canonical_text(text: str, canonical: str) -> None:
    assert catalog.rate_text(catalog.parse_rate(text)) == canonical


@pytest.mark.parametrize(
    "bad", ["-1", "0.0000001", "1e3", "NaN", "Infinity", "abc", "", "1000000.5", True, 0.1]
)
def test_rates_out_of_range_or_too_fine_are_refused_by_name(bad: object) -> None:
    with pytest.raises(InvalidRate) as refused:
        catalog.parse_rate(bad, "prompt_rate")
    assert refused.value.code == "invalid_rate"
    assert refused.value.details == {"field": "prompt_rate"}


async def _org(api: Api) -> uuid.UUID:
    return uuid.UUID(await funded_org(api))


async def test_an_organization_override_wins_and_its_upstream_comes_first(
    api: Api, db: Database, clock: FakeClock
) -> None:
    org_id = await _org(api)
    act = Act("test", clock.now())
    settings = Settings(upstream_base_url="https://settings.example/v1", upstream_api_key="s")

    async def setup(session):  # type: ignore[no-untyped-def]
        await catalog.set_model(
            session,
            act,
            None,
            "gpt-x",
            prompt_rate="0.5",
            completion_rate="1.5",
            upstream_base_url="https://platform.example/v1",
            upstream_api_key="p",
        )
        await catalog.set_model(session, act, None, "plain", prompt_rate=1, completion_rate=2)

    await db.write(setup)
    plain = await db.read(lambda s: catalog.route(s, settings, org_id, "plain"))
    assert plain.upstream.base_url == "https://settings.example/v1"
    assert plain.info.rate == Rate(Decimal(1), Decimal(2))
    platform = await db.read(lambda s: catalog.route(s, settings, org_id, "gpt-x"))
    assert (platform.upstream.base_url, platform.upstream.api_key) == (
        "https://platform.example/v1",
        "p",
    )
    assert platform.info.source == "platform"

    await db.write(lambda s: catalog.set_upstream(s, act, org_id, "https://org.example/v1/", "o"))
    via_org = await db.read(lambda s: catalog.route(s, settings, org_id, "gpt-x"))
    assert (via_org.upstream.base_url, via_org.upstream.api_key) == ("https://org.example/v1", "o")

    await db.write(
        lambda s: catalog.set_model(
            s,
            act,
            org_id,
            "gpt-x",
            prompt_rate="0.25",
            completion_rate="0.75",
            upstream_base_url="https://own.example/v1",
            upstream_model="gpt-x-2026",
        )
    )
    own = await db.read(lambda s: catalog.route(s, settings, org_id, "gpt-x"))
    assert own.info.source == "organization"
    assert own.info.rate == Rate(Decimal("0.25"), Decimal("0.75"))
    assert (own.upstream.base_url, own.upstream.api_key, own.upstream.model) == (
        "https://own.example/v1",
        None,
        "gpt-x-2026",
    )
    # Another organization still sees the platform's rates.
    other = await _org(api)
    assert (await db.read(lambda s: catalog.rate_for(s, other, "gpt-x"))) == Rate(
        Decimal("0.5"), Decimal("1.5")
    )
    assert (await db.read(lambda s: catalog.rate_for(s, other, "unknown"))) == DEFAULT_RATE

    # Removing the override brings the platform's rates back.
    await db.write(lambda s: catalog.delete_model(s, act, org_id, "gpt-x"))
    assert (await db.read(lambda s: catalog.rate_for(s, org_id, "gpt-x"))).prompt == Decimal("0.5")
    report = await db.read(verify)
    assert report.clean


async def test_model_access_refuses_models_not_named_and_unknown_models(
    api: Api, db: Database, clock: FakeClock
) -> None:
    org_id = await _org(api)
    act = Act("test", clock.now())
    for name in ("a-model", "b-model"):
        await db.write(
            lambda s, name=name: catalog.set_model(  # type: ignore[misc]
                s,
                act,
                None,
                name,
                prompt_rate=1,
                completion_rate=1,
                upstream_base_url="https://u.example/v1",
            )
        )
    await db.write(lambda s: catalog.set_access(s, act, org_id, ["b-model"]))
    with pytest.raises(ModelNotAllowed):
        await db.read(lambda s: catalog.route(s, None, org_id, "a-model"))
    assert (await db.read(lambda s: catalog.route(s, None, org_id, "b-model"))).info.allowed
    with pytest.raises(ModelNotFound):
        await db.read(lambda s: catalog.route(s, None, org_id, "nope"))
    listed = await db.read(lambda s: catalog.models_for(s, org_id))
    assert [(m.name, m.allowed) for m in listed] == [("a-model", False), ("b-model", True)]
    await db.write(lambda s: catalog.set_access(s, act, org_id, None))
    assert all(m.allowed for m in await db.read(lambda s: catalog.models_for(s, org_id)))
    journal = await api.get(f"/v1/organizations/{org_id}/journal?action=model_access_changed")
    assert len(journal["entries"]) == 2


async def test_a_model_without_any_upstream_is_refused_as_not_configured(
    api: Api, db: Database, clock: FakeClock
) -> None:
    org_id = await _org(api)
    act = Act("test", clock.now())
    await db.write(
        lambda s: catalog.set_model(s, act, None, "lonely", prompt_rate=1, completion_rate=1)
    )
    with pytest.raises(UpstreamNotConfigured):
        await db.read(lambda s: catalog.route(s, Settings(), org_id, "lonely"))


async def test_bad_names_and_upstreams_are_refused_and_change_nothing(
    api: Api, db: Database, clock: FakeClock
) -> None:
    org_id = await _org(api)
    act = Act("test", clock.now())
    for kwargs in (
        {"name": "has space"},
        {"name": "ok", "upstream_base_url": "ftp://x"},
        {"name": "ok", "upstream_base_url": "https://x", "upstream_api_key": "with space"},
        {"name": "ok", "max_output_tokens": 0},
    ):
        with pytest.raises(InvalidRequest):
            await db.write(
                lambda s, kwargs=kwargs: catalog.set_model(  # type: ignore[misc]
                    s, act, org_id, prompt_rate=1, completion_rate=1, **kwargs
                )
            )
    assert await db.read(lambda s: catalog.models_for(s, org_id)) == []


async def test_a_personal_key_acts_as_its_user_with_their_role_until_deactivated(
    api: Api, db: Database, clock: FakeClock
) -> None:
    org_id = await funded_org(api)
    member = await api.user(org_id, "mia@example.com")
    act = Act("test", clock.now())

    async def make(session):  # type: ignore[no-untyped-def]
        user = await session.get(User, uuid.UUID(member["id"]))
        return await api_key_service.create_personal(session, act, user, name="laptop")

    key, secret = await db.write(make)
    principal = await db.read(lambda s: api_key_service.authenticate(s, secret))
    assert principal.user_id == uuid.UUID(member["id"])
    assert principal.actor == "user:mia@example.com"
    assert principal.scopes == frozenset()
    assert str(principal.org_id) == org_id
    # Not among the organization's service keys.
    assert key.id not in [
        k.id for k in await db.read(lambda s: api_key_service.list_keys(s, uuid.UUID(org_id)))
    ]
    await api.post(f"/v1/users/{member['id']}/deactivate", expect=200)
    with pytest.raises(Unauthenticated):
        await db.read(lambda s: api_key_service.authenticate(s, secret))


async def test_usage_sent_as_counts_is_charged_by_the_models_rates_and_keeps_them(
    api: Api, db: Database, clock: FakeClock
) -> None:
    org_id = await _org(api)
    ana = await api.user(str(org_id), "ana@example.com")
    act = Act("test", clock.now())
    await db.write(
        lambda s: catalog.set_model(s, act, None, "gpt-x", prompt_rate="0.5", completion_rate="1.5")
    )
    event = {"user": ana["id"], "kind": "inference", "model": "gpt-x"}
    accepted = await api.post(
        "/v1/usage",
        {**event, "prompt_tokens": 1_001, "completion_tokens": 100},
        expect=200,
        idempotency_key="u1",
    )
    assert accepted["tokens"] == 651  # ceil(500.5 + 150)
    [entry] = (await api.get(f"/v1/organizations/{org_id}/journal?action=usage"))["entries"]
    assert entry["amount"] == 651
    assert entry["details"] == {
        "model": "gpt-x",
        "prompt_tokens": 1_001,
        "completion_tokens": 100,
        "prompt_rate": "0.5",
        "completion_rate": "1.5",
    }
    # With a model, `tokens` is what the platform charged: the counts need not add up.
    charged = await api.post(
        "/v1/usage",
        {**event, "tokens": 10, "prompt_tokens": 100, "completion_tokens": 100},
        expect=200,
        idempotency_key="u2",
    )
    assert charged["tokens"] == 10
    # Neither tokens nor both counts: refused, nothing metered.
    refused = await api.call(
        "POST", "/v1/usage", json={**event, "prompt_tokens": 5}, idempotency_key="u3"
    )
    assert refused.status_code == 422
    assert refused.json()["error"]["details"]["errors"][0]["field"] == "tokens"
    free = await api.call(
        "POST",
        "/v1/usage",
        json={**event, "model": None, "prompt_tokens": 0, "completion_tokens": 0},
        idempotency_key="u4",
    )
    assert (free.status_code, free.json()["error"]["code"]) == (422, "invalid_amount")
    assert (await api.get(f"/v1/users/{ana['id']}"))["inference"]["used"] == 661
