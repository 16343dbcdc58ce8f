"""SQLite through aiosqlite with as few trips to its thread as a transaction needs.

aiosqlite runs every call in a worker thread of its own, and each call is a
trip there and back: a future, a wake-up of the thread, a wake-up of the event
loop through its self-pipe. SQLAlchemy's aiosqlite adapter makes four trips for
every statement (make a cursor, execute, fetch the rows, close the cursor).
Measured here, a trip costs the event loop ~120 µs of CPU and ~250 µs of wall
time, so a statement cost ~270 µs of CPU before anything was executed
(``docs/BENCHMARKS.md``, finding 17).

This adapter keeps SQLAlchemy's own (connection, transactions, errors,
isolation level, type handling) and changes four things:

- a statement is executed and its rows are fetched in the worker thread in one
  trip, with a cursor that lives only there;
- a transaction's ``BEGIN`` is not a trip of its own: it is sent in the same
  trip as the transaction's first statement (:meth:`OneTripConnection.begin_with_next`);
- a write whose caller needs nothing back from it can ride along too
  (:meth:`OneTripCursor.ride_along`): it is sent, in order, at the start of
  the next trip, the commit's at the latest; a row count it was promised is
  checked there, and a write that fails or changes another number of rows
  fails that trip, and with it the transaction;
- ``commit()`` and ``rollback()`` make no trip when no transaction is open in
  SQLite: the pool's rollback when a connection is returned after a commit,
  or a transaction that never ran a statement.

The engine gets it as its DBAPI module
(``create_async_engine(..., module=one_trip_dbapi())``, see ``storage.db``);
``OneTripDBAPI.trips`` counts the trips made (the benchmarks read it).

It reaches into two private corners, both pinned in ``pyproject.toml``:
SQLAlchemy's asyncio adapter classes (``sqlalchemy.dialects.sqlite.aiosqlite``)
and aiosqlite's ``Connection._execute`` (run a function in its thread) and
``Connection._conn`` (the sqlite3 connection, used only in that thread).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any, NamedTuple

import aiosqlite
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from sqlalchemy.util.concurrency import await_

_Outcome = tuple[Any, list[Any], int, int | None]

#: An execution option: on a connection (or a statement) that has it, INSERTs
#: and UPDATEs that return nothing (no RETURNING, no new row id) ride along with
#: the connection's next trip, the commit's at the latest. With ``True`` each is
#: promised to change one row per parameter set (checked when it runs; upserts
#: and INSERTs from a SELECT never ride): set it only where that holds and
#: nothing needs their effect before the next statement, as for an ORM flush
#: (whose UPDATEs are by primary key, and which checks the same counts) and the
#: rows ``storage.later`` writes at the commit (plain INSERTs). With
#: :data:`ANY_ROWS` nothing is promised or checked: for a write that may find
#: fewer rows than it names, e.g. the delivery marks. On other drivers it does nothing.
WRITES_RIDE_ALONG = "petition_writes_ride_along"
#: The value of :data:`WRITES_RIDE_ALONG` for writes whose row counts do not matter.
ANY_ROWS = "any rows"


def let_writes_ride_along(_conn: Any, cursor: Any, _statement: str, parameters: Any, context: Any,
                          executemany: bool) -> None:
    """The engine's ``before_cursor_execute`` listener that applies :data:`WRITES_RIDE_ALONG`."""
    ride = None if context is None else context.execution_options.get(WRITES_RIDE_ALONG)
    if not ride:
        return
    compiled = context.compiled
    if not (isinstance(cursor, OneTripCursor) and (context.isinsert or context.isupdate) and compiled is not None
            and not compiled.effective_returning and not compiled.postfetch_lastrowid):
        return
    if ride == ANY_ROWS:
        cursor.ride_along(None)
    elif _one_row_each(compiled.statement):
        cursor.ride_along(len(parameters) if executemany else 1)


def _one_row_each(statement: Any) -> bool:
    """Whether a write changes one row per parameter set when it succeeds, as far
    as its form tells: not an upsert (ON CONFLICT may change none) and not an
    INSERT from a SELECT."""
    return getattr(statement, "_post_values_clause", None) is None and getattr(statement, "select", None) is None


class _Write(NamedTuple):
    """A write riding along with the next trip, and the row count it promised."""

    operation: str
    parameters: Any
    many: bool
    rows: int | None


class _Ahead(NamedTuple):
    """What goes before a trip's own work: the transaction's BEGIN, the writes riding along."""

    begin: str | None
    writes: tuple[_Write, ...]


def _execute(cursor: sqlite3.Cursor, operation: str, parameters: Any, many: bool) -> None:
    if many:
        cursor.executemany(operation, parameters)
    elif parameters is None:
        cursor.execute(operation)
    else:
        cursor.execute(operation, parameters)


def _catch_up(cursor: sqlite3.Cursor, ahead: _Ahead | None) -> None:
    """In aiosqlite's thread: the BEGIN and the writes that ride with this trip."""
    if ahead is None:
        return
    if ahead.begin is not None:
        cursor.execute(ahead.begin)
    for write in ahead.writes:
        try:
            _execute(cursor, write.operation, write.parameters, write.many)
        except sqlite3.Error as error:  # reported with the statement it rode along with: name its own
            error.add_note(f"in a write sent ahead: {write.operation[:200]}")
            raise
        if write.rows is not None and cursor.rowcount != write.rows:
            raise sqlite3.DatabaseError(f"a write sent ahead changed {cursor.rowcount} rows, "
                                        f"not {write.rows}: {write.operation[:200]}")


