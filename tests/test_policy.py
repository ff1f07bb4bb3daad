"""Allocation policies: presets, auto-increase, reclamation, temporary boosts, the preview,
the log, refusals that change nothing, and the job that runs once across processes."""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from tests.client_support import async_client
from tests.helpers import Api, funded_org
from tests.scenarios import entries_since, error_of, get_user, last_entry_id, org_api
from tests.test_bad_inputs import HTML, PASSWORD, sign_in
from tokenadmin.clock import FakeClock
from tokenadmin.config import Settings
from tokenadmin.database import Database
from tokenadmin.jobs.scheduler import Scheduler
from tokenadmin.models import Event
from tokenadmin.policy import service as policy_service
from tokenadmin.policy.schemas import KindPolicyIn
from tokenadmin.tokens import Kind

MAX = 2**53


def policy_path(org: str, tail: str = "") -> str:
    return f"/v1/organizations/{org}/policy{tail}"


def boosts_path(org: str, tail: str = "") -> str:
    return f"/v1/organizations/{org}/boosts{tail}"


async def set_policy(api: Api, org: str, expect: int = 200, **body: Any) -> Any:
    response = await api.call("PUT", policy_path(org), json=body, expect=expect)
    return response.json()


async def org_with(
    api: Api, *allowances: int, inference: int = 10_000_000, **fields: Any
) -> tuple[str, list[dict[str, Any]]]:
    """An organization with one user per allowance given (Max Tokens)."""
    org = await funded_org(api, inference=inference, training=1_000_000, **fields)
    users = []
    for index, allowance in enumerate(allowances):
        user = await api.user(org, f"u{index}@example.com", max_tokens=allowance)
        users.append(user)
    return org, users


def moves_of(result: dict[str, Any]) -> list[tuple[str, str, str, int, int]]:
    return [(m["email"], m["kind"], m["rule"], m["before"], m["after"]) for m in result["moves"]]


async def test_presets_fill_in_the_numbers_and_a_value_sent_with_one_makes_it_custom(
    api: Api,
) -> None:
    org = await funded_org(api, min_inference=300_000)
    shown = await api.get(policy_path(org))
    assert shown["inference"]["enabled"] is False
    assert shown["inference"]["saved"] is False
    assert shown["presets"]["conservative"]["inference"]["floor"] == 300_000  # the minimum

    saved = await set_policy(api, org, inference={"preset": "conservative", "enabled": True})
    inference = saved["inference"]
    assert saved["applied"] is True
    assert (inference["preset"], inference["floor"], inference["ceiling"]) == (
        "conservative",
        300_000,
        1_000_000,
    )
    assert (inference["trigger_percent"], inference["bump_percent"]) == (90, 10)
    assert (inference["cooldown_hours"], inference["idle_days"]) == (168, 14)
    assert saved["training"]["saved"] is False

    saved = await set_policy(api, org, inference={"preset": "aggressive", "trigger_percent": 75})
    inference = saved["inference"]
    assert (inference["preset"], inference["trigger_percent"], inference["ceiling"]) == (
        "custom",
        75,
        10_000_000,
    )
    saved = await set_policy(api, org, inference={"bump_amount": 50_000})
    assert (saved["inference"]["bump_amount"], saved["inference"]["bump_percent"]) == (50_000, None)
    assert (await api.get(policy_path(org)))["inference"]["version"] == 3


