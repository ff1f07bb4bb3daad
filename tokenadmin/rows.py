"""Many rows in one statement: the metering path's inserts and updates.

On PostgreSQL each column travels as one array and `unnest` turns the arrays back into
rows, so a thousand rows are one statement with a handful of parameters: one parse, one
round trip, one plan. That is several times faster than an executemany of the same rows
(one execution each) and than a multi-row VALUES list (a parameter per value). On SQLite,
whose statements cost no round trip, `executemany` is already the fast way.

The functions take a synchronous `Session`: call them from async code with
`await session.run_sync(insert_many, table, rows)`.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import cache
from typing import Any

from sqlalchemy import JSON, Column, Table, TextClause, bindparam, insert, text, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

Row = Mapping[str, Any]
_POSTGRESQL = postgresql.dialect()  # type: ignore[no-untyped-call]


def insert_many(session: Session, table: Table, rows: Sequence[Row]) -> None:
    """INSERT the rows (all with the same keys) into `table`."""
    if not rows:
        return
    names = list(rows[0])
    if not _is_postgresql(session):
        session.execute(insert(table), list(rows))
        return
    columns = [table.c[name] for name in names]
    statement = (
        f"INSERT INTO {table.name} ({', '.join(names)}) SELECT * FROM unnest({_arrays(columns)})"
    )
    session.execute(text(statement), _parameters(columns, rows))


def update_many(
    session: Session,
    table: Table,
    key: str,
    rows: Sequence[Row],
    *,
    org_id: Any = None,
) -> None:
    """UPDATE `table` SET the rows' other columns WHERE `key` is the row's `key` (and, with
    `org_id`, the row's org_id is that organization's: the statement names it)."""
    if not rows:
        return
    names = [name for name in rows[0] if name != key]
    if not _is_postgresql(session):
        by_key = (
            update(table)
            .where(table.c[key] == bindparam(f"_{key}"))
            .values({name: bindparam(f"_{name}") for name in names})
        )
        if org_id is not None:
            by_key = by_key.where(table.c.org_id == org_id)
        session.execute(by_key, [{f"_{k}": v for k, v in row.items()} for row in rows])
        return
    columns = [table.c[key]] + [table.c[name] for name in names]
    parameters: dict[str, Any] = _parameters(columns, rows)
    statement = _unnest_update(table, key, tuple(names))
    if org_id is not None:
        statement = _unnest_update_in_org(table, key, tuple(names))
        parameters["_org_id"] = org_id
    session.execute(statement, parameters)


# The statements are made once per table and columns: building them costs more than the
# work of a small batch.


@cache
def _unnest_insert(table: Table, names: tuple[str, ...]) -> TextClause:
    arrays = _arrays([table.c[name] for name in names])
    return text(f"INSERT INTO {table.name} ({', '.join(names)}) SELECT * FROM unnest({arrays})")


@cache
def _unnest_update(table: Table, key: str, names: tuple[str, ...]) -> TextClause:
    arrays = _arrays([table.c[key]] + [table.c[name] for name in names])
    assignments = ", ".join(f"{name} = v.{name}" for name in names)
    return text(
        f"UPDATE {table.name} AS t SET {assignments} "
        f"FROM unnest({arrays}) AS v({key}, {', '.join(names)}) "
        f"WHERE t.{key} = v.{key}"
    )


@cache
def _unnest_update_in_org(table: Table, key: str, names: tuple[str, ...]) -> TextClause:
    statement = _unnest_update(table, key, names).text + " AND t.org_id = :_org_id"
    return text(statement).bindparams(bindparam("_org_id", type_=table.c.org_id.type))


def _is_postgresql(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def _arrays(columns: Sequence[Column[Any]]) -> str:
    return ", ".join(
        f"CAST(:{column.name} AS {column.type.compile(dialect=_POSTGRESQL)}[])"
        for column in columns
    )


def _parameters(columns: Sequence[Column[Any]], rows: Sequence[Row]) -> dict[str, list[Any]]:
    parameters = {}
    for column in columns:
        values = [row[column.name] for row in rows]
        if isinstance(column.type, JSON):
            values = [None if v is None else json.dumps(v) for v in values]
        parameters[column.name] = values
    return parameters


@contextmanager
def gc_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while a step makes objects by the ten thousand
    (rows, entries): each collection walks every object the process holds, and a big step
    triggers dozens, several times the step's own work. Nothing made here is a cycle that
    must be freed meanwhile; the collector runs again when the step ends (a step within
    another leaves it to the outer one)."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
