"""Concurrent metering requests share transactions, and still each get their own answer."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from tests.helpers import Api, funded_org
from tests.scenarios import error_of, get_user, journal, org_api
from tokenadmin.errors import Unavailable
from tokenadmin.idempotency.service import Answer
from tokenadmin.usage.coalescer import Coalescer
from tokenadmin.usage.service import Caller, Operation

CALLER = Caller("key:test", None, "test")
OTHER = Caller("key:other", None, "other")


def _usage(user: str) -> Operation:
    return Operation("usage", user=user, tokens=1, idempotency_key=user)


class Recorder:
    """A stand-in for the metering engine: notes each transaction's operations."""

    def __init__(self, *, delay: float = 0.01, fail_on: str | None = None) -> None:
        self.groups: list[list[str]] = []
        self.skipping: list[bool] = []
        self.delay = delay
        self.fail_on = fail_on

    async def __call__(
        self, caller: Caller, operations: Sequence[Operation], *, skip_locked: bool = False
    ) -> list[Answer]:
        users = [op.user or "" for op in operations]
        self.groups.append(users)
        self.skipping.append(skip_locked)
        await asyncio.sleep(self.delay)
        if self.fail_on in users:
            raise RuntimeError("a statement failed")
        return [Answer(200, {"user": user, "caller": caller.actor}) for user in users]


async def test_requests_arriving_together_share_a_transaction_and_keep_their_answers() -> None:
    run = Recorder()
    coalescer = Coalescer(run)

    first = asyncio.create_task(coalescer.submit(CALLER, _usage("u0")))
    await asyncio.sleep(0.001)  # its transaction has begun
    rest = [coalescer.submit(CALLER, _usage(f"u{i}")) for i in range(1, 50)]
    answers = [await first, *await asyncio.gather(*rest)]

    assert [a.body["user"] for a in answers] == [f"u{i}" for i in range(50)]
    # The first ran at once, alone; the rest arrived while it ran and went in one transaction.
    assert run.groups == [["u0"], [f"u{i}" for i in range(1, 50)]]
    # Requests grouped wait for their users' locks: a group names few, often the same one.
    assert run.skipping == [False, False]


async def test_a_batch_may_skip_the_users_locked_elsewhere() -> None:
    run = Recorder()
    coalescer = Coalescer(run)

    await coalescer.run(CALLER, [_usage("u0"), _usage("u1")])

    assert run.groups == [["u0", "u1"]]
    assert run.skipping == [True]


async def test_a_lone_request_does_not_wait_for_company() -> None:
    run = Recorder(delay=0)
    coalescer = Coalescer(run)

    for i in range(3):
        assert (await coalescer.submit(CALLER, _usage(f"u{i}"))).body["user"] == f"u{i}"

    assert run.groups == [["u0"], ["u1"], ["u2"]]


async def test_groups_are_per_caller_and_bounded_in_size() -> None:
    run = Recorder()
    coalescer = Coalescer(run, max_batch=10)

    answers = await asyncio.gather(
        *(coalescer.submit(CALLER if i % 2 else OTHER, _usage(f"u{i}")) for i in range(41))
    )

    assert [a.body["caller"] for a in answers] == [
        "key:test" if i % 2 else "key:other" for i in range(41)
    ]
    assert all(len(group) <= 10 for group in run.groups)
    for group in run.groups:  # never two callers' operations in one transaction
        assert len({int(user[1:]) % 2 for user in group}) == 1


async def test_one_failing_operation_does_not_fail_the_others_in_its_group() -> None:
    run = Recorder(fail_on="u7")
    coalescer = Coalescer(run)

    results = await asyncio.gather(
        *(coalescer.submit(CALLER, _usage(f"u{i}")) for i in range(20)), return_exceptions=True
    )

    assert isinstance(results[7], RuntimeError)
    assert [r.body["user"] for i, r in enumerate(results) if i != 7] == [  # type: ignore[union-attr]
        f"u{i}" for i in range(20) if i != 7
    ]


