"""The user table as CSV on the API: GET .../users.csv and POST .../users/import, the same
functions as the dashboard's export and import and the CLI's `users export/import`."""

from __future__ import annotations

import csv
import io

from tests.helpers import Api, funded_org
from tests.scenarios import error_of, get_user, last_entry_id
from tokenadmin.user.csv_io import EXPORT_COLUMNS


async def _org(api: Api) -> tuple[str, dict[str, str]]:
    org = await funded_org(api, inference=2_000_000)
    ana = await api.user(org, "ana@example.com")
    await api.user(org, "ben@example.com", max_tokens=300_000)
    return org, ana


async def test_the_export_is_the_user_table_as_csv_with_the_dashboards_columns(api: Api) -> None:
    org, _ = await _org(api)
    await api.use("ana@example.com", 1_500, expect=200)

    response = await api.call("GET", f"/v1/organizations/{org}/users.csv", expect=200)

    assert response.headers["content-type"].startswith("text/csv")
    assert 'filename="users-' in response.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert tuple(rows[0]) == EXPORT_COLUMNS
    assert [(r["email"], r["max_tokens"], r["inference_used"]) for r in rows] == [
        ("ana@example.com", "200000", "1500"),
        ("ben@example.com", "300000", "0"),
    ]
    reader = api.as_key(await api.key(org, "read"))
    await reader.call("GET", f"/v1/organizations/{org}/users.csv", expect=200)
    usage = api.as_key(await api.key(org, "usage"))
    await usage.call("GET", f"/v1/organizations/{org}/users.csv", expect=403)


async def test_an_exported_table_edited_and_imported_back_is_previewed_then_applied(
    api: Api,
) -> None:
    org, ana = await _org(api)
    exported = (await api.call("GET", f"/v1/organizations/{org}/users.csv", expect=200)).text
    edited = exported.replace(
        "ana@example.com,Ana,member,active,200000", "ana@example.com,Ana B,member,active,250000"
    )
    edited += "cy@example.com,Cy,admin,,,,,,\n"
    mark = await last_entry_id(api, org)
    path = f"/v1/organizations/{org}/users/import"

    preview = await api.post(path, {"csv": edited, "dry_run": True}, expect=200)
    assert (preview["dry_run"], preview["applied"], preview["accepted"]) == (True, False, True)
    assert [(n["line"], n["email"], n["max_tokens"]) for n in preview["new_users"]] == [
        (4, "cy@example.com", 200_000)
    ]
    assert sorted((c["field"], c["before"], c["after"]) for c in preview["changes"]) == [
        ("max_tokens", 200_000, 250_000),
        ("name", "Ana", "Ana B"),
    ]
    assert preview["unchanged"] == 1
    assert await last_entry_id(api, org) == mark

    applied = await api.post(path, {"csv": edited}, expect=200)
    assert (applied["applied"], applied["accepted"]) == (True, True)
    stored = await get_user(api, ana["id"])
    assert (stored["name"], stored["max_tokens"]) == ("Ana B", 250_000)
    users = await api.get(f"/v1/organizations/{org}/users")
    assert users["total"] == 3
    assert (await api.balance(org))["inference"]["allocated"] == 750_000

    again = await api.post(path, {"csv": edited}, expect=200)
    assert (again["changes"], again["new_users"], again["unchanged"]) == ([], [], 3)


async def test_an_import_with_a_refused_row_saves_nothing_and_names_every_line(api: Api) -> None:
    org, ana = await _org(api)
    mark = await last_entry_id(api, org)
    path = f"/v1/organizations/{org}/users/import"
    csv_text = (
        "email,name,max_tokens\n"
        "ana@example.com,,250K\n"
        "new@example.com,New,\n"
        "ben@example.com,,100000\n"
        "bad,,1.5\n"
    )

    response = await api.call("POST", path, json={"csv": csv_text})

    details = error_of(response, 422, "import_refused")
    assert [(r["line"], r["code"]) for r in details["refused"]] == [
        (4, "below_minimum"),
        (5, "invalid_amount"),
    ]
    assert "2 rows refused" in response.json()["error"]["message"]
    assert await last_entry_id(api, org) == mark
    assert (await get_user(api, ana["id"]))["max_tokens"] == 200_000
    assert (await api.get(f"/v1/organizations/{org}/users"))["total"] == 2

    preview = await api.post(path, {"csv": csv_text, "dry_run": True}, expect=200)
    assert (preview["accepted"], preview["applied"]) == (False, False)
    assert [r["line"] for r in preview["refused"]] == [4, 5]


async def test_a_file_that_is_not_the_user_table_is_refused_as_a_whole(api: Api) -> None:
    org, _ = await _org(api)
    path = f"/v1/organizations/{org}/users/import"
    details = error_of(
        await api.call("POST", path, json={"csv": "email,colour\na@example.com,red\n"}),
        422,
        "invalid_csv",
    )
    assert details["unknown"] == ["colour"]
    error_of(await api.call("POST", path, json={"csv": " \n"}), 422, "invalid_csv")
    error_of(await api.call("POST", path, json={"csv": "x", "extra": 1}), 422, "invalid_request")
    reader = api.as_key(await api.key(org, "read"))
    await reader.call("POST", path, json={"csv": "email\na@example.com\n"}, expect=403)


async def test_a_stale_import_merges_other_fields_and_names_who_changed_the_same_one(
    api: Api,
) -> None:
    org, ana = await _org(api)
    seen = (await get_user(api, ana["id"]))["version"]
    await api.patch(f"/v1/users/{ana['id']}", {"name": "Ana Lee"}, expect=200)
    path = f"/v1/organizations/{org}/users/import"
    head = "email,name,role,max_tokens,version\n"

    # The file's version of Ana is stale now, but her Max Tokens was not changed since.
    raised = f"{head}ana@example.com,Ana Lee,member,250000,{seen}\n"
    merged = await api.post(path, {"csv": raised, "dry_run": True}, expect=200)
    assert (merged["accepted"], merged["refused"]) == (True, [])

    # Her name was: renaming her from the stale file conflicts and says who renamed her.
    renamed = f"{head}ana@example.com,Ana B,member,200000,{seen}\n"
    refused = await api.post(path, {"csv": renamed, "dry_run": True}, expect=200)
    (row,) = refused["refused"]
    assert (row["line"], row["code"]) == (2, "version_conflict")
    assert "Ana Lee" in row["message"]
    assert "(version" not in row["message"]
    assert (await get_user(api, ana["id"]))["name"] == "Ana Lee"
