"""The OpenAI-compatible gateway with the official `openai` client, against the fake
upstream: what is metered, at which rates, streamed or not, refused how, and what happens
when the upstream is slow, fails or the client leaves midway."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.gateway.conftest import MODEL, UPSTREAM_MODEL, World
from tests.gateway.upstream import PROMPT_TOKENS
from tokenadmin.catalog.service import Rate
from tokenadmin.gateway.estimate import estimate_messages, estimate_tokens
from tokenadmin.tokens import Kind

RATE = Rate(Decimal("1"), Decimal("2.5"))
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say five words."}]


async def test_a_chat_completion_commits_the_reported_usage_at_the_models_rates(
    world: World,
) -> None:
    answer = await world.client().chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=50,
    )

    assert answer.choices[0].message.content == "w0 w1 w2 w3 w4"
    charged = RATE.charge(PROMPT_TOKENS, 5)  # ceil(7 + 5 x 2.5) = 20
    assert charged == 20
    user = await world.user()
    assert (user.used(Kind.inference), user.reserved(Kind.inference)) == (charged, 0)
    [reservation] = await world.reservations()
    assert reservation.amount == RATE.charge(estimate_messages(MESSAGES), 50)
    assert (reservation.status, reservation.committed_amount) == ("committed", charged)
    [commit] = await world.journal("commit")
    assert commit.details is not None
    assert {k: commit.details[k] for k in ("model", "prompt_tokens", "completion_tokens")} == {
        "model": MODEL,
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": 5,
    }
    assert (commit.details["prompt_rate"], commit.details["completion_rate"]) == ("1", "2.5")
    sent = world.upstream.requests[0]
    assert sent["model"] == UPSTREAM_MODEL
    assert world.upstream.headers[0]["authorization"] == "Bearer sk-upstream"


async def test_a_streamed_chat_passes_every_chunk_and_commits_the_usage_of_the_last(
    world: World,
) -> None:
    stream = await world.client().chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=50,
        stream=True,
    )
    chunks = [chunk async for chunk in stream]

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "w0 w1 w2 w3 w4"
    assert all(chunk.usage is None for chunk in chunks)  # not asked for: not passed on
    assert world.upstream.requests[0]["stream_options"] == {"include_usage": True}
    await world.gateway.settled()
    user = await world.user()
    assert (user.used(Kind.inference), user.reserved(Kind.inference)) == (20, 0)


async def test_a_stream_that_asks_for_usage_gets_it(world: World) -> None:
    stream = await world.client().chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"fake": {"words": 3}},
    )
    chunks = [chunk async for chunk in stream]

    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 3
    await world.gateway.settled()
    assert (await world.user()).used(Kind.inference) == RATE.charge(PROMPT_TOKENS, 3)


async def test_an_organization_key_meters_the_member_named_in_user_and_keeps_it_from_upstream(
    world: World,
) -> None:
    client = world.client(world.service_key)
    answer = await client.completions.create(model=MODEL, prompt="Hi", user=world.email)

    assert answer.choices[0].text == "w0 w1 w2 w3 w4"
    assert "user" not in world.upstream.requests[0]
    assert (await world.user()).used(Kind.inference) == 20


async def test_an_organization_key_without_a_user_is_refused(world: World) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        await world.client(world.service_key).completions.create(model=MODEL, prompt="Hi")
    assert refused.value.body["param"] == "user"  # type: ignore[index]


async def test_a_reservation_that_does_not_fit_is_refused_429_before_the_upstream_is_called(
    world: World,
) -> None:
    with pytest.raises(openai.RateLimitError) as refused:
        await world.client().chat.completions.create(
            model=MODEL,
            messages=MESSAGES,
            max_tokens=300_000,
        )

    assert refused.value.status_code == 429
    assert refused.value.code == "insufficient_quota"
    assert refused.value.type == "insufficient_quota"
    assert refused.value.response.headers["x-should-retry"] == "false"
    assert world.upstream.requests == []
    assert await world.reservations() == []


async def test_unknown_and_forbidden_models_and_bad_keys_are_refused_in_openais_shape(
    world: World,
) -> None:
    with pytest.raises(openai.NotFoundError) as unknown:
        await world.client().chat.completions.create(model="nope", messages=MESSAGES)
    assert unknown.value.code == "model_not_found"
    await world.api.call(
        "PUT", f"/v1/organizations/{world.org_id}/model-access", json={"allowed": []}
    )
    with pytest.raises(openai.PermissionDeniedError) as forbidden:
        await world.client().chat.completions.create(model=MODEL, messages=MESSAGES)
    assert forbidden.value.code == "model_not_allowed"
    with pytest.raises(openai.AuthenticationError) as bad_key:
        await world.client("ta_wrong").chat.completions.create(model=MODEL, messages=MESSAGES)
    assert bad_key.value.code == "invalid_api_key"
    assert world.upstream.requests == []


async def test_models_lists_what_the_organization_may_use(world: World) -> None:
    models = [model.id async for model in world.client().models.list()]
    assert MODEL in models


@pytest.mark.parametrize("stream", [False, True])
async def test_an_upstream_error_passes_through_and_releases_the_reservation(
    world: World, stream: bool
) -> None:
    with pytest.raises(openai.InternalServerError) as failed:
        await world.client().chat.completions.create(
            model=MODEL,
            messages=MESSAGES,
            stream=stream,
            extra_body={"fake": {"status": 503}},
        )

    assert failed.value.status_code == 503
    assert failed.value.code == "fake"
    assert failed.value.body["message"] == "fake upstream refused"  # type: ignore[index]
    await world.gateway.settled()
    [reservation] = await world.reservations()
    assert reservation.status == "released"
    user = await world.user()
    assert (user.used(Kind.inference), user.reserved(Kind.inference)) == (0, 0)


async def test_a_slow_upstream_holds_no_database_connection(world: World) -> None:
    client = world.client()

    async def ask() -> str | None:
        answer = await client.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,
            extra_body={"fake": {"hold_after": 0}},
        )
        return answer.choices[0].message.content

    asking = asyncio.create_task(ask())
    await world.upstream.holding.wait()
    [reservation] = await world.reservations()
    assert reservation.status == "open"
    assert world.db.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert world.db.read_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    world.upstream.release()
    assert await asking == "w0 w1 w2 w3 w4"
    assert (await world.user()).used(Kind.inference) == 20


async def test_a_client_leaving_mid_stream_commits_what_was_streamed_and_releases_the_rest(
    world: World,
) -> None:
    stream = await world.client().chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=50,
        stream=True,
        extra_body={"fake": {"words": 20, "hold_after": 3}},
    )
    seen = []
    async for chunk in stream:
        seen.append(chunk.choices[0].delta.content)
        if len(seen) == 3:
            break
    await world.upstream.holding.wait()
    await stream.close()
    await world.gateway.settled()
    world.upstream.release()

    assert seen == ["w0", " w1", " w2"]
    committed = RATE.charge(estimate_messages(MESSAGES), estimate_tokens("w0 w1 w2"))
    [reservation] = await world.reservations()
    assert (reservation.status, reservation.committed_amount) == ("committed", committed)
    user = await world.user()
    assert (user.used(Kind.inference), user.reserved(Kind.inference)) == (committed, 0)


async def test_a_client_leaving_before_the_first_word_still_pays_for_the_prompt(
    world: World,
) -> None:
    stream = await world.client().chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=50,
        stream=True,
        extra_body={"fake": {"words": 20, "hold_after": 0}},
    )
    await world.upstream.holding.wait()
    await stream.close()
    await world.gateway.settled()
    world.upstream.release()

    committed = RATE.charge(estimate_messages(MESSAGES), 0)
    [reservation] = await world.reservations()
    assert (reservation.status, reservation.committed_amount) == ("committed", committed)
    assert committed > 0
    user = await world.user()
    assert (user.used(Kind.inference), user.reserved(Kind.inference)) == (committed, 0)


async def test_an_upstream_dying_mid_stream_tells_the_client_and_commits_what_was_streamed(
    world: World,
) -> None:
    stream = await world.client().completions.create(
        model=MODEL, prompt="Count", stream=True, extra_body={"fake": {"die_after": 4}}
    )
    seen: list[str] = []

    async def read() -> None:
        async for chunk in stream:
            seen.append(chunk.choices[0].text)

    with pytest.raises(openai.APIError) as broken:
        await read()

    assert "failed before the answer ended" in broken.value.message
    assert seen == ["w0", " w1", " w2", " w3"]
    await world.gateway.settled()
    committed = RATE.charge(estimate_tokens("Count"), estimate_tokens("w0 w1 w2 w3"))
    user = await world.user()
    assert (user.used(Kind.inference), user.reserved(Kind.inference)) == (committed, 0)


async def test_an_answer_without_usage_is_committed_by_estimate(world: World) -> None:
    answer = await world.client().chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        extra_body={"fake": {"usage": False, "words": 2}},
    )

    assert answer.usage is None
    expected = RATE.charge(estimate_messages(MESSAGES), estimate_tokens("w0 w1"))
    assert (await world.user()).used(Kind.inference) == expected


async def test_embeddings_use_training_tokens(world: World) -> None:
    answer = await world.client().embeddings.create(model=MODEL, input=["one", "two"])

    assert len(answer.data) == 2
    user = await world.user()
    assert (user.used(Kind.training), user.used(Kind.inference)) == (RATE.charge(11, 0), 0)


async def test_a_longer_answer_than_what_is_left_commits_what_fits(world: World) -> None:
    # 200,000 allowed; the request reserves little (max_tokens 10) but the upstream reports
    # far more: all that is left is committed, never more.
    await world.api.use(world.user_id, 199_950)
    await world.client().chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=10,
        extra_body={"fake": {"words": 100}},
    )

    user = await world.user()
    assert (user.used(Kind.inference), user.reserved(Kind.inference)) == (200_000, 0)
    [commit] = await world.journal("commit")
    assert commit.details is not None
    assert commit.details["unmetered"] == RATE.charge(PROMPT_TOKENS, 100) - 50