async def test_waiters_hear_when_the_service_stops_under_them() -> None:
    started = asyncio.Event()

    async def never_finishes(
        caller: Caller, operations: Sequence[Operation], *, skip_locked: bool = False
    ) -> list[Answer]:
        started.set()
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    coalescer = Coalescer(never_finishes)
    waiter = asyncio.create_task(coalescer.submit(CALLER, _usage("u0")))
    await started.wait()
    draining = [q.draining for q in coalescer._queues.values()]
    for task in draining:
        assert task is not None
        task.cancel()

    with pytest.raises(Unavailable):
        await waiter


# --- through the API ---------------------------------------------------------------------------


async def test_concurrent_requests_for_one_user_are_exact_and_journaled_one_each(
    api: Api,
) -> None:
    org = await funded_org(api)
    ana = await api.user(org, "ana@example.com")  # 200,000 Max Tokens, the minimum
    service = await org_api(api, org, "usage")

    responses = await asyncio.gather(*(service.use(ana["id"], 6_000) for _ in range(60)))

    accepted = [r for r in responses if r.status_code == 200]
    assert len(accepted) == 33  # 33 × 6,000 = 198,000 fits in 200,000; a 34th would not
    for refused in (r for r in responses if r.status_code != 200):
        error_of(refused, 402, "insufficient_tokens")
    assert (await get_user(api, ana["id"]))["inference"]["used"] == 198_000
    entries = [e for e in await journal(api, org) if e["action"] == "usage"]
    assert sorted(e["id"] for e in entries) == sorted(
        r.json()["journal_entry_id"] for r in accepted
    )
    # Each answer tells what was used after it, in the order the requests were applied.
    assert sorted(r.json()["used"] for r in accepted) == list(range(6_000, 198_001, 6_000))


async def test_a_revoked_key_meters_nothing_even_while_remembered(api: Api) -> None:
    org = await funded_org(api)
    ana = await api.user(org, "ana@example.com")
    created = await api.post(
        f"/v1/organizations/{org}/api-keys", {"name": "svc", "scopes": ["usage"]}, expect=201
    )
    service = api.as_key(created["key"])
    await service.use(ana["id"], 10, expect=200)  # the key is now remembered

    await api.call("DELETE", f"/v1/organizations/{org}/api-keys/{created['id']}", expect=200)
    refused = await asyncio.gather(*(service.use(ana["id"], 10) for _ in range(5)))

    for response in refused:
        error_of(response, 401, "unauthenticated")
    assert (await get_user(api, ana["id"]))["inference"]["used"] == 10


async def test_a_callers_transactions_run_one_at_a_time_and_other_callers_alongside() -> None:
    """Batches and groups of one caller wait for each other (they would wait on each other's
    row locks, in a chain); another caller's do not wait for them."""
    running: dict[str, int] = {}
    most: dict[str, int] = {}
    together = 0

    async def run(
        caller: Caller, operations: Sequence[Operation], *, skip_locked: bool = False
    ) -> list[Answer]:
        nonlocal together
        running[caller.actor] = running.get(caller.actor, 0) + 1
        most[caller.actor] = max(most.get(caller.actor, 0), running[caller.actor])
        together = max(together, sum(running.values()))
        await asyncio.sleep(0.01)
        running[caller.actor] -= 1
        return [Answer(200, {"user": op.user}) for op in operations]

    coalescer = Coalescer(run)
    batches = [coalescer.run(CALLER, [_usage(f"b{i}"), _usage(f"c{i}")]) for i in range(3)]
    lone = asyncio.create_task(coalescer.submit(CALLER, _usage("u0")))
    answers = await asyncio.gather(*batches, coalescer.run(OTHER, [_usage("o0")]))

    assert [[a.body["user"] for a in batch] for batch in answers] == [
        ["b0", "c0"],
        ["b1", "c1"],
        ["b2", "c2"],
        ["o0"],
    ]
    assert (await lone).body["user"] == "u0"
    assert most == {"key:test": 1, "key:other": 1}
    assert together == 2
    assert not coalescer._turns  # nothing kept once no transaction waits
