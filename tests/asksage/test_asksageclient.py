"""The unmodified `asksageclient` package (PyPI) against a live tokenadmin, for every
method of it that tokenadmin serves."""

from __future__ import annotations

import logging

import pytest
import requests
from asksageclient import AskSageClient  # type: ignore[import-untyped]

from tests.asksage.conftest import LiveServer, Org
from tests.helpers import Api
from tests.scenarios import get_user, journal


def answered(raised: pytest.ExceptionInfo[requests.HTTPError]) -> requests.Response:
    """The answer a client's call raised for."""
    response = raised.value.response
    assert response is not None
    return response


def client(live: LiveServer, email: str, key: str) -> AskSageClient:
    return AskSageClient(email, key, user_base_url=live.user_url, server_base_url=live.server_url)


@pytest.fixture(autouse=True)
def _quiet_client() -> None:
    # The client logs every HTTP error it raises with its traceback, at ERROR.
    logging.getLogger("asksageclient.client").setLevel(logging.CRITICAL)


async def test_a_member_counts_their_usage_with_a_token_or_with_the_key_itself(
    live: LiveServer, org: Org, api: Api
) -> None:
    member = client(live, org.member.email, org.member.key)
    assert member.headers["x-access-tokens"].startswith("ast_")
    assert member.count_monthly_tokens() == {"response": 0, "status": 200}
    await api.use(org.member.email, 1234)
    await api.use(org.member.email, 56, "training")
    assert member.count_monthly_tokens() == {"response": 1234, "status": 200}
    assert member.count_monthly_teach_tokens() == {"response": 56, "status": 200}
    keyed = client(live, "", org.member.key)  # an empty email: the key itself is the token
    assert keyed.headers["x-access-tokens"] == org.member.key
    assert keyed.count_monthly_tokens()["response"] == 1234


async def test_an_admin_lists_users_and_sets_their_allowances(
    live: LiveServer, org: Org, api: Api
) -> None:
    admin = client(live, org.admin.email, org.admin.key)
    page = admin.admin_get_all_users_with_tokens(start=0, limit=10)
    assert page["status"] == 200
    assert [u["email"] for u in page["response"]] == [org.admin.email, org.member.email]
    row = page["response"][1]
    assert row["id"] == org.member.id
    assert {"first_name", "last_name", "banned", "tokens_used", "train_tokens_used"} <= set(row)
    assert (row["max_tokens"], row["max_train_tokens"], row["banned"]) == (200_000, 10_000, False)
    only = admin.admin_get_all_users_with_tokens(email=org.member.email.upper())
    assert [u["id"] for u in only["response"]] == [org.member.id]

    answer = admin.admin_update_user_tokens(org.member.id, 300_000)
    assert answer["status"] == 200
    assert answer["response"]["max_tokens"] == 300_000
    admin.admin_update_user_train_tokens(org.member.email, 5_000)
    user = await get_user(api, org.member.id)
    assert (user["max_tokens"], user["max_train_tokens"]) == (300_000, 5_000)
    changes = [e for e in await journal(api, org.id) if e["action"] == "allowance_changed"]
    assert [(e["kind"], e["amount"], e["actor"]) for e in changes] == [
        ("inference", 300_000, f"user:{org.admin.email}"),
        ("training", 5_000, f"user:{org.admin.email}"),
    ]


async def test_refusals_raise_as_http_errors_with_the_status_in_the_body(
    live: LiveServer, org: Org, api: Api
) -> None:
    with pytest.raises(requests.HTTPError) as wrong_email:
        client(live, "someone@example.com", org.member.key)
    assert answered(wrong_email).status_code == 401
    assert answered(wrong_email).json()["status"] == 401

    member = client(live, org.member.email, org.member.key)
    with pytest.raises(requests.HTTPError) as not_admin:
        member.admin_update_user_tokens(org.member.id, 900_000)
    assert answered(not_admin).status_code == 403
    body = answered(not_admin).json()
    assert body["status"] == 403
    assert "administrator" in body["response"]

    admin = client(live, org.admin.email, org.admin.key)
    with pytest.raises(requests.HTTPError) as below:
        admin.admin_update_user_tokens(org.member.id, 100)
    assert answered(below).status_code == 422
    assert answered(below).json() == {
        "response": f"Max Tokens for {org.member.email} would be 100; the minimum is 200,000.",
        "status": 422,
        "code": "below_minimum",
    }
    with pytest.raises(requests.HTTPError) as over:
        admin.admin_update_user_tokens(org.member.id, 5_000_000)
    assert answered(over).status_code == 422
    assert answered(over).json()["code"] == "exceeds_balance"
    assert (await get_user(api, org.member.id))["max_tokens"] == 200_000


async def test_query_train_tokenizer_and_models_meter_through_the_same_service(
    live: LiveServer, org: Org, api: Api
) -> None:
    member = client(live, org.member.email, org.member.key)
    models = member.get_models()["response"]
    assert models["object"] == "list"
    demo = next(m for m in models["data"] if m["id"] == "demo-echo")
    assert (demo["prompt_rate"], demo["completion_rate"]) == ("1", "1")
    count = member.tokenizer("How many tokens is this?")
    assert count["status"] == 200
    assert isinstance(count["response"], int)
    assert count["response"] > 0

    answer = member.query("Hello there, model", model="demo-echo", dataset="none")
    assert answer["status"] == 200
    assert answer["response"] == "OK"
    assert "Hello there, model" in answer["message"]
    assert answer["type"] == "completion"
    usage = answer["usage"]
    charged = usage["prompt_tokens"] + usage["completion_tokens"]
    assert member.count_monthly_tokens()["response"] == charged

    trained = member.train("A document of a few words to ingest.", context="notes")
    assert trained["status"] == 200
    assert trained["tokens"] == count_of(member, "A document of a few words to ingest.")
    assert member.count_monthly_teach_tokens()["response"] == trained["tokens"]
    user = await get_user(api, org.member.id)
    assert user["inference"]["used"] == charged
    assert user["inference"]["reserved"] == 0
    assert user["training"]["used"] == trained["tokens"]
    entries = await journal(api, org.id, user_id=org.member.id)
    assert [e["action"] for e in entries if e["kind"] == "inference"][-2:] == ["reserve", "commit"]


def count_of(member: AskSageClient, text: str) -> int:
    counted: int = member.tokenizer(text)["response"]
    return counted


async def test_a_query_that_does_not_fit_is_refused_with_402_and_meters_nothing(
    live: LiveServer, org: Org, api: Api
) -> None:
    member = client(live, org.member.email, org.member.key)
    await api.use(org.member.email, 199_990)
    with pytest.raises(requests.HTTPError) as short:
        member.query("Tell me everything", model="demo-echo")
    assert answered(short).status_code == 402
    assert answered(short).json()["code"] == "insufficient_tokens"
    assert member.count_monthly_tokens()["response"] == 199_990
    with pytest.raises(requests.HTTPError) as unknown:
        member.query("Hi", model="no-such-model")
    assert answered(unknown).status_code == 404
    assert answered(unknown).json()["code"] == "model_not_found"
    with pytest.raises(requests.HTTPError) as dataset:
        member.query("Hi", model="demo-echo", dataset="user_content_1_docs_content")
    assert answered(dataset).status_code == 422
    assert "Datasets are not served" in answered(dataset).json()["response"]