async def test_auto_increase_raises_past_the_trigger_once_per_cooldown_up_to_the_ceiling(
    api: Api, clock: FakeClock
) -> None:
    org, (ana, bo) = await org_with(api, 1_000_000, 1_000_000)
    await api.use(ana["id"], 850_000)  # 85 %
    await api.use(bo["id"], 500_000)  # 50 %: under the trigger
    await set_policy(api, org, inference={"preset": "standard", "enabled": True})

    preview = await api.get(policy_path(org, "/preview"))
    assert moves_of(preview) == [("u0@example.com", "inference", "increase", 1_000_000, 1_250_000)]
    assert "85 %" in preview["moves"][0]["why"]
    assert (await get_user(api, ana["id"]))["max_tokens"] == 1_000_000  # a preview writes nothing

    before = await last_entry_id(api, org)
    ran = await api.post(policy_path(org, "/run"), {}, expect=200)
    assert ran["applied"] is True
    assert moves_of(ran) == moves_of(preview)
    assert (await get_user(api, ana["id"]))["max_tokens"] == 1_250_000
    entries = [
        e for e in await entries_since(api, org, before) if e["action"] == "allowance_changed"
    ]
    assert len(entries) == 1
    assert entries[0]["details"]["cause"] == "policy"
    assert entries[0]["details"]["rule"] == "increase"
    assert entries[0]["details"]["run"] == ran["run_id"]

    await api.use(ana["id"], 250_000)  # 1,100,000 of 1,250,000: 88 %
    again = await api.post(policy_path(org, "/run"), {}, expect=200)
    assert again["moves"] == []
    assert [(s["email"], s["code"]) for s in again["skipped"]] == [("u0@example.com", "cooldown")]

    clock.advance(hours=25)  # past the cooldown of 24 h
    await set_policy(api, org, inference={"ceiling": 1_400_000})
    capped = await api.post(policy_path(org, "/run"), {}, expect=200)
    assert moves_of(capped) == [("u0@example.com", "inference", "increase", 1_250_000, 1_400_000)]
    assert "ceiling" in capped["moves"][0]["why"]

    clock.advance(hours=25)
    at_ceiling = await api.post(policy_path(org, "/run"), {}, expect=200)
    assert at_ceiling["moves"] == []
    assert at_ceiling["skipped"] == []

    log = await api.get(policy_path(org, "/log"))
    assert [(m["rule"], m["before"], m["after"]) for m in log["moves"]] == [
        ("increase", 1_250_000, 1_400_000),
        ("increase", 1_000_000, 1_250_000),
    ]


async def test_auto_increase_takes_what_the_balance_has_left_then_skips_and_never_the_deactivated(
    api: Api,
) -> None:
    # Capacity 2,100,000: 1,000,000 + 500,000 + 300,000 allocated, 300,000 left.
    org, (ana, bo, cy) = await org_with(api, 1_000_000, 500_000, 300_000, inference=2_100_000)
    await api.use(ana["id"], 950_000)  # 95 %: the fullest, raised first
    await api.use(bo["id"], 450_000)  # 90 %
    await api.use(cy["id"], 300_000)  # all of it: deactivated, they keep what they used
    await api.post(f"/v1/users/{cy['id']}/deactivate", expect=200)
    await set_policy(
        api, org, inference={"preset": "standard", "enabled": True, "bump_amount": 500_000}
    )

    ran = await api.post(policy_path(org, "/run"), {}, expect=200)
    assert moves_of(ran) == [("u0@example.com", "inference", "increase", 1_000_000, 1_300_000)]
    assert "cut to the 300,000 left" in ran["moves"][0]["why"]
    assert [(s["email"], s["code"]) for s in ran["skipped"]] == [
        ("u1@example.com", "exceeds_balance")
    ]
    balance = await api.balance(org)
    assert balance["inference"]["balance"] == 0


async def test_reclamation_lowers_idle_users_to_the_floor_and_never_below_what_they_used(
    api: Api, clock: FakeClock
) -> None:
    org, (_idle, busy, spent) = await org_with(api, 1_000_000, 1_000_000, 1_000_000, period="none")
    await api.use(spent["id"], 600_000)  # then idle: kept at what they used
    clock.advance(days=20)
    await api.use(busy["id"], 1_000)
    clock.advance(days=11)  # idle and spent: 31 days without activity; busy: 11
    await set_policy(
        api, org, inference={"preset": "standard", "enabled": True, "increase_enabled": False}
    )
    balance_before = (await api.balance(org))["inference"]["balance"]

    preview = await api.get(policy_path(org, "/preview"))
    assert sorted(moves_of(preview)) == [
        ("u0@example.com", "inference", "reclaim", 1_000_000, 200_000),
        ("u2@example.com", "inference", "reclaim", 1_000_000, 600_000),
    ]
    ran = await api.post(policy_path(org, "/run"), {}, expect=200)
    assert sorted(moves_of(ran)) == sorted(moves_of(preview))
    assert (await get_user(api, busy["id"]))["max_tokens"] == 1_000_000
    assert (await api.balance(org))["inference"]["balance"] == balance_before + 1_200_000


