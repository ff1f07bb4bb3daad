"""Idempotency keys: the same key and body answer the first answer and change nothing."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from tests.helpers import Api, funded_org
from tests.scenarios import (
    IDEMPOTENCY_TTL,
    commit,
    error_of,
    event,
    get_user,
    journal,
    last_entry_id,
    org_api,
    reserve,
    run_sweeper,
)
from tokenadmin import compact_json
from tokenadmin.clock import FakeClock
from tokenadmin.database import MAX_ATTEMPTS, Database, Retry
from tokenadmin.errors import InvalidRequest, TokenAdminError
from tokenadmin.idempotency import service as idempotency
from tokenadmin.tokens import Kind


def replayed(response: httpx.Response) -> bool:
    header: str | None = response.headers.get("Idempotent-Replayed")
    return header == "true"


async def _org_and_user(api: Api, **fields: Any) -> tuple[str, dict[str, Any]]:
    org = await funded_org(api)
    return org, await api.user(org, **fields)


async def test_replayed_usage_returns_the_first_answer_and_counts_once(api: Api) -> None:
    org, ana = await _org_and_user(api)
    first = await api.use(ana["id"], 1_000, key="usage-1", expect=200)
    mark = await last_entry_id(api, org)

    again = await api.use(ana["id"], 1_000, key="usage-1", expect=200)

    assert not replayed(first)
    assert replayed(again)
    assert again.json() == first.json()
    assert (await get_user(api, ana["id"]))["inference"]["used"] == 1_000
    assert await last_entry_id(api, org) == mark


async def test_a_key_reused_with_another_body_is_refused_and_changes_nothing(api: Api) -> None:
    org, ana = await _org_and_user(api)
    await api.use(ana["id"], 1_000, key="usage-1", expect=200)
    mark = await last_entry_id(api, org)

    for response in (
        await api.use(ana["id"], 2_000, key="usage-1"),
        await api.use(ana["id"], 1_000, "training", key="usage-1"),
        await api.use(ana["id"], 1_000, key="usage-1", model="other"),
    ):
        details = error_of(response, 422, "idempotency_key_reused")
        assert details["idempotency_key"] == "usage-1"
    held = await reserve(api, ana["id"], 1_000, expect=None, idempotency_key="usage-1")
    error_of(held, 422, "idempotency_key_reused")

    assert (await get_user(api, ana["id"]))["inference"]["used"] == 1_000
    assert await last_entry_id(api, org) == mark


async def test_a_refused_debit_replayed_after_a_top_up_stays_refused(api: Api) -> None:
    _org, ana = await _org_and_user(api)
    refused = await api.use(ana["id"], 250_000, key="big")
    error_of(refused, 402, "insufficient_tokens")
    await api.patch(f"/v1/users/{ana['id']}", {"max_tokens": 300_000}, expect=200)

    again = await api.use(ana["id"], 250_000, key="big")

    error_of(again, 402, "insufficient_tokens")
    assert replayed(again)
    assert again.json() == refused.json()
    assert (await get_user(api, ana["id"]))["inference"]["used"] == 0
    await api.use(ana["id"], 250_000, key="big-2", expect=200)


async def test_usage_needs_an_idempotency_key(api: Api) -> None:
    org, ana = await _org_and_user(api)
    mark = await last_entry_id(api, org)
    response = await api.call(
        "POST", "/v1/usage", json={"user": ana["id"], "kind": "inference", "tokens": 10}
    )
    error_of(response, 422, "idempotency_key_required")
    assert await last_entry_id(api, org) == mark


async def test_keys_must_be_short_printable_text(api: Api) -> None:
    _org, ana = await _org_and_user(api)
    error_of(await api.use(ana["id"], 10, key="k" * 256), 422, "invalid_idempotency_key")
    body = {"user": ana["id"], "kind": "inference", "tokens": 10}
    for bad in ("", "tab\tinside"):
        response = await api.call("POST", "/v1/usage", json=body, idempotency_key=bad)
        error_of(response, 422, "invalid_idempotency_key")
    await api.use(ana["id"], 10, key="k" * 255, expect=200)


async def test_replayed_batch_events_are_answered_again_without_counting(api: Api) -> None:
    org, ana = await _org_and_user(api)
    events = [event(ana["id"], 100), event(ana["id"], 300_000), event(ana["id"], 200)]
    first = await api.post("/v1/usage/batch", {"events": events}, expect=200)
    assert (first["accepted"], first["refused"]) == (2, 1)
    mark = await last_entry_id(api, org)

    again = await api.post("/v1/usage/batch", {"events": events}, expect=200)

    assert (again["accepted"], again["refused"]) == (2, 1)
    assert [r["replayed"] for r in again["results"]] == [True, True, True]
    assert [r["result"] for r in again["results"]] == [r["result"] for r in first["results"]]
    assert [r["error"] for r in again["results"]] == [r["error"] for r in first["results"]]
    assert (await get_user(api, ana["id"]))["inference"]["used"] == 300
    assert await last_entry_id(api, org) == mark


async def test_a_key_repeated_inside_one_batch_counts_once(api: Api) -> None:
    _org, ana = await _org_and_user(api)
    twice = event(ana["id"], 700, idempotency_key="same")
    result = await api.post("/v1/usage/batch", {"events": [twice, twice]}, expect=200)
    assert [(r["accepted"], r["replayed"]) for r in result["results"]] == [
        (True, False),
        (True, True),
    ]
    assert (await get_user(api, ana["id"]))["inference"]["used"] == 700
    clash = await api.post(
        "/v1/usage/batch",
        {
            "events": [
                event(ana["id"], 1, idempotency_key="x"),
                event(ana["id"], 2, idempotency_key="x"),
            ]
        },
        expect=200,
    )
    assert [r["status"] for r in clash["results"]] == [200, 422]
    assert clash["results"][1]["error"]["code"] == "idempotency_key_reused"
    assert (await get_user(api, ana["id"]))["inference"]["used"] == 701


async def test_a_replayed_reservation_holds_the_tokens_once(api: Api) -> None:
    org, ana = await _org_and_user(api)
    first = await reserve(api, ana["id"], 40_000, idempotency_key="hold-1")
    again = await reserve(api, ana["id"], 40_000, idempotency_key="hold-1")

    assert again.status_code == 201
    assert replayed(again)
    assert again.json()["id"] == first.json()["id"]
    assert (await get_user(api, ana["id"]))["inference"]["reserved"] == 40_000
    assert len(await journal(api, org, action="reserve")) == 1


async def test_a_replayed_commit_answers_the_commit_instead_of_reservation_closed(
    api: Api,
) -> None:
    _org, ana = await _org_and_user(api)
    held = (await reserve(api, ana["id"], 40_000)).json()
    first = await commit(api, held["id"], 25_000, idempotency_key="commit-1")
    again = await commit(api, held["id"], 25_000, idempotency_key="commit-1")

    assert replayed(again)
    assert again.json() == first.json()
    assert (await get_user(api, ana["id"]))["inference"]["used"] == 25_000
    error_of(await commit(api, held["id"], 25_000, expect=None), 409, "reservation_closed")


async def test_a_replayed_allowance_batch_changes_nothing_more(api: Api) -> None:
    org, ana = await _org_and_user(api)
    body = {"changes": [{"user": ana["id"], "max_tokens": 300_000}]}
    path = f"/v1/organizations/{org}/allowances"
    first = await api.call("POST", path, json=body, idempotency_key="plan-1", expect=200)
    mark = await last_entry_id(api, org)

    again = await api.call("POST", path, json=body, idempotency_key="plan-1", expect=200)

    assert replayed(again)
    assert again.json() == first.json()
    assert (await get_user(api, ana["id"]))["version"] == 2
    assert await last_entry_id(api, org) == mark
    other = {"changes": [{"user": ana["id"], "max_tokens": 350_000}]}
    error_of(
        await api.call("POST", path, json=other, idempotency_key="plan-1"),
        422,
        "idempotency_key_reused",
    )
    assert (await get_user(api, ana["id"]))["max_tokens"] == 300_000


async def test_a_replayed_user_creation_creates_one_user(api: Api) -> None:
    org = await funded_org(api)
    path = f"/v1/organizations/{org}/users"
    body = {"email": "ana@example.com", "name": "Ana"}
    first = await api.call("POST", path, json=body, idempotency_key="new-ana", expect=201)

    again = await api.call("POST", path, json=body, idempotency_key="new-ana", expect=201)

    assert replayed(again)
    assert again.json()["id"] == first.json()["id"]
    assert (await api.get(path))["total"] == 1
    assert (await api.balance(org))["inference"]["allocated"] == 200_000
    other = {"email": "bo@example.com", "name": "Bo"}
    error_of(
        await api.call("POST", path, json=other, idempotency_key="new-ana"),
        422,
        "idempotency_key_reused",
    )
    assert (await api.get(path))["total"] == 1


async def test_a_replayed_purchase_is_counted_once(api: Api) -> None:
    org = (await api.organization())["id"]
    path = f"/v1/organizations/{org}/purchases"
    body = {"inference_amount": 500_000, "note": "PO 17"}
    first = await api.call("POST", path, json=body, idempotency_key="po-17", expect=201)
    again = await api.call("POST", path, json=body, idempotency_key="po-17", expect=201)

    assert replayed(again)
    assert again.json()["id"] == first.json()["id"]
    assert (await api.balance(org))["inference"]["capacity"] == 500_000
    assert len(await api.get(path)) == 1


async def test_keys_are_scoped_to_the_organization(api: Api) -> None:
    org_a, ana = await _org_and_user(api)
    org_b, bo = await _org_and_user(api)
    meter_a = await org_api(api, org_a, "usage")
    meter_b = await org_api(api, org_b, "usage")

    first = await meter_a.use(ana["id"], 1_000, key="shared-key", expect=200)
    second = await meter_b.use(bo["id"], 2_000, key="shared-key", expect=200)

    assert not replayed(first)
    assert not replayed(second)
    assert (await get_user(api, ana["id"]))["inference"]["used"] == 1_000
    assert (await get_user(api, bo["id"]))["inference"]["used"] == 2_000


async def test_keys_are_kept_for_at_least_24_hours(
    api: Api, clock: FakeClock, db: Database
) -> None:
    _org, ana = await _org_and_user(api)
    first = await api.use(ana["id"], 1_000, key="day-old", expect=200)
    clock.advance(hours=23)
    report = await run_sweeper(db, clock)
    assert report.idempotency_keys_purged == 0

    again = await api.use(ana["id"], 1_000, key="day-old", expect=200)

    assert replayed(again)
    assert again.json() == first.json()
    assert (await get_user(api, ana["id"]))["inference"]["used"] == 1_000


async def test_keys_are_purged_by_the_sweeper_after_their_time_to_live(
    api: Api, clock: FakeClock, db: Database
) -> None:
    _org, ana = await _org_and_user(api)
    await api.use(ana["id"], 1_000, key="old", expect=200)
    clock.advance(hours=IDEMPOTENCY_TTL / timedelta(hours=1) + 1)

    report = await run_sweeper(db, clock)

    assert report.idempotency_keys_purged == 1
    fresh = await api.use(ana["id"], 2_000, key="old", expect=200)
    assert not replayed(fresh)
    assert (await get_user(api, ana["id"]))["inference"]["used"] == 3_000


# --- a replay while the first request is still being applied ------------------------------


async def test_a_replay_while_the_first_usage_is_in_flight_is_answered_409(api: Api) -> None:
    org, ana = await _org_and_user(api)
    service = await org_api(api, org, "usage")

    responses = await asyncio.gather(
        *(service.use(ana["id"], 1_000, key="same-request") for _ in range(10))
    )

    applied = [r for r in responses if r.status_code == 200]
    assert applied, [r.text for r in responses]
    assert len({r.json()["journal_entry_id"] for r in applied}) == 1
    in_flight = [r for r in responses if r.status_code != 200]
    assert in_flight  # the first is still being applied when the others arrive
    for response in in_flight:
        error_of(response, 409, "idempotency_key_in_flight")
    assert (await get_user(api, ana["id"]))["inference"]["used"] == 1_000
    assert len([e for e in await journal(api, org) if e["action"] == "usage"]) == 1
    # Once it is applied, the same request answers its answer again.
    replay = await service.use(ana["id"], 1_000, key="same-request", expect=200)
    assert replayed(replay)
    assert replay.json() == applied[0].json()


async def test_a_replay_while_the_first_purchase_is_in_flight_is_answered_409(api: Api) -> None:
    org = await funded_org(api)
    body = {"inference_amount": 5_000, "training_amount": 0}

    responses = await asyncio.gather(
        *(
            api.call("POST", f"/v1/organizations/{org}/purchases", json=body, idempotency_key="p-1")
            for _ in range(5)
        )
    )

    assert sorted(r.status_code for r in responses)[0] == 201
    for response in responses:
        if response.status_code != 201:
            error_of(response, 409, "idempotency_key_in_flight")
    assert (await api.balance(org))["inference"]["capacity"] == 1_005_000


async def test_on_postgresql_a_key_in_flight_in_another_transaction_is_seen(
    postgres_url: str,
) -> None:
    db = Database(postgres_url, pool_size=2)
    try:
        await _claims_see_each_other(db)
    finally:
        await db.dispose()


async def _claims_see_each_other(db: Database) -> None:
    async with db.session() as first, first.begin():
        assert await idempotency.claim(first, "org:x", ["k1", "k2"]) == set()
        async with db.session() as second, second.begin():
            # Another process's transaction: k1 is in flight, k3 is free.
            assert await idempotency.claim(second, "org:x", ["k1", "k3"]) == {"k1"}
            assert await idempotency.claim(second, "org:y", ["k1"]) == set()  # other scope
    async with db.session() as later, later.begin():
        assert await idempotency.claim(later, "org:x", ["k1"]) == set()  # it ended


# --- the one path, called without a request (as the CLI or a script may) ---------------------


async def test_a_write_once_with_a_key_runs_once_and_keeps_its_answer_and_its_refusal(
    db: Database, clock: FakeClock
) -> None:
    runs: list[str] = []

    async def work(session: AsyncSession, name: str) -> dict[str, str]:
        runs.append(name)
        if name == "refused":
            raise InvalidRequest("not this one")
        return {"name": name}

    async def send(name: str, key: str, print_: str) -> idempotency.Answer:
        return await idempotency.write_once(
            db,
            lambda session: work(session, name),
            lambda body: idempotency.Answer(201, body),
            key=idempotency.Keyed(key, print_),
            scope="script",
            clock=clock,
            ttl=IDEMPOTENCY_TTL,
            in_flight=idempotency.KeysInFlight(),
        )

    first = await send("made", "k-1", "p-1")
    again = await send("made", "k-1", "p-1")
    refused = await send("refused", "k-2", "p-2")
    refused_again = await send("refused", "k-2", "p-2")
    other = await send("other", "k-1", "p-other")

    assert (first.status_code, first.body, first.replayed) == (201, {"name": "made"}, False)
    assert (again.status_code, again.body, again.replayed) == (201, {"name": "made"}, True)
    assert (refused.status_code, refused.body["error"]["code"]) == (422, "invalid_request")
    assert refused_again == idempotency.Answer(422, refused.body, replayed=True)
    assert (other.status_code, other.body["error"]["code"]) == (422, "idempotency_key_reused")
    assert runs == ["made", "refused"]


async def test_a_retried_transaction_runs_what_it_needs_first_then_gives_up_with_409(
    db: Database,
) -> None:
    done: list[str] = []

    async def needs_upkeep(session: AsyncSession) -> str:
        if "upkeep" not in done:
            raise Retry("upkeep first", first=upkeep)
        return "applied"

    async def upkeep(session: AsyncSession) -> None:
        done.append("upkeep")

    async def always_raced(session: AsyncSession) -> None:
        done.append("raced")
        raise Retry("a key stored first")

    assert await db.write(needs_upkeep) == "applied"
    assert done == ["upkeep"]
    with pytest.raises(TokenAdminError) as gave_up:
        await db.write(always_raced)
    assert (gave_up.value.status_code, gave_up.value.code) == (409, "retry")
    assert done.count("raced") == MAX_ATTEMPTS


def test_a_fingerprint_is_the_hash_of_the_parts_as_json_dumps_writes_them() -> None:
    """Fingerprints are stored with their keys: a new spelling would refuse the replay of a
    request sent before an upgrade."""
    parts = (
        "usage",
        "Ana@Example.com",
        Kind.inference,
        5,
        uuid.UUID("12345678-1234-5678-1234-567812345678"),
        None,
        {"model": "m", "metadata": {"z": [1, 2.5, True], "a": 'é\n"x"'}},
    )
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)

    assert idempotency.fingerprint(*parts) == hashlib.sha256(canonical.encode()).hexdigest()
    slowly = compact_json.encoder(ensure_ascii=True, default=str, in_c=False)
    assert slowly(parts, 0) == [canonical]
