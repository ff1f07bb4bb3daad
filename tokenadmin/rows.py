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
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import cache
from typing import Any

from sqlalchemy import JSON, Column, Table, TextClause, bindparam, insert, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect
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
        _update_sqlite(session, table, key, names, rows, org_id)
        return
    columns = [table.c[key]] + [table.c[name] for name in names]
    statement = _unnest_update(table, key, tuple(names))
    if org_id is not None:
        statement = _unnest_update_in_org(table, key, tuple(names))
    for start in range(0, len(rows), UPDATE_PER_STATEMENT):
        parameters: dict[str, Any] = _parameters(
            columns, rows[start : start + UPDATE_PER_STATEMENT]
        )
        if org_id is not None:
            parameters["_org_id"] = org_id
        session.execute(statement, parameters)


def _update_sqlite(
    session: Session, table: Table, key: str, names: list[str], rows: Sequence[Row], org_id: Any
) -> None:
    """One executemany of a plain UPDATE, each value converted by its column type's own
    bind processor (as SQLAlchemy would store it). Through SQLAlchemy's executemany, most of
    a big update's time went to building every row's parameters from the compiled
    statement, not to SQLite."""
    dialect = session.get_bind().dialect
    processors = {name: _bind_processor(table.c[name], dialect) for name in [*names, key]}
    statement = f"UPDATE {table.name} SET {', '.join(f'{n} = ?' for n in names)} WHERE {key} = ?"
    scope: tuple[Any, ...] = ()
    if org_id is not None:
        statement += " AND org_id = ?"
        scope = (_bind_processor(table.c.org_id, dialect)(org_id),)
    records = [
        (*(process(row[name]) for name, process in processors.items()), *scope) for row in rows
    ]
    session.connection().exec_driver_sql(statement, records)


def _bind_processor(column: Column[Any], dialect: Dialect) -> Callable[[Any], Any]:
    return column.type.dialect_impl(dialect).bind_processor(dialect) or _as_is


def _as_is(value: Any) -> Any:
    return value


# The statements are made once per table and columns: building them costs more than the
# work of a small batch.


@cache
def _unnest_insert(table: Table, names: tuple[str, ...]) -> TextClause:
    arrays = _arrays([table.c[name] for name in names])
    return text(f"INSERT INTO {table.name} ({', '.join(names)}) SELECT * FROM unnest({arrays})")


UPDATE_PER_STATEMENT = 10_000
"""Rows per UPDATE: past some 35,000 the plan's estimated cost crosses PostgreSQL's
`jit_above_cost`, and compiling it (0.1 to 0.2 s) would cost more than a round trip more."""


@cache
def _unnest_update(table: Table, key: str, names: tuple[str, ...]) -> TextClause:
    # `t.key = ANY(ARRAY[v.key])` rather than `t.key = v.key`: the planner can't make a hash
    # or merge join of it, so each row is one probe of `key`'s index, whatever the
    # statistics say. With `=`, it hashed all of the table's rows to update some: for 10,000
    # of an organization's 100,000 users, 57 to 105 ms to the join's last row where the
    # probes took 30 (EXPLAIN ANALYZE).
    arrays = _arrays([table.c[key]] + [table.c[name] for name in names])
    assignments = ", ".join(f"{name} = v.{name}" for name in names)
    return text(
        f"UPDATE {table.name} AS t SET {assignments} "
        f"FROM unnest({arrays}) AS v({key}, {', '.join(names)}) "
        f"WHERE t.{key} = ANY(ARRAY[v.{key}])"
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