async def test_the_job_reclaims_on_its_schedule_and_runs_once_across_schedulers(
    api: Api, clock: FakeClock, db: Database
) -> None:
    org, (idle,) = await org_with(api, 1_000_000)
    await set_policy(api, org, inference={"preset": "standard", "enabled": True})
    clock.advance(days=31)
    settings = Settings(database_url="sqlite:///unused.db")
    schedulers = []
    for number in range(3):
        scheduler = Scheduler(db, clock, holder=f"process-{number}")
        policy_service.register(scheduler, settings)
        schedulers.append(scheduler)
    ran = await asyncio.gather(*(s.run_due() for s in schedulers))
    assert sorted(name for names in ran for name in names) == ["policies.run"]
    assert (await get_user(api, idle["id"]))["max_tokens"] == 200_000
    log = await api.get(policy_path(org, "/log"))
    assert [(m["rule"], m["actor"]) for m in log["moves"]] == [("reclaim", "system:policy")]

    events = await db.read(lambda s: s.scalars(select(Event).where(Event.kind == "policy.moved")))
    moved = list(events)
    assert len(moved) == 1
    assert moved[0].data["moves"] == 1
    assert moved[0].data["lowered"]["inference"] == 800_000


async def test_a_boost_is_applied_at_once_and_taken_back_at_its_end_never_below_used(
    api: Api, clock: FakeClock, db: Database
) -> None:
    org, (ana,) = await org_with(api, 200_000)
    ends = (clock.now() + timedelta(days=2)).isoformat()
    body = {"user": "u0@example.com", "kind": "inference", "amount": 500_000, "ends_at": ends}
    boost = await api.post(boosts_path(org), {**body, "reason": "launch week"}, expect=201)
    assert (boost["state"], boost["amount"]) == ("active", 500_000)
    assert (await get_user(api, ana["id"]))["max_tokens"] == 700_000
    listed = await api.get(boosts_path(org))
    assert [b["id"] for b in listed["boosts"]] == [boost["id"]]

    await api.use(ana["id"], 600_000)
    clock.advance(days=1)
    assert await policy_service.run_all(db, clock) == 0  # not ended yet
    clock.advance(days=1, seconds=1)
    before = await last_entry_id(api, org)
    assert await policy_service.run_all(db, clock) == 1
    assert (await get_user(api, ana["id"]))["max_tokens"] == 600_000  # what was used
    ended = (await api.get(boosts_path(org), params={"state": "any"}))["boosts"][0]
    assert (ended["state"], ended["taken_back"], ended["ended_by"]) == (
        "ended",
        100_000,
        "system:policy",
    )
    entries = [e for e in await entries_since(api, org, before) if e["user_id"] == ana["id"]]
    assert [e["details"].get("rule") for e in entries if e["action"] == "allowance_changed"] == [
        "boost_end"
    ]
    log = await api.get(policy_path(org, "/log"))
    assert [m["rule"] for m in log["moves"]] == ["boost_end", "boost"]


async def test_a_boost_ended_early_is_taken_back_once_and_members_see_their_own(
    api: Api,
) -> None:
    org, (ana, bo) = await org_with(api, 300_000, 300_000)
    ends = "2026-04-01T00:00:00Z"
    mine = await api.post(
        boosts_path(org),
        {"user": ana["id"], "kind": "inference", "amount": 100_000, "ends_at": ends},
        expect=201,
    )
    await api.post(
        boosts_path(org),
        {"user": bo["id"], "kind": "inference", "amount": 100_000, "ends_at": ends},
        expect=201,
    )
    ended = await api.post(boosts_path(org, f"/{mine['id']}/end"), expect=200)
    assert (ended["state"], ended["taken_back"]) == ("ended", 100_000)
    assert (await get_user(api, ana["id"]))["max_tokens"] == 300_000
    again = await api.call("POST", boosts_path(org, f"/{mine['id']}/end"))
    error_of(again, 409, "boost_already_ended")
    missing = await api.call("POST", boosts_path(org, "/0190b2a4-0000-7000-8000-000000000000/end"))
    error_of(missing, 404, "boost_not_found")

    admin = await org_api(api, org, "admin")
    created = await admin.post(f"/v1/users/{bo['id']}/api-keys", {"name": "own"}, expect=201)
    own = api.as_key(created["key"])  # a member's own key: their own boosts only
    listed = await own.get(boosts_path(org), params={"state": "any"})
    assert [b["email"] for b in listed["boosts"]] == ["u1@example.com"]
    error_of(await own.call("GET", policy_path(org)), 403, "forbidden")
    error_of(await own.call("POST", boosts_path(org, f"/{mine['id']}/end")), 403, "forbidden")


