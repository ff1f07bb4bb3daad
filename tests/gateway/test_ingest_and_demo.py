"""POST /v1/ingest (training tokens of a document, by count or text), and the built-in demo
model behind the gateway."""

from __future__ import annotations

import uuid
from typing import Any

from openai.types.chat import ChatCompletionMessageParam

from tests.gateway.conftest import World
from tests.helpers import Api
from tokenadmin.act import Act
from tokenadmin.catalog import service as catalog
from tokenadmin.clock import FakeClock
from tokenadmin.gateway.demo import MODEL as DEMO
from tokenadmin.gateway.estimate import estimate_tokens
from tokenadmin.tokens import Kind

TEXT = "A document of some length, ingested into an index for retrieval."


async def test_ingest_meters_training_tokens_by_count_or_by_text(world: World) -> None:
    api = world.api.as_key(world.service_key)
    key = uuid.uuid4().hex
    body = {"user": world.email, "tokens": 120, "dataset": "handbook", "document": "a.pdf"}
    first = await api.call("POST", "/v1/ingest", json=body, idempotency_key=key, expect=200)
    again = await api.call("POST", "/v1/ingest", json=body, idempotency_key=key, expect=200)
    by_text = await api.post(
        "/v1/ingest", {"user": world.user_id, "text": TEXT}, idempotency_key="t", expect=200
    )

    assert first.json()["kind"] == "training"
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert by_text["tokens"] == estimate_tokens(TEXT)
    user = await world.user()
    assert user.used(Kind.training) == 120 + estimate_tokens(TEXT)
    [entry, *_] = await world.journal("usage")
    assert entry.details is not None
    assert (entry.details["dataset"], entry.details["document"]) == ("handbook", "a.pdf")


async def test_ingest_is_refused_without_a_key_a_count_or_room(world: World) -> None:
    api = world.api.as_key(world.service_key)
    missing_key = await api.call("POST", "/v1/ingest", json={"user": world.email, "tokens": 1})
    nothing = await api.call("POST", "/v1/ingest", json={"user": world.email}, idempotency_key="n")
    too_much = await api.call(
        "POST",
        "/v1/ingest",
        json={"user": world.email, "tokens": 10_001},
        idempotency_key="m",
    )
    personal = await world.api.as_key(world.personal_key).call(
        "POST", "/v1/ingest", json={"user": world.email, "tokens": 1}, idempotency_key="p"
    )

    assert missing_key.json()["error"]["code"] == "idempotency_key_required"
    assert nothing.status_code == 422
    assert too_much.json()["error"]["code"] == "insufficient_tokens"
    assert personal.status_code == 403
    assert (await world.user()).used(Kind.training) == 0


async def test_the_demo_model_answers_streams_and_embeds_metered(
    world: World, clock: FakeClock, api: Api
) -> None:
    async def add(session: Any) -> None:
        await catalog.set_model(
            session,
            Act("test", clock.now()),
            None,
            DEMO,
            prompt_rate="1",
            completion_rate="1",
            upstream_base_url=catalog.DEMO_BASE_URL,
        )

    await world.db.write(add)
    client = world.client()
    said: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello there"}]
    answer = await client.chat.completions.create(model=DEMO, messages=said)
    stream = await client.chat.completions.create(
        model=DEMO,
        messages=said,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    vectors = await client.embeddings.create(model=DEMO, input="hello")
    await world.gateway.settled()

    text = answer.choices[0].message.content or ""
    assert "demo model" in text
    assert text.endswith("hello there")
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text
    assert answer.usage is not None
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == answer.usage.total_tokens
    assert vectors.usage.prompt_tokens == estimate_tokens("hello")
    user = await world.user()
    assert user.used(Kind.inference) == 2 * answer.usage.total_tokens
    assert user.used(Kind.training) == estimate_tokens("hello")
