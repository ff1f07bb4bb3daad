"""Personal API keys through the API: a user's own keys act as the user, with their role;
the user and their organization's administrators create, list and revoke them; the
secret is shown once; a deactivated user's keys authenticate nobody."""

from __future__ import annotations

from typing import Any

from tests.helpers import Api, funded_org
from tests.scenarios import error_of, journal, org_api


def _keys(user_id: str) -> str:
    return f"/v1/users/{user_id}/api-keys"


async def _member_with_key(api: Api) -> tuple[str, dict[str, Any], dict[str, Any]]:
    org_id = await funded_org(api)
    member = await api.user(org_id, "mia@example.com")
    admin = await org_api(api, org_id, "admin")
    created: dict[str, Any] = await admin.post(_keys(member["id"]), {"name": "laptop"}, expect=201)
    return org_id, member, created


async def test_an_administrator_gives_a_member_a_key_that_acts_as_the_member(api: Api) -> None:
    org_id, member, created = await _member_with_key(api)
    assert created["key"].startswith("ta_")
    assert created["user_id"] == member["id"]
    assert created["name"] == "laptop"
    assert created["scopes"] == []
    mine = api.as_key(created["key"])

    # The member's key reads the member, and lists their own keys without the secret.
    assert (await mine.get(f"/v1/users/{member['id']}"))["email"] == "mia@example.com"
    listed = await mine.get(_keys(member["id"]))
    assert [k["id"] for k in listed] == [created["id"]]
    assert "key" not in listed[0]
    assert created["key"] not in str(listed)
    # It is not an administrator's key: the organization's users stay out of reach.
    error_of(await mine.call("GET", f"/v1/organizations/{org_id}/users"), 403, "forbidden")
    # The organization's service keys do not list people's keys.
    service_keys = await api.get(f"/v1/organizations/{org_id}/api-keys")
    assert created["id"] not in [k["id"] for k in service_keys]
    # Creating it is in the audit trail, with its user and without its secret.
    entries = [e for e in await journal(api, org_id) if e["action"] == "api_key_created"]
    assert entries[-1]["details"]["user_id"] == member["id"]
    assert created["key"] not in str(entries)


async def test_a_member_creates_and_revokes_their_own_keys_and_no_one_elses(api: Api) -> None:
    org_id, member, created = await _member_with_key(api)
    mine = api.as_key(created["key"])
    other = await api.user(org_id, "olu@example.com")

    second = await mine.post(_keys(member["id"]), {"name": "script"}, expect=201)
    assert second["user_id"] == member["id"]
    # Another user's keys are not a member's to give or see.
    error_of(await mine.call("POST", _keys(other["id"]), json={"name": "x"}), 403, "forbidden")
    error_of(await mine.call("GET", _keys(other["id"])), 403, "forbidden")

    revoked = (
        await mine.call("DELETE", f"{_keys(member['id'])}/{second['id']}", expect=200)
    ).json()
    assert revoked["revoked_at"] is not None
    error_of(
        await api.as_key(second["key"]).call("GET", f"/v1/users/{member['id']}"),
        401,
        "unauthenticated",
    )
    # The first key still works; revoking it again changes nothing.
    assert len(await mine.get(_keys(member["id"]))) == 2
    again = await mine.call("DELETE", f"{_keys(member['id'])}/{second['id']}", expect=200)
    assert again.json()["revoked_at"] == revoked["revoked_at"]
    # A key of the organization's (not this user's) is not theirs to revoke.
    service_key = (
        await api.post(
            f"/v1/organizations/{org_id}/api-keys", {"name": "svc", "scopes": ["usage"]}, expect=201
        )
    )["id"]
    error_of(
        await mine.call("DELETE", f"{_keys(member['id'])}/{service_key}"), 404, "api_key_not_found"
    )


async def test_another_organization_can_neither_see_nor_give_keys(api: Api) -> None:
    _org_id, member, _created = await _member_with_key(api)
    other_org = await funded_org(api)
    stranger = await org_api(api, other_org, "admin")
    error_of(await stranger.call("POST", _keys(member["id"]), json={"name": "x"}), 404, "not_found")
    error_of(await stranger.call("GET", _keys(member["id"])), 404, "not_found")
    reader = await org_api(api, _org_id, "read")
    error_of(await reader.call("POST", _keys(member["id"]), json={"name": "x"}), 403, "forbidden")


async def test_a_deactivated_users_keys_stop_working_and_none_are_given(api: Api) -> None:
    _org_id, member, created = await _member_with_key(api)
    await api.post(f"/v1/users/{member['id']}/deactivate", expect=200)
    error_of(
        await api.as_key(created["key"]).call("GET", f"/v1/users/{member['id']}"),
        401,
        "unauthenticated",
    )
    error_of(
        await api.call("POST", _keys(member["id"]), json={"name": "again"}),
        409,
        "user_deactivated",
    )


async def test_a_key_name_is_required_and_unknown_fields_are_refused(api: Api) -> None:
    _org_id, member, _created = await _member_with_key(api)
    error_of(await api.call("POST", _keys(member["id"]), json={}), 422, "invalid_request")
    error_of(
        await api.call("POST", _keys(member["id"]), json={"name": "x", "scopes": ["admin"]}),
        422,
        "invalid_request",
    )
