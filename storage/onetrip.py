"""SQLite through aiosqlite in one trip to its thread per statement.

aiosqlite runs every call in a worker thread of its own, and each call is a
trip there and back: a future, a wake-up of the thread, a wake-up of the event
loop through its self-pipe. SQLAlchemy's aiosqlite adapter makes four trips for
every statement (make a cursor, execute, fetch the rows, close the cursor).
Measured here, a trip costs the event loop ~120 µs of CPU and ~250 µs of wall
time, so a statement cost ~270 µs of CPU before anything was executed
(``docs/BENCHMARKS.md``, finding 17).

This adapter keeps SQLAlchemy's own (connection, transactions, errors,
isolation level, type handling) and changes one thing: a statement is executed
and its rows are fetched in the worker thread in one trip, with a cursor that
lives only there. The engine gets it as its DBAPI module
(``create_async_engine(..., module=one_trip_dbapi())``, see ``storage.db``).

It reaches into two private corners, both pinned in ``pyproject.toml``:
SQLAlchemy's asyncio adapter classes (``sqlalchemy.dialects.sqlite.aiosqlite``)
and aiosqlite's ``Connection._execute`` (run a function in its thread) and
``Connection._conn`` (the sqlite3 connection, used only in that thread).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

import aiosqlite
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from sqlalchemy.util.concurrency import await_

_Outcome = tuple[Any, list[Any], int, int | None]


def _run(connection: sqlite3.Connection, operation: str, parameters: Any, many: bool) -> _Outcome:
    """In aiosqlite's thread: execute and fetch, with a cursor that never leaves it."""
    cursor = connection.cursor()
    try:
        if many:
            cursor.executemany(operation, parameters)
        elif parameters is None:
            cursor.execute(operation)
        else:
            cursor.execute(operation, parameters)
        description = cursor.description
        return description, cursor.fetchall() if description else [], cursor.rowcount, cursor.lastrowid
    finally:
        cursor.close()


class _Trip:
    """What SQLAlchemy's adapter expects of an aiosqlite cursor, filled by one trip."""

    __slots__ = ("_connection", "_rows", "arraysize", "description", "lastrowid", "rowcount")

    def __init__(self, connection: aiosqlite.Connection) -> None:
        self._connection = connection
        self.arraysize = 1
        self.description: Any = None
        self.rowcount = -1
        self.lastrowid: int | None = None
        self._rows: list[Any] = []

    async def _go(self, operation: str, parameters: Any, many: bool) -> None:
        conn = self._connection
        run_there: Any = conn._execute  # aiosqlite's own "run this in my thread" (untyped)
        outcome: _Outcome = await run_there(_run, conn._conn, operation, parameters, many)
        self.description, self._rows, self.rowcount, self.lastrowid = outcome

    async def execute(self, operation: str, parameters: Sequence[Any] | None = None) -> None:
        await self._go(operation, parameters, False)

    async def executemany(self, operation: str, seq_of_parameters: Sequence[Sequence[Any]]) -> None:
        await self._go(operation, seq_of_parameters, True)

    async def fetchall(self) -> list[Any]:
        rows, self._rows = self._rows, []
        return rows

    def close(self) -> None:
        self._rows = []


class OneTripCursor(AsyncAdapt_aiosqlite_cursor):
    __slots__ = ()

    #: Closing is done in the trip; the adapter's close is then a plain call.
    _awaitable_cursor_close = False

    def _make_new_cursor(self, connection: Any) -> Any:
        return _Trip(connection)

    def _aenter_cursor(self, cursor: Any) -> Any:
        return cursor


class OneTripConnection(AsyncAdapt_aiosqlite_connection):
    __slots__ = ()
    _cursor_cls = OneTripCursor


class OneTripDBAPI(AsyncAdapt_aiosqlite_dbapi):
    def connect(self, *arg: Any, **kw: Any) -> OneTripConnection:
        if kw.get("async_creator_fn"):
            raise ValueError("a custom async creator is not supported by the one-trip adapter")
        connection = self.aiosqlite.connect(*arg, **kw)
        connection._thread.daemon = True  # as SQLAlchemy's own adapter does
        return OneTripConnection(self, await_(connection))


def one_trip_dbapi() -> OneTripDBAPI:
    return OneTripDBAPI(aiosqlite, sqlite3)
