"""Events: each fires once per crossing (a threshold of an allowance, a low balance,
over-allocation, purchases expiring and expired, a new period, token requests made and
decided), re-arms when its condition ends, and shows to the administrators and to the
member it concerns only."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from tests.cli.conftest import Tokenadmin
from tests.client_support import async_client, funded
from tests.helpers import Api, funded_org
from tests.scenarios import error_of, org_api, run_sweeper
from tests.servers import running_servers
from tests.traffic import operator_key
from tokenadmin.act import Act
from tokenadmin.clock import FakeClock
from tokenadmin.database import Database
from tokenadmin.events import jobs
from tokenadmin.events import service as events
from tokenadmin.models import Event, User


async def _events(api: Api, org_id: str, **params: Any) -> list[dict[str, Any]]:
    page = await api.get(f"/v1/organizations/{org_id}/events", params={"limit": 500, **params})
    found: list[dict[str, Any]] = page["events"]
    return found


async def _of_kind(api: Api, org_id: str, kind: str) -> list[dict[str, Any]]:
    return await _events(api, org_id, kind=kind)


async def _evaluate(db: Database, clock: FakeClock) -> int:
    return (await jobs.evaluate(db, clock)).events


async def test_passing_80_and_100_percent_fires_each_threshold_once(api: Api) -> None:
    org_id = await funded_org(api)
    ben = await api.user(org_id, "ben@example.com", name="Ben Member", max_tokens=200_000)
    await api.use(ben["id"], 150_000, expect=200)
    assert await _of_kind(api, org_id, "allowance.threshold") == []

    await api.use(ben["id"], 10_000, expect=200)  # 160,000: exactly 80 %
    await api.use(ben["id"], 5_000, expect=200)
    await api.use(ben["id"], 5_000, expect=200)
    fired = await _of_kind(api, org_id, "allowance.threshold")
    assert len(fired) == 1
    (alert,) = fired
    assert alert["message"] == "Ben Member has used 80% of their Max Tokens (160,000 of 200,000)."
    assert alert["user_id"] == ben["id"]
    assert alert["data"] | {"period_start": None} == {
        "user_id": ben["id"],
        "email": "ben@example.com",
        "name": "Ben Member",
        "kind": "inference",
        "percent": 80,
        "used": 160_000,
        "allowance": 200_000,
        "period_start": None,
    }

    await api.use(ben["id"], 30_000, expect=200)  # 200,000: 100 %
    await api.use(ben["id"], 1, expect=402)
    percents = [e["data"]["percent"] for e in await _of_kind(api, org_id, "allowance.threshold")]
    assert percents == [100, 80], "newest first"


async def test_one_request_past_both_thresholds_fires_both(api: Api) -> None:
    org_id = await funded_org(api)
    ben = await api.user(org_id, max_tokens=200_000, max_train_tokens=1_000)
    await api.use(ben["id"], 200_000, expect=200)
    await api.use(ben["id"], 900, "training", expect=200)
    fired = await _of_kind(api, org_id, "allowance.threshold")
    assert sorted((e["data"]["kind"], e["data"]["percent"]) for e in fired) == [
        ("inference", 80),
        ("inference", 100),
        ("training", 80),
    ]


async def test_a_raised_allowance_passed_again_fires_again_and_reservations_do_not_count(
    api: Api,
) -> None:
    org_id = await funded_org(api)
    ben = await api.user(org_id, max_tokens=200_000)
    reserved = await api.post(
        "/v1/reservations",
        {"user": ben["id"], "kind": "inference", "tokens": 190_000},
        expect=201,
        idempotency_key=uuid.uuid4().hex,
    )
    assert await _of_kind(api, org_id, "allowance.threshold") == [], "reserved is not used"
    await api.post(f"/v1/reservations/{reserved['id']}/release", expect=200)
    await api.use(ben["id"], 170_000, expect=200)
    await api.patch(f"/v1/users/{ben['id']}", {"max_tokens": 400_000}, expect=200)
    await api.use(ben["id"], 100_000, expect=200)  # 270,000 of 400,000: under 80 %
    assert len(await _of_kind(api, org_id, "allowance.threshold")) == 1
    await api.use(ben["id"], 50_000, expect=200)  # 320,000 of 400,000
    fired = await _of_kind(api, org_id, "allowance.threshold")
    assert [(e["data"]["percent"], e["data"]["allowance"]) for e in fired] == [
        (80, 400_000),
        (80, 200_000),
    ]


async def test_thresholds_are_settable_and_checked(api: Api) -> None:
    org_id = await funded_org(api)
    updated = await api.patch(
        f"/v1/organizations/{org_id}",
        {"alert_thresholds": [90, 50], "alert_balance_below_percent": 25},
        expect=200,
    )
    assert updated["alert_thresholds"] == [50, 90]
    assert updated["alert_balance_below_percent"] == 25
    ben = await api.user(org_id, max_tokens=200_000)
    await api.use(ben["id"], 170_000, expect=200)  # 85 %
    fired = await _of_kind(api, org_id, "allowance.threshold")
    assert [e["data"]["percent"] for e in fired] == [50]

    for bad in ([0], [101], [80, 80], [10, 20, 30, 40, 50, 60], ["80"], [80.5]):
        response = await api.call(
            "PATCH", f"/v1/organizations/{org_id}", json={"alert_thresholds": bad}
        )
        assert response.status_code == 422, (bad, response.text)
        assert response.json()["error"]["code"] == "invalid_request"
    response = await api.call(
        "PATCH", f"/v1/organizations/{org_id}", json={"alert_balance_below_percent": 101}
    )
    error_of(response, 422, "invalid_request")
    org = await api.get(f"/v1/organizations/{org_id}")
    assert (org["alert_thresholds"], org["alert_balance_below_percent"]) == ([50, 90], 25)


async def test_the_sweep_catches_an_allowance_lowered_under_usage_once(
    api: Api, db: Database, clock: FakeClock
) -> None:
    org_id = await funded_org(api)
    ben = await api.user(org_id, max_tokens=400_000)
    await api.use(ben["id"], 250_000, expect=200)
    await _evaluate(db, clock)
    assert await _of_kind(api, org_id, "allowance.threshold") == []
    await api.patch(f"/v1/users/{ben['id']}", {"max_tokens": 300_000}, expect=200)  # 83 %
    assert await _evaluate(db, clock) == 1
    assert await _evaluate(db, clock) == 0
    (alert,) = await _of_kind(api, org_id, "allowance.threshold")
    assert (alert["data"]["percent"], alert["data"]["allowance"]) == (80, 300_000)


async def test_a_low_balance_fires_once_and_re_arms_when_it_recovers(
    api: Api, db: Database, clock: FakeClock
) -> None:
    org_id = await funded_org(api, 1_000_000, 0)
    ben = await api.user(org_id, max_tokens=200_000)
    assert await _evaluate(db, clock) == 0
    await api.patch(f"/v1/users/{ben['id']}", {"max_tokens": 950_000}, expect=200)
    assert await _evaluate(db, clock) == 1
    assert await _evaluate(db, clock) == 0, "still low: the same episode"
    (low,) = await _of_kind(api, org_id, "balance.low")
    assert low["message"] == (
        "The inference token balance is 50,000, below 10% of the capacity of 1,000,000."
    )
    assert low["data"] == {
        "kind": "inference",
        "capacity": 1_000_000,
        "allocated": 950_000,
        "balance": 50_000,
        "below_percent": 10,
    }
    await api.patch(f"/v1/users/{ben['id']}", {"max_tokens": 500_000}, expect=200)
    assert await _evaluate(db, clock) == 0, "recovered: re-armed"
    await api.patch(f"/v1/users/{ben['id']}", {"max_tokens": 920_000}, expect=200)
    assert await _evaluate(db, clock) == 1
    assert len(await _of_kind(api, org_id, "balance.low")) == 2


async def test_over_allocation_fires_once_per_episode(
    api: Api, db: Database, clock: FakeClock
) -> None:
    org_id = await funded_org(api, 1_000_000, 0, overallocation=True)
    ben = await api.user(org_id, max_tokens=1_200_000)
    await _evaluate(db, clock)
    await _evaluate(db, clock)
    (over,) = await _of_kind(api, org_id, "organization.over_allocated")
    assert over["data"]["shortfall"] == 200_000
    assert (
        "1,200,000 inference tokens are allocated against a capacity of 1,000,000"
        in (over["message"])
    )
    await api.patch(f"/v1/users/{ben['id']}", {"max_tokens": 200_000}, expect=200)
    await _evaluate(db, clock)
    await api.patch(f"/v1/users/{ben['id']}", {"max_tokens": 1_100_000}, expect=200)
    await _evaluate(db, clock)
    assert len(await _of_kind(api, org_id, "organization.over_allocated")) == 2


async def test_purchases_expiring_and_expired_and_a_new_period_fire_once(
    api: Api, db: Database, clock: FakeClock
) -> None:
    org = await api.organization()
    org_id = org["id"]
    soon = (clock.now() + timedelta(days=40)).isoformat()
    purchase = await api.purchase(org_id, 1_000_000, 0, expires_at=soon)
    await _evaluate(db, clock)
    assert await _of_kind(api, org_id, "purchase.expiring") == []
    clock.advance(days=11)
    await _evaluate(db, clock)
    await _evaluate(db, clock)
    (expiring,) = await _of_kind(api, org_id, "purchase.expiring")
    assert expiring["data"]["purchase_id"] == purchase["id"]
    assert (
        expiring["message"] == "A purchase of 1,000,000 inference tokens expires on 24 April 2026."
    )

    clock.advance(days=30)
    await run_sweeper(db, clock)
    await run_sweeper(db, clock)
    (expired,) = await _of_kind(api, org_id, "purchase.expired")
    assert expired["data"]["purchase_id"] == purchase["id"]
    assert "expired on 24 April 2026" in expired["message"]
    began = await _of_kind(api, org_id, "period.began")
    assert [e["data"]["period_start"][:10] for e in began] == ["2026-04-01"]
    assert began[0]["message"] == "A new period began on 1 April 2026: usage counts from 0 again."


async def test_token_requests_made_and_decided_fire_for_the_member(api: Api) -> None:
    org_id = await funded_org(api)
    mia = await api.user(org_id, "mia@example.com", name="Mia")
    body = {"user": mia["id"], "kind": "inference", "amount": 300_000, "reason": "a run"}
    first = await api.post("/v1/token-requests", body, expect=201)
    await api.post(f"/v1/token-requests/{first['id']}/approve", {"amount": 100_000}, expect=200)
    second = await api.post("/v1/token-requests", body, expect=201)
    await api.post(f"/v1/token-requests/{second['id']}/deny", {"note": "not now"}, expect=200)
    third = await api.post("/v1/token-requests", body, expect=201)
    await api.post(f"/v1/token-requests/{third['id']}/withdraw", expect=200)

    made = await _of_kind(api, org_id, "token_request.made")
    assert [e["data"]["request_id"] for e in made] == [third["id"], second["id"], first["id"]]
    assert made[0]["message"] == "Mia asked for 300,000 more Max Tokens: a run"
    decided = await _of_kind(api, org_id, "token_request.decided")
    assert [e["data"]["state"] for e in decided] == ["withdrawn", "denied", "approved"]
    assert all(e["user_id"] == mia["id"] for e in made + decided)
    assert decided[2]["data"]["approved_amount"] == 100_000
    assert (
        "approved Mia's request for 300,000 Max Tokens, granting 100,000."
        in (decided[2]["message"])
    )
    assert decided[1]["message"].endswith("denied Mia's request for 300,000 Max Tokens: not now")
    assert decided[0]["message"] == "Mia withdrew their request for 300,000 Max Tokens."


async def test_an_automatic_approval_is_decided_by_the_rule(api: Api) -> None:
    org_id = await funded_org(api, 10_000_000)
    await api.patch(f"/v1/organizations/{org_id}", {"auto_approve_enabled": True}, expect=200)
    mia = await api.user(org_id, name="Mia")
    body = {"user": mia["id"], "kind": "inference", "amount": 100_000, "reason": "a run"}
    asked = await api.post("/v1/token-requests", body, expect=201)
    assert asked["state"] == "approved"
    (decided,) = await _of_kind(api, org_id, "token_request.decided")
    assert decided["message"] == (
        "The auto-approval rule approved Mia's request for 100,000 Max Tokens."
    )
    assert decided["data"]["by"] == "system:auto-approval"


async def test_a_member_sees_only_their_own_events(api: Api) -> None:
    org_id = await funded_org(api)
    mia = await api.user(org_id, max_tokens=200_000)
    ben = await api.user(org_id, max_tokens=200_000)
    await api.use(mia["id"], 170_000, expect=200)
    await api.use(ben["id"], 170_000, expect=200)
    mine = await api.post(f"/v1/users/{mia['id']}/api-keys", {"name": "laptop"}, expect=201)
    member = api.as_key(mine["key"])

    own = await member.get(f"/v1/users/{mia['id']}/events")
    assert [e["user_id"] for e in own["events"]] == [mia["id"]]
    assert own["total"] == 1
    await member.get(f"/v1/users/{ben['id']}/events", expect=403)
    await member.get(f"/v1/organizations/{org_id}/events", expect=403)
    reader = await org_api(api, org_id, "read")
    assert len(await _events(reader, org_id)) == 2
    by_user = await _events(reader, org_id, user_id=ben["id"])
    assert [e["user_id"] for e in by_user] == [ben["id"]]


async def test_another_organizations_events_do_not_exist(api: Api) -> None:
    a_org = await funded_org(api)
    alice = await api.user(a_org, max_tokens=200_000)
    await api.use(alice["id"], 200_000, expect=200)
    b_org = await funded_org(api)
    b_admin = await org_api(api, b_org, "admin")
    response = await b_admin.call("GET", f"/v1/organizations/{a_org}/events")
    error_of(response, 404, "not_found")
    response = await b_admin.call("GET", f"/v1/users/{alice['id']}/events")
    error_of(response, 404, "not_found")
    assert await _events(b_admin, b_org) == []


async def test_event_lists_filter_by_kind_and_since_and_page(api: Api, clock: FakeClock) -> None:
    org_id = await funded_org(api)
    users = [await api.user(org_id, max_tokens=200_000) for _ in range(3)]
    for user in users:
        await api.use(user["id"], 160_000, expect=200)
        clock.advance(minutes=1)
    since = clock.now() - timedelta(minutes=2)
    recent = await _events(api, org_id, since=since.isoformat())
    assert [e["user_id"] for e in recent] == [users[2]["id"], users[1]["id"]]
    page = await api.get(f"/v1/organizations/{org_id}/events", params={"limit": 1, "offset": 1})
    assert (page["total"], [e["user_id"] for e in page["events"]]) == (3, [users[1]["id"]])
    response = await api.call(
        "GET", f"/v1/organizations/{org_id}/events", params={"kind": "nonsense"}
    )
    error_of(response, 422, "invalid_request")


async def test_emit_inserts_a_crossing_once(db: Database, api: Api, clock: FakeClock) -> None:
    org_id = uuid.UUID(await funded_org(api))
    act = Act("test", clock.now())

    async def once(session: AsyncSession) -> bool:
        return await events.emit(
            session, act, org_id, "policy.moved", key="k1", message="Moved.", data={"n": 1}
        )

    assert await db.write(once) is True
    assert await db.write(once) is False
    with pytest.raises(ValueError, match="unknown event kind"):
        await db.write(
            lambda s: events.emit(s, act, org_id, "nonsense", key="k", message="", data={})
        )


async def _threshold_events(db: Database) -> int:
    async def count(session: AsyncSession) -> int:
        statement = select(func.count()).where(Event.kind == "allowance.threshold")
        return int(await session.scalar(statement) or 0)

    return await db.read(count)


async def test_1000_concurrent_requests_crossing_80_percent_give_one_alert(
    api: Api, db: Database
) -> None:
    org_id = await funded_org(api, 10_000_000)
    hot = await api.user(org_id, max_tokens=1_000_000)
    await api.use(hot["id"], 700_000, expect=200)
    statuses = await asyncio.gather(
        *(api.use(hot["id"], 200) for _ in range(1_000))  # 900,000: past 80 %, not 100 %
    )
    assert {r.status_code for r in statuses} == {200}
    assert await _threshold_events(db) == 1
    (alert,) = await _of_kind(api, org_id, "allowance.threshold")
    assert alert["data"]["percent"] == 80
    assert alert["data"]["used"] == 800_000


@pytest.mark.slow
async def test_1000_concurrent_requests_to_three_processes_give_one_alert(
    pg: Database, postgres_url: str
) -> None:
    operator = await operator_key(pg)
    with running_servers(postgres_url, 3) as urls:
        headers = {"Authorization": f"Bearer {operator}"}
        limits = httpx.Limits(max_connections=1_000)
        async with httpx.AsyncClient(headers=headers, timeout=60, limits=limits) as http:
            org = (await http.post(f"{urls[0]}/v1/organizations", json={"name": "Hot"})).json()
            await http.post(
                f"{urls[0]}/v1/organizations/{org['id']}/purchases",
                json={"inference_amount": 5_000_000},
            )
            user = (
                await http.post(
                    f"{urls[0]}/v1/organizations/{org['id']}/users",
                    json={"email": "hot@example.com", "name": "Hot", "max_tokens": 1_000_000},
                )
            ).json()

            async def use(index: int, tokens: int) -> int:
                # A connection the server closed meanwhile (keep-alive) is tried again with
                # the same key: the usage is recorded once either way.
                key = uuid.uuid4().hex
                for attempt in range(3):
                    try:
                        response = await http.post(
                            f"{urls[index % len(urls)]}/v1/usage",
                            json={"user": user["id"], "kind": "inference", "tokens": tokens},
                            headers={"Idempotency-Key": key},
                        )
                    except httpx.TransportError:
                        if attempt == 2:
                            raise
                        continue
                    return response.status_code
                raise AssertionError("unreachable")

            assert await use(0, 700_000) == 200
            statuses = await asyncio.gather(*(use(i, 200) for i in range(1_000)))
            assert set(statuses) == {200}
        async with httpx.AsyncClient(headers=headers, timeout=60) as fresh:
            listed = (
                await fresh.get(
                    f"{urls[1]}/v1/organizations/{org['id']}/events",
                    params={"kind": "allowance.threshold"},
                )
            ).json()
    assert await _threshold_events(pg) == 1
    (alert,) = listed["events"]
    assert alert["data"]["percent"] == 80
    assert 800_000 <= alert["data"]["used"] < 900_000
    used = await pg.read(lambda s: s.scalar(select(User.inference_used)))
    assert used == 900_000, "every request recorded once"


def test_the_cli_lists_events_and_sets_the_alert_settings(database_url: str, db: Database) -> None:
    tokenadmin = Tokenadmin(database_url)
    org_id = tokenadmin.org()
    tokenadmin.user(org_id, "ana@example.com", "--max-tokens", "200K")
    updated = tokenadmin.json("org", "update", org_id, "--alert-thresholds", "90, 50")
    assert updated["alert_thresholds"] == [50, 90]
    tokenadmin("usage", "record", "--user", "ana@example.com", "--tokens", "120K")
    listed = tokenadmin.json("events", "--org", org_id, "--kind", "allowance.threshold")
    assert [e["message"] for e in listed["events"]] == [
        "Ana has used 50% of their Max Tokens (120,000 of 200,000)."
    ]
    shown = tokenadmin("events", "--org", org_id).stdout
    assert "Ana has used 50%" in shown
    assert "1 event." in shown
    tokenadmin("events", "--kind", "nonsense", expect=2)
    tokenadmin("org", "update", org_id, "--alert-thresholds", "80,eighty", expect=2)
    tokenadmin("org", "update", org_id, "--alert-thresholds", "80,80", expect=2)
    assert (
        tokenadmin.json("org", "update", org_id, "--alert-thresholds", "")["alert_thresholds"] == []
    )


async def test_the_client_lists_events_and_sets_the_alert_settings(
    app: FastAPI, operator_key: str, clock: FakeClock
) -> None:
    async with async_client(app, operator_key) as tokens:
        org = await funded(tokens)
        updated = await tokens.update_organization(org.id, alert_thresholds=[90, 60])
        assert updated.alert_thresholds == [60, 90]
        ana = await tokens.create_user(org.id, "ana@example.com", "Ana", max_tokens=200_000)
        await tokens.record_usage(ana.id, "inference", 130_000)
        page = await tokens.list_events(org.id, kind="allowance.threshold", since=clock.now())
        assert [(e.data["percent"], e.user_id) for e in page.events] == [(60, ana.id)]
        mine = await tokens.list_user_events(ana.id)
        assert mine.total == 1
        assert (await tokens.list_events(org.id, kind="balance.low")).events == []
