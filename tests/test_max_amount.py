"""SPEC rule 8 where a plan is made: no allowance, and no organization's allocated total,
goes past 2^53, whichever route asks (a batch, a CSV import, one user's change)."""

from __future__ import annotations

from tests.helpers import Api
from tests.scenarios import error_of, get_user, last_entry_id
from tokenadmin.tokens import MAX_AMOUNT


async def _two_big_users(api: Api) -> tuple[str, dict[str, str], dict[str, str]]:
    """An organization that may over-allocate, so only rule 8 bounds its allocated total."""
    org = (await api.organization(min_inference=0, overallocation=True))["id"]
    await api.purchase(org, 1_000_000)
    ana = await api.user(org, "ana@example.com", max_tokens=MAX_AMOUNT - 1_000)
    bo = await api.user(org, "bo@example.com", max_tokens=0)
    return org, ana, bo


async def test_a_batch_that_would_allocate_past_2_53_is_refused_and_changes_nothing(
    api: Api,
) -> None:
    org, ana, bo = await _two_big_users(api)
    balance = await api.balance(org)
    mark = await last_entry_id(api, org)

    response = await api.allowances(
        org,
        {"user": ana["id"], "max_tokens": MAX_AMOUNT},
        {"user": bo["id"], "max_tokens": 5_000},
    )

    details = error_of(response, 422, "allowance_change_refused")
    assert [(r["index"], r["code"]) for r in details["refused"]] == [
        (0, "amount_too_large"),
        (1, "amount_too_large"),
    ]
    assert details["refused"][0]["allocated_after"] == MAX_AMOUNT + 5_000
    assert details["refused"][0]["maximum"] == MAX_AMOUNT
    assert "2^53" in response.json()["error"]["message"]
    assert await last_entry_id(api, org) == mark
    assert await api.balance(org) == balance
    assert (await get_user(api, ana["id"]))["max_tokens"] == MAX_AMOUNT - 1_000

    # Up to 2^53 exactly is fine.
    await api.allowances(org, {"user": bo["id"], "max_tokens": 1_000}, expect=200)
    assert (await api.balance(org))["inference"]["allocated"] == MAX_AMOUNT


async def test_importing_a_csv_that_would_allocate_past_2_53_is_refused_and_changes_nothing(
    api: Api,
) -> None:
    org, ana, _ = await _two_big_users(api)
    balance = await api.balance(org)
    mark = await last_entry_id(api, org)
    csv = f"email,name,max_tokens\nana@example.com,,{MAX_AMOUNT}\nnew@example.com,New,5000\n"

    response = await api.call("POST", f"/v1/organizations/{org}/users/import", json={"csv": csv})

    details = error_of(response, 422, "import_refused")
    assert [(r["line"], r["email"], r["code"]) for r in details["refused"]] == [
        (2, "ana@example.com", "amount_too_large"),
        (3, "new@example.com", "amount_too_large"),
    ]
    assert await last_entry_id(api, org) == mark
    assert await api.balance(org) == balance
    assert (await get_user(api, ana["id"]))["max_tokens"] == MAX_AMOUNT - 1_000
    assert (await api.get(f"/v1/organizations/{org}/users"))["total"] == 2


async def test_one_users_allowance_past_the_organizations_2_53_is_refused_with_the_rules_code(
    api: Api,
) -> None:
    _, _, bo = await _two_big_users(api)
    response = await api.call("PATCH", f"/v1/users/{bo['id']}", json={"max_tokens": 2_000})
    details = error_of(response, 422, "amount_too_large")
    assert details["allocated_after"] == MAX_AMOUNT + 1_000
    assert (await get_user(api, bo["id"]))["max_tokens"] == 0
