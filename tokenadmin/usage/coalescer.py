"""Group concurrent metering requests into shared transactions.

A metered request costs little work but a whole transaction: locks, a commit, and on
PostgreSQL a WAL flush. When many requests arrive at once, and above all when they are for
one user, one transaction each makes them queue on the user's row lock and on the disk.

`Coalescer.submit` hands an operation to its caller's queue and waits for the answer. A
queue runs one transaction at a time (per process) with everything that arrived since
the previous one started, up to `max_batch` operations. A lone request runs at once, so
grouping adds no wait when the service is idle; under load the transaction grows instead
of the queue. Every operation is still accepted or refused on its own, with its own
idempotency key and journal entry, and its answer is given only after the commit: an
acknowledged request is on disk.

`Coalescer.run` meters a batch (a request's operations) in transactions of its own: one,
unless some of its users are locked by another transaction (on PostgreSQL, `service.run`'s
`skip_locked`: their operations go to the next one). A caller's transactions, its groups
and its batches alike, run one at a time per process: concurrent transactions of one
organization name the same users (a batch names up to a thousand), and each locks them in
id order, holding those it has while it waits for the next; with many in flight they wait
on each other in a chain. One at a time, a process's transaction waits at most on those of
the other processes, and a batch's first transactions not even on those.

If a group's transaction fails with an unexpected error, its operations are retried one
transaction each, so one bad operation cannot fail the requests that shared its
transaction.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from tokenadmin.errors import Unavailable
from tokenadmin.idempotency.service import Answer, KeysInFlight
from tokenadmin.usage.service import Caller, Operation

log = logging.getLogger("tokenadmin.usage")

STOPPING = "The service is stopping and did not apply this request; send it again."


class Run(Protocol):
    """Meters operations (`service.run`): with `skip_locked`, those of users another
    transaction has locked may go to a transaction of their own, after the rest."""

    async def __call__(
        self, caller: Caller, operations: Sequence[Operation], *, skip_locked: bool = False
    ) -> list[Answer]: ...


@dataclass
class _Queue:
    waiting: list[tuple[Operation, asyncio.Future[Answer]]] = field(default_factory=list)
    draining: asyncio.Task[None] | None = None


@dataclass
class _Turn:
    """A caller's turn at the database: its transaction under way, and how many wait."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    waiting: int = 0


class Coalescer:
    def __init__(
        self, run: Run, *, in_flight: KeysInFlight | None = None, max_batch: int = 500
    ) -> None:
        self._run = run
        self._in_flight = in_flight or KeysInFlight()
        self._max_batch = max_batch
        self._queues: dict[Caller, _Queue] = {}
        self._turns: dict[Caller, _Turn] = {}

    async def run(self, caller: Caller, operations: Sequence[Operation]) -> list[Answer]:
        """Meter operations in transactions of their own (the batch of a request), once
        the caller's transaction under way in this process, if any, has ended: those of
        users locked elsewhere may go after the rest (`Run`)."""
        return await self._in_turn(caller, operations, skip_locked=True)

    async def _in_turn(
        self, caller: Caller, operations: Sequence[Operation], *, skip_locked: bool
    ) -> list[Answer]:
        for operation in operations:
            operation.keyed()  # outside the turn: see Operation.keyed
        turn = self._turns.setdefault(caller, _Turn())
        turn.waiting += 1
        try:
            async with turn.lock:
                return await self._run(caller, operations, skip_locked=skip_locked)
        finally:
            turn.waiting -= 1
            if not turn.waiting:
                self._turns.pop(caller, None)

    async def submit(self, caller: Caller, operation: Operation) -> Answer:
        """Meter `operation` in the next transaction of its caller; its answer once committed."""
        operation.keyed()  # outside the transaction: see Operation.keyed
        if operation.idempotency_key is not None:
            # Waiting or being applied: told at once (`KeysInFlight`), given back once answered.
            self._in_flight.take(caller.idempotency_scope, operation.idempotency_key)
        queue = self._queues.setdefault(caller, _Queue())
        answer: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        queue.waiting.append((operation, answer))
        if queue.draining is None:
            queue.draining = asyncio.create_task(self._drain(caller, queue))
        # Shielded: a client that goes away does not take its operation out of a transaction
        # that may already have committed it.
        return await asyncio.shield(answer)

    async def _drain(self, caller: Caller, queue: _Queue) -> None:
        try:
            while queue.waiting:
                group = queue.waiting[: self._max_batch]
                del queue.waiting[: self._max_batch]
                try:
                    await self._settle(caller, group)
                finally:
                    keys = (op.idempotency_key for op, _ in group if op.idempotency_key)
                    self._in_flight.give_back(caller.idempotency_scope, keys)
        finally:
            queue.draining = None
            if not queue.waiting:
                self._queues.pop(caller, None)

    async def _settle(
        self, caller: Caller, group: list[tuple[Operation, asyncio.Future[Answer]]]
    ) -> None:
        try:
            operations = [operation for operation, _ in group]
            answers = await self._in_turn(caller, operations, skip_locked=False)
        except BaseException as error:
            if not isinstance(error, Exception):
                # Cancelled at shutdown: the transaction did not commit.
                for _, future in group:
                    _fail(future, Unavailable(STOPPING))
                raise
            if len(group) == 1 or isinstance(error, Unavailable):
                # Alone, or the database is out of reach: one by one would fail the same way.
                for _, future in group:
                    _fail(future, error)
                return
            log.warning("a group of %d operations failed (%r); retrying them one by one",
                        len(group), error)  # fmt: skip
            for one in group:
                await self._settle(caller, [one])
            return
        for (_, future), answer in zip(group, answers, strict=True):
            if not future.done():
                future.set_result(answer)

    async def close(self) -> None:
        """Wait for the transactions under way (at shutdown, after the last request)."""
        tasks = [q.draining for q in self._queues.values() if q.draining is not None]
        await asyncio.gather(*tasks, return_exceptions=True)


def _fail(future: asyncio.Future[Answer], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
