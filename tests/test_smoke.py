from __future__ import annotations

from tests.helpers import Api, funded_org


async def test_usage_is_metered_against_the_allowance(api: Api) -> None:
    org = await funded_org(api)
    user = await api.user(org, "ana@example.com")
    response = await api.use(user["id"], 1_500, expect=200)
    assert response.json()["remaining"] == 198_500
    balance = await api.balance(org)
    assert balance["inference"]["used"] == 1_500
    assert balance["inference"]["allocated"] == 200_000