def _run(connection: sqlite3.Connection, ahead: _Ahead | None, operation: str, parameters: Any,
         many: bool) -> _Outcome:
    """In aiosqlite's thread: what rides along, then execute and fetch, with a
    cursor that never leaves the thread."""
    cursor = connection.cursor()
    try:
        _catch_up(cursor, ahead)
        _execute(cursor, operation, parameters, many)
        description = cursor.description
        return description, cursor.fetchall() if description else [], cursor.rowcount, cursor.lastrowid
    finally:
        cursor.close()


def _commit(connection: sqlite3.Connection, ahead: _Ahead) -> None:
    """In aiosqlite's thread: what rides along, then the commit."""
    cursor = connection.cursor()
    try:
        _catch_up(cursor, ahead)
    finally:
        cursor.close()
    connection.commit()


class _Trip:
    """What SQLAlchemy's adapter expects of an aiosqlite cursor, filled by one trip."""

    __slots__ = ("_adapter", "_rows", "arraysize", "description", "lastrowid", "ride", "rowcount")

    def __init__(self, adapter: OneTripConnection) -> None:
        self._adapter = adapter
        self.arraysize = 1
        self.description: Any = None
        self.rowcount = -1
        self.lastrowid: int | None = None
        self._rows: list[Any] = []
        #: Set by OneTripCursor.ride_along for the next statement: whether it
        #: rides along, and the row count it promises (None: none promised).
        self.ride: tuple[bool, int | None] = (False, None)

    async def _go(self, operation: str, parameters: Any, many: bool) -> None:
        adapter = self._adapter
        (later, rows), self.ride = self.ride, (False, None)
        if later:
            adapter._writes.append(_Write(operation, parameters, many, rows))
            self.description, self._rows, self.lastrowid = None, [], None
            self.rowcount = -1 if rows is None else rows
            return
        conn: Any = adapter._connection  # an aiosqlite.Connection
        ahead = adapter._take_ahead()
        # From here on a transaction may be open (a statement that fails after
        # the BEGIN leaves it open), so commit and rollback are real trips.
        adapter._open = True
        adapter.dbapi.trips += 1
        run_there: Any = conn._execute  # aiosqlite's own "run this in my thread" (untyped)
        outcome: _Outcome = await run_there(_run, conn._conn, ahead, operation, parameters, many)
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
        return _Trip(self._adapt_connection)  # type: ignore[arg-type]

    def _aenter_cursor(self, cursor: Any) -> Any:
        return cursor

    def ride_along(self, rows: int | None) -> None:
        """Let the next statement on this cursor, a write, ride along with the
        connection's next trip instead of making its own. ``rows``: the row
        count to report now and check when it runs (None: report -1, check nothing)."""
        trip: Any = self._cursor  # a _Trip
        trip.ride = (True, rows)


class OneTripConnection(AsyncAdapt_aiosqlite_connection):
    __slots__ = ("_begin", "_open", "_writes")
    _cursor_cls = OneTripCursor
    dbapi: OneTripDBAPI

    def __init__(self, dbapi: Any, connection: Any) -> None:
        super().__init__(dbapi, connection)
        #: A BEGIN to send with the next trip.
        self._begin: str | None = None
        #: Writes to send, in order, with the next trip.
        self._writes: list[_Write] = []
        #: Whether SQLite may have a transaction open: set by every statement's
        #: trip, cleared by a commit or rollback that went through.
        self._open = False

    def begin_with_next(self, begin: str) -> None:
        """Begin a transaction with ``begin`` (``BEGIN IMMEDIATE``) in the same
        trip as its first statement. Nothing happens in SQLite between the two,
        so the lock is taken at the same moment as with a trip of its own."""
        self._begin = begin

    def _take_ahead(self) -> _Ahead | None:
        if self._begin is None and not self._writes:
            return None
        ahead = _Ahead(self._begin, tuple(self._writes))
        self._begin = None
        self._writes.clear()
        return ahead

    def commit(self) -> None:
        ahead = self._take_ahead()
        if ahead is not None and ahead.writes:
            self._open = True  # the writes may fail after the BEGIN: then a rollback is due
            self.dbapi.trips += 1
            run_there: Any = self._connection._execute
            try:
                await_(run_there(_commit, self._connection._conn, ahead))
            except Exception as error:
                self._handle_exception(error)
            self._open = False
        elif self._open:
            self.dbapi.trips += 1
            super().commit()
            self._open = False

    def rollback(self) -> None:
        self._take_ahead()  # never sent: nothing to undo
        if self._open:
            self.dbapi.trips += 1
            super().rollback()
            self._open = False


class OneTripDBAPI(AsyncAdapt_aiosqlite_dbapi):
    #: Trips made to the connections' threads: statements, commits, rollbacks.
    trips = 0

    def connect(self, *arg: Any, **kw: Any) -> OneTripConnection:
        if kw.get("async_creator_fn"):
            raise ValueError("a custom async creator is not supported by the one-trip adapter")
        connection = self.aiosqlite.connect(*arg, **kw)
        connection._thread.daemon = True  # as SQLAlchemy's own adapter does
        return OneTripConnection(self, await_(connection))


def one_trip_dbapi() -> OneTripDBAPI:
    return OneTripDBAPI(aiosqlite, sqlite3)