BAD_POLICIES: list[tuple[dict[str, Any], str]] = [
    ({"floor": 900_000, "ceiling": 800_000}, "floor_above_ceiling"),
    ({"floor": 100_000}, "floor_below_minimum"),
    ({"trigger_percent": 0}, "invalid_percent"),
    ({"trigger_percent": 101}, "invalid_percent"),
    ({"bump_percent": 0}, "invalid_percent"),
    ({"bump_percent": 10, "bump_amount": 1_000}, "invalid_bump"),
    ({"ceiling": 0}, "invalid_amount"),
    ({"ceiling": MAX + 1}, "invalid_amount"),
    ({"ceiling": 1.5}, "invalid_amount"),
    ({"ceiling": "1000"}, "invalid_amount"),
    ({"floor": -1}, "invalid_amount"),
    ({"bump_amount": 0}, "invalid_amount"),
    ({"cooldown_hours": 0}, "invalid_policy"),
    ({"idle_days": 100_000}, "invalid_policy"),
    ({"preset": "reckless"}, "invalid_request"),
    ({"enabled": "yes"}, "invalid_request"),
    ({"ceilng": 5}, "invalid_request"),
]


@pytest.mark.parametrize(("body", "code"), BAD_POLICIES, ids=[c for _, c in BAD_POLICIES])
async def test_a_bad_policy_is_refused_with_its_code_and_changes_nothing(
    api: Api, body: dict[str, Any], code: str, database_url: str
) -> None:
    org = await funded_org(api)
    before = await api.get(policy_path(org))
    last = await last_entry_id(api, org)
    response = await api.call("PUT", policy_path(org), json={"inference": body})
    error_of(response, 422, code)
    assert await api.get(policy_path(org)) == before
    assert await last_entry_id(api, org) == last


async def test_a_bad_boost_is_refused_with_its_code_and_changes_nothing(
    api: Api, clock: FakeClock
) -> None:
    org, (ana,) = await org_with(api, 200_000, inference=1_000_000)
    soon = (clock.now() + timedelta(days=1)).isoformat()
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"amount": 0}, 422, "invalid_amount"),
        ({"amount": MAX + 1}, 422, "invalid_amount"),
        ({"amount": 2.5}, 422, "invalid_amount"),
        ({"ends_at": (clock.now() - timedelta(hours=1)).isoformat()}, 422, "boost_end_in_past"),
        ({"ends_at": "2028-01-01T00:00:00Z"}, 422, "boost_too_long"),
        ({"amount": 900_000}, 422, "exceeds_balance"),
        ({"user": "nobody@example.com"}, 404, "user_not_found"),
    ]
    last = await last_entry_id(api, org)
    for change, status, code in cases:
        body = {"user": ana["id"], "kind": "inference", "amount": 1_000, "ends_at": soon, **change}
        error_of(await api.call("POST", boosts_path(org), json=body), status, code)
    assert await last_entry_id(api, org) == last
    assert (await api.get(boosts_path(org), params={"state": "any"}))["total"] == 0
    assert (await get_user(api, ana["id"]))["max_tokens"] == 200_000


