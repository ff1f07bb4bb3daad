"""Mixed concurrency on PostgreSQL: three server processes, one database, over 500 requests
at once — debits of mixed sizes, reservations with commits and releases (some raced by
several clients), allowance batches, and the same idempotency key sent by many clients at
once through every process. Afterwards every rule holds, every request had exactly one
outcome, every accepted request is in the journal exactly once, and verify is clean.

Clients behave as the API asks: an answer `409 idempotency_key_in_flight` or `409 retry`
is sent again with the same key, until the first answer comes back. So is a request whose
connection broke before its answer: under this load the client's connection pool now and
then sends a request on a kept-alive connection that is being closed (by the pool itself,
or by the server's keep-alive timeout), and the answer is lost although the change may have
been applied. Sending it again with the same key must then answer the first answer, never
apply it twice; the test counts these and checks every server is still up afterwards.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from typing import Any

import httpx
import pytest

from tests.servers import WHOLE_MACHINE, running_servers
from tests.traffic import Ledger, Run, check_ledger, create_organization, operator_key
from tokenadmin.database import Database

pytestmark = [pytest.mark.slow, pytest.mark.postgres_only, WHOLE_MACHINE]

USERS = 8
CAPACITY = 2_400_000  # room for some raises, not for all of them
TRAIN_CAPACITY = 500_000
DEBIT_SIZES = (1, 7, 100, 999, 5_000, 20_000, 60_000)


async def test_500_mixed_concurrent_requests_through_three_processes_keep_every_rule(
    pg: Database, postgres_url: str
) -> None:
    started = time.monotonic()
    operator = await operator_key(pg)
    rng = random.Random(20261127)
    ledger = Ledger()
    with running_servers(postgres_url, 3) as urls:
        # Enough connections that requests seldom queue for one, kept alive for less than
        # the server's keep-alive timeout (5 s): fewer broken connections to send again.
        limits = httpx.Limits(
            max_connections=1_000, max_keepalive_connections=1_000, keepalive_expiry=2.0
        )
        async with httpx.AsyncClient(timeout=60, limits=limits) as http:
            run = Run(http, urls)
            org, admin, meters, users = await create_organization(
                run, operator, users=USERS, capacity=CAPACITY, train_capacity=TRAIN_CAPACITY
            )

            async def debit(key: str, user: str, kind: str, tokens: int) -> None:
                body = {"user": user, "kind": kind, "tokens": tokens}
                answer = await run.send(rng.choice(meters), "POST", "/v1/usage", body, key=key)
                ledger.note(key, answer)
                assert answer.status in (200, 402), answer

            async def reserve(key: str, user: str, kind: str, tokens: int) -> str | None:
                body = {"user": user, "kind": kind, "tokens": tokens, "ttl_seconds": 600}
                answer = await run.send(
                    rng.choice(meters), "POST", "/v1/reservations", body, key=key
                )
                ledger.note(key, answer)
                assert answer.status in (201, 402), answer
                return str(answer.body["id"]) if answer.status == 201 else None

            async def close(key: str, reservation: str, action: str, tokens: int | None) -> None:
                body = None if tokens is None else {"tokens": tokens}
                path = f"/v1/reservations/{reservation}/{action}"
                answer = await run.send(rng.choice(meters), "POST", path, body, key=key)
                ledger.note(key, answer)
                assert answer.status in (200, 402, 409), answer
                if answer.status == 409:
                    assert answer.body["error"]["code"] == "reservation_closed", answer

            async def flow(user: str, kind: str, tokens: int, racers: int) -> None:
                """Reserve, wait a little, then commit or release (raced by `racers` clients
                with their own keys when more than one: exactly one of them closes it)."""
                reservation = await reserve(uuid.uuid4().hex, user, kind, tokens)
                if reservation is None:
                    return
                await asyncio.sleep(rng.random() * 0.2)
                action = rng.choice(["commit", "commit", "release"])
                actual = rng.choice([None, tokens // 2, tokens, tokens + 500])
                if racers > 1:
                    actual = None  # every racer asks for the same, so none is refused for room
                await asyncio.gather(
                    *(close(uuid.uuid4().hex, reservation, action, actual) for _ in range(racers))
                )

            async def change(key: str, rows: list[dict[str, Any]]) -> None:
                path = f"/v1/organizations/{org}/allowances"
                body = {"changes": rows, "reason": "concurrency"}
                answer = await run.send(admin, "POST", path, body, key=key)
                ledger.note(key, answer)
                assert answer.status in (200, 422), answer

            def random_rows() -> list[dict[str, Any]]:
                rows = []
                for user in rng.sample(users, rng.randint(1, 3)):
                    row: dict[str, Any] = {"user": user}
                    if rng.random() < 0.8:
                        row["max_tokens"] = rng.choice([150_000, 200_000, 250_000, 400_000])
                    if rng.random() < 0.5 or "max_tokens" not in row:
                        row["max_train_tokens"] = rng.choice([10_000, 40_000, 80_000])
                    rows.append(row)
                return rows

            def random_debit() -> tuple[str, str, int]:
                kind = "inference" if rng.random() < 0.8 else "training"
                return rng.choice(users), kind, rng.choice(DEBIT_SIZES)

            work: list[Any] = []
            for _ in range(220):  # debits of mixed sizes
                work.append(debit(uuid.uuid4().hex, *random_debit()))
            for index in range(60):  # reservations, closed by one client or raced by three
                racers = 3 if index % 6 == 0 else 1
                work.append(flow(*random_debit(), racers))
            for _ in range(40):  # allowance batches, some refused
                work.append(change(uuid.uuid4().hex, random_rows()))
            for index in range(15):  # one key, ten clients at once, through every process
                key = uuid.uuid4().hex
                if index < 10:
                    same = random_debit()
                    work += [debit(key, *same) for _ in range(10)]
                elif index < 13:
                    same = random_debit()
                    work += [reserve(key, *same) for _ in range(10)]
                else:
                    rows = random_rows()
                    work += [change(key, rows) for _ in range(10)]
            setup = run.sent
            rng.shuffle(work)
            await asyncio.gather(*work)
            assert not run.faults, run.faults
            elapsed = time.monotonic() - started
            for url in urls:  # no process died under the load
                assert (await http.get(f"{url}/healthz")).status_code == 200, url
    requests = run.sent - setup
    assert requests >= 500

    outcomes = await check_ledger(pg, org, ledger, users)
    # The run was mixed: debits refused for lack of tokens, replays, refused allowance
    # batches, closes that lost a race.
    print(f"\noutcomes (status, code, replayed): {dict(sorted(outcomes.items()))}")
    assert outcomes[(402, "insufficient_tokens", False)] > 0, outcomes
    assert outcomes[(422, "allowance_change_refused", False)] > 0, outcomes
    assert outcomes[(409, "reservation_closed", False)] > 0, outcomes
    assert sum(n for (_, _, replayed), n in outcomes.items() if replayed) > 0, outcomes
    print(
        f"\n{requests} requests (plus {sum(run.retried.values())} retries of answers"
        f" {dict(run.retried)}) through 3 processes in {elapsed:.1f} s"
    )
