"""What PostgreSQL did during a measurement, from its own statistics views: the WAL it wrote
(and how much of it was full-page images, which follow each checkpoint), the pages its
backends had to write themselves because shared buffers ran out, the checkpoints, and
which relations' pages it had to read into its buffers.

Backends report their statistics when they go idle, at most once a second and at the
latest `SETTLE` seconds later, so a reading taken right after a load misses its last
seconds; `settled` waits that long first.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from sqlalchemy import text

from tokenadmin.database import Database

SETTLE = 11.0  # seconds: PostgreSQL's idle backends flush their statistics within 10

_COUNTERS = """
SELECT (SELECT wal_bytes FROM pg_stat_wal)::bigint,
       (SELECT wal_fpi FROM pg_stat_wal),
       buffers_backend, buffers_checkpoint, buffers_clean,
       checkpoints_timed + checkpoints_req,
       current_setting('shared_buffers')
FROM pg_stat_bgwriter
"""

# Every relation's pages read into shared buffers (from the kernel's cache or the disk), with
# its size: tables and indexes apart.
_READS = """
SELECT relname, heap_blks_read, pg_relation_size(relid) FROM pg_statio_user_tables
UNION ALL
SELECT indexrelname, idx_blks_read, pg_relation_size(indexrelid) FROM pg_statio_user_indexes
"""


@dataclass(frozen=True)
class Counters:
    wal_bytes: int
    full_page_images: int
    backend_writes: int  # pages backends wrote to make room in shared buffers
    checkpoint_writes: int
    cleaner_writes: int  # pages the background writer wrote ahead
    checkpoints: int
    shared_buffers: str
    reads: dict[str, tuple[int, int]]  # relation: (pages read into shared buffers, bytes)


def counters(url: str) -> Counters:
    """PostgreSQL's counters now, for the database at `url`."""

    async def run() -> Counters:
        db = Database(url, pool_size=1)
        try:
            async with db.engine.connect() as connection:
                row = (await connection.execute(text(_COUNTERS))).one()
                reads = {
                    name: (int(read or 0), int(size))
                    for name, read, size in (await connection.execute(text(_READS))).all()
                }
            wal, images, backends, checkpoint, cleaner, checkpoints = (int(v) for v in row[:6])
            return Counters(
                wal, images, backends, checkpoint, cleaner, checkpoints, str(row[6]), reads
            )
        finally:
            await db.dispose()

    return asyncio.run(run())


def settled(url: str) -> Counters:
    """The counters once every backend has reported what it did."""
    time.sleep(SETTLE)
    return counters(url)


def describe(before: Counters, after: Counters, events: int, *, top: int = 3) -> str:
    """What PostgreSQL did between two readings, per event where it scales with them: the
    WAL, full-page images, pages written by backends, checkpoints, and the relations it
    read the most pages of (with their sizes)."""
    per = max(events, 1)
    read = sorted(
        (
            (pages - before.reads.get(name, (0, 0))[0], name, size)
            for name, (pages, size) in after.reads.items()
        ),
        reverse=True,
    )
    reads = ", ".join(
        f"{name} {pages / per:.2f} ({size / 2**20:,.0f} MB)"
        for pages, name, size in read[:top]
        if pages > 0
    )
    return (
        f"PostgreSQL (shared_buffers {after.shared_buffers}) per event:"
        f" WAL {(after.wal_bytes - before.wal_bytes) / per / 1024:.1f} KB,"
        f" full-page images {(after.full_page_images - before.full_page_images) / per:.2f},"
        f" pages written by backends {(after.backend_writes - before.backend_writes) / per:.2f}"
        f" (by checkpoints {(after.checkpoint_writes - before.checkpoint_writes) / per:.2f},"
        f" the background writer {(after.cleaner_writes - before.cleaner_writes) / per:.2f});"
        f" checkpoints {after.checkpoints - before.checkpoints};"
        f" pages read into shared buffers: {reads or 'none'}"
    )