async def test_a_dry_run_of_new_settings_previews_without_saving(api: Api) -> None:
    org, (ana,) = await org_with(api, 1_000_000)
    await api.use(ana["id"], 900_000)
    previewed = await set_policy(
        api, org, inference={"preset": "aggressive", "enabled": True}, dry_run=True
    )
    assert previewed["applied"] is False
    assert moves_of(previewed["preview"]) == [
        ("u0@example.com", "inference", "increase", 1_000_000, 1_500_000)
    ]
    assert (await api.get(policy_path(org)))["inference"]["saved"] is False
    assert (await api.get(policy_path(org, "/log")))["total"] == 0
    dry = await api.post(policy_path(org, "/run"), {"dry_run": True}, expect=200)
    assert dry["moves"] == []
    assert dry["applied"] is False


async def test_the_client_sets_previews_runs_and_reads_the_policy_and_boosts(
    app: FastAPI, operator_key: str, clock: FakeClock
) -> None:
    async with async_client(app, operator_key) as tokens:
        org = await tokens.create_organization("Acme")
        await tokens.record_purchase(org.id, inference_amount=5_000_000)
        ana = await tokens.create_user(org.id, "ana@example.com", "Ana", max_tokens=1_000_000)
        await tokens.record_usage(ana.email, "inference", 850_000)
        assert (await tokens.get_policy(org.id)).inference.saved is False

        previewed = await tokens.set_policy(
            org.id, inference={"preset": "standard", "enabled": True}, dry_run=True
        )
        assert [(m.rule, m.after) for m in previewed.preview.moves] == [("increase", 1_250_000)]
        saved = await tokens.set_policy(
            org.id, inference=KindPolicyIn(preset="standard", enabled=True)
        )
        assert saved.applied
        assert saved.inference.preset == "standard"
        assert [m.after for m in (await tokens.preview_policy(org.id)).moves] == [1_250_000]
        ran = await tokens.run_policy(org.id)
        assert ran.applied
        log = await tokens.get_policy_log(org.id, limit=10)
        assert [(m.email, m.rule) for m in log.moves] == [("ana@example.com", "increase")]

        boost = await tokens.add_boost(
            org.id, ana.email, "inference", 100_000, clock.now() + timedelta(days=1)
        )
        assert [b.id for b in (await tokens.list_boosts(org.id)).boosts] == [boost.id]
        ended = await tokens.end_boost(org.id, boost.id)
        assert (ended.state, ended.taken_back) == ("ended", 100_000)


def test_a_percent_bump_is_whole_tokens_rounded_up_exactly_up_to_2_to_the_53() -> None:
    policy = policy_service.KindPolicy(Kind.inference, {"bump_percent": 33, "bump_amount": None})
    # 33 % of 2^53 - 1 is 2,972,375,754,064,527.03: a float rounds it to ...527.
    assert policy.bump(MAX - 1) == 2_972_375_754_064_528
    assert policy.bump(1) == 1
    assert policy.bump(1_000_000) == 330_000


async def test_a_member_sees_their_own_active_boost_on_my_tokens_until_it_ends(
    api: Api, app: FastAPI
) -> None:
    org = await funded_org(api, inference=10_000_000, training=1_000_000)
    await api.user(org, "mia@example.com", password=PASSWORD)
    bo = await api.user(org, "bo@example.com")
    ends = "2026-04-01T00:00:00Z"
    mine = await api.post(
        boosts_path(org),
        {
            "user": "mia@example.com",
            "kind": "inference",
            "amount": 150_000,
            "ends_at": ends,
            "reason": "launch week",
        },
        expect=201,
    )
    await api.post(
        boosts_path(org),
        {"user": bo["id"], "kind": "training", "amount": 70_000, "ends_at": ends},
        expect=201,
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://tokenadmin.test") as mia:
        await sign_in(mia, "mia@example.com")
        page = (await mia.get("/me", headers=HTML)).text
        boosts = re.search(r'<section[^>]*id="my-boosts".*?</section>', page, re.DOTALL)
        assert boosts is not None
        assert "+150,000</strong> Max Tokens until 01 Apr 2026 00:00: “launch week”" in boosts[0]
        assert "70,000" not in boosts[0]  # bo's is not hers

        await api.post(boosts_path(org, f"/{mine['id']}/end"), expect=200)
        page = (await mia.get("/me", headers=HTML)).text
        assert 'id="my-boosts"' not in page
