"""Exactness under streaming (issue 11): many streamed completions at once, their clients
leaving at random points; every token committed is used, every use is journaled, and no
reservation is left open."""

from __future__ import annotations

import asyncio
import random
from datetime import timedelta

from openai.types.chat import ChatCompletionMessageParam

from tests.gateway.conftest import MODEL, World
from tokenadmin.clock import FakeClock
from tokenadmin.sweeper import sweep
from tokenadmin.tokens import Kind

STREAMS = 24
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Tell a story."}]


async def test_streams_cut_at_random_points_meter_exactly_what_was_committed(
    world: World, clock: FakeClock
) -> None:
    chance = random.Random(11)
    plans = [(chance.randint(1, 40), chance.randint(0, 45)) for _ in range(STREAMS)]
    client = world.client()

    async def one(words: int, leave_after: int) -> int:
        stream = await client.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,
            max_tokens=100,
            stream=True,
            extra_body={"fake": {"words": words}},
        )
        seen = 0
        async for _ in stream:
            seen += 1
            if seen >= leave_after:
                break
        await stream.close()
        return seen

    await asyncio.gather(*(one(words, leave) for words, leave in plans))
    await world.gateway.settled()

    reservations = await world.reservations()
    assert len(reservations) == STREAMS
    assert {r.status for r in reservations} <= {"committed", "released"}
    committed = sum(r.committed_amount or 0 for r in reservations)
    user = await world.user()
    assert user.used(Kind.inference) == committed > 0
    assert user.reserved(Kind.inference) == 0
    assert await world.journal_used() == committed
    commits = await world.journal("commit")
    assert sum(entry.amount for entry in commits) == committed

    # After the reservations' time to live, the sweeper finds nothing left open.
    clock.advance(seconds=world.app.state.settings.reservation_ttl_seconds + 1)
    report = await sweep(world.db, clock, idempotency_ttl=timedelta(hours=48))
    assert report.reservations_expired == 0
    assert all(r.status != "open" for r in await world.reservations())
