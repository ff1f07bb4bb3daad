"""Two administrators editing one user at once: changes of different columns merge, a
change of a column someone else changed meanwhile is refused naming who changed what,
from what to what, and when."""

from __future__ import annotations

import uuid
from typing import Any

from tests.helpers import Api, funded_org
from tests.scenarios import error_of, get_user, last_entry_id
from tokenadmin.act import Act
from tokenadmin.allowance import service as allowance_service
from tokenadmin.clock import FakeClock
from tokenadmin.database import Database
from tokenadmin.errors import VersionConflict
from tokenadmin.organization.service import lock_for_change
from tokenadmin.tokens import Kind
from tokenadmin.user import repository as user_repository


async def _admin(api: Api, org: str, email: str, name: str) -> Api:
    """An administrator of the organization acting with their own key (journaled as
    user:<email>)."""
    person = await api.user(org, email, role="admin")
    await api.patch(f"/v1/users/{person['id']}", {"name": name}, expect=200)
    key = await api.post(f"/v1/users/{person['id']}/api-keys", {"name": "laptop"}, expect=201)
    return api.as_key(key["key"])


async def test_edits_of_different_columns_merge_and_of_one_column_conflict(
    api: Api, clock: FakeClock
) -> None:
    org = await funded_org(api, inference=5_000_000, training=1_000_000)
    ravi = await _admin(api, org, "ravi@acme.example", "Ravi")
    ines = await _admin(api, org, "ines@acme.example", "Ines")
    ben = await api.user(org, "ben@acme.example")
    loaded = (await get_user(api, ben["id"]))["version"]

    # Ravi changes Max Tokens; Ines, with the version she loaded before, Max Train Tokens.
    await ravi.allowances(
        org, {"user": ben["id"], "max_tokens": 500_000, "expected_version": loaded}, expect=200
    )
    clock.advance(minutes=1)
    merged = await ines.allowances(
        org,
        {"user": ben["id"], "max_train_tokens": 40_000, "expected_version": loaded},
        expect=200,
    )
    assert merged.json()["refused"] == []
    stored = await get_user(api, ben["id"])
    assert (stored["max_tokens"], stored["max_train_tokens"]) == (500_000, 40_000)
    assert stored["version"] == loaded + 2

    # Ines, still with that version, changes Max Tokens too: Ravi changed it since.
    mark = await last_entry_id(api, org)
    response = await ines.allowances(
        org,
        {"user": ben["id"], "max_tokens": 300_000, "expected_version": loaded},
        {"user": "ravi@acme.example", "max_train_tokens": 1_000},
    )
    details = error_of(response, 409, "version_conflict")
    [row] = details["refused"]
    assert row["index"] == 0
    assert row["conflicts"] == ["max_tokens"]
    assert row["current"]["version"] == loaded + 2
    assert row["current"]["max_tokens"] == 500_000
    assert row["yours"] == {"max_tokens": 300_000}
    assert [
        {k: c[k] for k in ("field", "kind", "from", "to", "by")} for c in row["changes_since"]
    ] == [
        {
            "field": "max_tokens",
            "kind": "inference",
            "from": 200_000,
            "to": 500_000,
            "by": "user:ravi@acme.example",
        },
        {
            "field": "max_train_tokens",
            "kind": "training",
            "from": 0,
            "to": 40_000,
            "by": "user:ines@acme.example",
        },
    ]
    assert row["changes_since"][0]["at"] == "2026-03-15T12:00:00Z"
    assert row["message"] == (
        "Ravi changed ben@acme.example's Max Tokens from 200,000 to 500,000 at 12:00 UTC;"
        " yours is 300,000."
    )
    assert "(version" not in response.json()["error"]["message"]
    assert await last_entry_id(api, org) == mark

    # The same through one user's PATCH; a name change with the old version merges.
    patched = await ines.call(
        "PATCH",
        f"/v1/users/{ben['id']}",
        json={"max_tokens": 300_000, "expected_version": loaded},
    )
    details = error_of(patched, 409, "version_conflict")
    assert details["conflicts"] == ["max_tokens"]
    assert details["changes_since"][0]["by"] == "user:ravi@acme.example"
    renamed = await ines.patch(
        f"/v1/users/{ben['id']}", {"name": "Ben K.", "expected_version": loaded}, expect=200
    )
    assert (renamed["name"], renamed["max_tokens"], renamed["version"]) == (
        "Ben K.",
        500_000,
        loaded + 3,
    )
    # ... and is a change since for whoever renames with an older version.
    details = error_of(
        await ravi.call(
            "PATCH",
            f"/v1/users/{ben['id']}",
            json={"name": "Benjamin", "expected_version": loaded + 1},
        ),
        409,
        "version_conflict",
    )
    assert details["conflicts"] == ["name"]
    assert details["changes_since"][-1] | {"at": None} == {
        "field": "name",
        "kind": None,
        "from": "Ben",
        "to": "Ben K.",
        "by": "user:ines@acme.example",
        "at": None,
    }


