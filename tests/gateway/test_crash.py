"""A server killed mid-stream (SIGKILL: nothing runs at exit) loses no metering record:
the reservation it made expires and its expiry is journaled."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import openai
import pytest

from tests.gateway.conftest import MODEL, World
from tests.servers import Server
from tokenadmin.clock import FakeClock
from tokenadmin.sweeper import sweep
from tokenadmin.tokens import Kind


@pytest.mark.slow
async def test_a_server_killed_mid_stream_leaves_a_reservation_that_expires_journaled(
    world: World, database_url: str, tmp_path: Path
) -> None:
    server = Server(database_url, log=tmp_path / "server.log")
    server.start()
    try:
        await asyncio.to_thread(server.wait_ready)
        client = openai.AsyncOpenAI(
            api_key=world.personal_key, base_url=f"{server.url}/openai/v1", max_retries=0
        )
        world.clients.append(client)
        stream = await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Go on."}],
            stream=True,
            extra_body={"fake": {"words": 10, "hold_after": 2}},
        )
        seen = 0
        async for _ in stream:
            seen += 1
            if seen == 2:
                break
        await world.upstream.holding.wait()
        server.kill()
    finally:
        server.stop()

    [reservation] = await world.reservations()
    assert reservation.status == "open"
    assert (await world.user()).reserved(Kind.inference) == reservation.amount

    ttl = world.app.state.settings.reservation_ttl_seconds
    later = FakeClock(datetime.now(UTC) + timedelta(seconds=ttl + 1))
    report = await sweep(world.db, later, idempotency_ttl=timedelta(hours=48))

    assert report.reservations_expired == 1
    [expired] = await world.journal("reservation_expired")
    assert (expired.reservation_id, expired.amount) == (reservation.id, reservation.amount)
    user = await world.user()
    assert (user.used(Kind.inference), user.reserved(Kind.inference)) == (0, 0)