async def test_a_deactivation_since_or_a_history_the_journal_cant_tell_is_a_conflict(
    api: Api, db: Database, clock: FakeClock
) -> None:
    org = await funded_org(api)
    ana = await api.user(org, "ana@example.com")
    bo = await api.user(org, "bo@example.com")
    await api.post(f"/v1/users/{ana['id']}/deactivate", expect=200)
    await api.post(f"/v1/users/{ana['id']}/reactivate", expect=200)

    response = await api.allowances(
        org, {"user": ana["id"], "max_train_tokens": 5_000, "expected_version": 1}
    )
    [row] = error_of(response, 409, "version_conflict")["refused"]
    assert row["conflicts"] == ["status"]
    assert [(c["field"], c["to"]) for c in row["changes_since"]][:2] == [
        ("status", "deactivated"),
        ("status", "active"),
    ]
    assert row["message"].startswith("The operator ops reactivated ana@example.com at 12:00 UTC")

    # A version the journal has no entry for (as for changes made before versions were
    # journaled): every field the row sets is in conflict, nothing is overwritten.
    async def bump(session: Any, act: Act) -> None:
        user = await user_repository.get(session, uuid.UUID(bo["id"]))
        assert user is not None
        user.version += 1

    await db.write(lambda s: bump(s, Act("test", clock.now())))
    response = await api.allowances(
        org, {"user": bo["id"], "max_tokens": 250_000, "expected_version": 1}
    )
    [row] = error_of(response, 409, "version_conflict")["refused"]
    assert (row["conflicts"], row["changes_since"]) == (["max_tokens"], [])
    assert "reload to see the current values" in row["message"]


async def test_plan_without_history_refuses_and_check_version_merges(
    api: Api, db: Database, clock: FakeClock
) -> None:
    """The service's own callers: `plan` without the history is conservative; the
    caller-facing `version_conflict(user, expected)` keeps its shape."""
    org = await funded_org(api)
    ana = await api.user(org, "ana@example.com")
    await api.patch(f"/v1/users/{ana['id']}", {"max_train_tokens": 1_000}, expect=200)

    async def work(session: Any, act: Act) -> tuple[Any, ...]:
        user = await user_repository.get(session, uuid.UUID(ana["id"]))
        assert user is not None
        organization = await lock_for_change(session, act, user.org_id)
        request = allowance_service.Request(user, {Kind.inference: 300_000}, 1)
        blind = allowance_service.plan(organization, [request], act)
        merged = await allowance_service.check_version(
            session, act, organization, user, 1, {"max_tokens": 300_000}
        )
        conflict = allowance_service.version_conflict(user, 1)
        return blind.refused, merged, conflict

    refused, merged, conflict = await db.write(lambda s: work(s, Act("test", clock.now())))
    assert [r.code for r in refused] == ["version_conflict"]
    assert merged is None
    assert isinstance(conflict, VersionConflict)
    assert conflict.details["current"]["version"] == 2


async def test_in_one_batch_each_stale_row_merges_or_conflicts_on_its_own(api: Api) -> None:
    org = await funded_org(api)
    ana = await api.user(org, "ana@example.com")
    bo = await api.user(org, "bo@example.com")
    await api.allowances(
        org,
        {"user": ana["id"], "max_tokens": 210_000},
        {"user": bo["id"], "max_tokens": 220_000},
        expect=200,
    )
    rows = [
        {"user": ana["id"], "max_train_tokens": 1_000, "expected_version": 1},
        {"user": bo["id"], "max_tokens": 230_000, "expected_version": 1},
    ]
    details = error_of(await api.allowances(org, *rows), 409, "version_conflict")
    assert [(r["index"], r["conflicts"]) for r in details["refused"]] == [(1, ["max_tokens"])]
    assert details["refused"][0]["changes_since"][0]["by"] == "operator:ops"
    assert details["refused"][0]["message"].startswith("The operator ops changed bo@example.com")

    await api.allowances(org, rows[0], expect=200)
    stored = await get_user(api, ana["id"])
    assert (stored["max_tokens"], stored["max_train_tokens"], stored["version"]) == (
        210_000,
        1_000,
        3,
    )
