"""The SQLite engine's one-trip adapter (storage/onetrip.py) behaves as a DBAPI
cursor must: rows, row counts, ids, executemany, RETURNING, errors, rollback;
and it saves the trips it says it saves, without changing what a transaction does."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, Text, bindparam, insert, select, text, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DatabaseError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.db import create_engine
from storage.onetrip import ANY_ROWS, WRITES_RIDE_ALONG, OneTripConnection


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'onetrip.db'}")
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT UNIQUE, n INTEGER)"))
    yield engine
    await engine.dispose()


async def test_the_engine_uses_the_one_trip_adapter(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        assert isinstance(raw.dbapi_connection, OneTripConnection)


async def test_rows_counts_ids_and_returning(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        inserted = await conn.execute(text("INSERT INTO t (name, n) VALUES ('a', 1)"))
        assert inserted.lastrowid == 1 and inserted.rowcount == 1
        many = await conn.execute(text("INSERT INTO t (name, n) VALUES (:name, :n)"),
                                  [{"name": "b", "n": 2}, {"name": "c", "n": 3}])
        assert many.rowcount == 2
        updated = await conn.execute(text("UPDATE t SET n = n * 10 WHERE n >= 2"))
        assert updated.rowcount == 2
        returned = await conn.execute(text("INSERT INTO t (name, n) VALUES ('d', 4) RETURNING id, name"))
        assert returned.all() == [(4, "d")]
        rows = (await conn.execute(text("SELECT name, n FROM t ORDER BY id"))).all()
        assert rows == [("a", 1), ("b", 20), ("c", 30), ("d", 4)]
        assert (await conn.execute(text("SELECT name FROM t WHERE n > 100"))).all() == []


async def test_errors_are_sqlalchemys_and_a_rollback_undoes_the_transaction(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("INSERT INTO t (name, n) VALUES ('a', 1)"))
    with pytest.raises(IntegrityError):
        async with engine.begin() as conn:
            await conn.execute(text("INSERT INTO t (name, n) VALUES ('b', 2)"))
            await conn.execute(text("INSERT INTO t (name, n) VALUES ('a', 3)"))  # name is unique
    with pytest.raises(OperationalError):
        async with engine.connect() as conn:
            await conn.execute(text("SELECT nothing FROM nowhere"))
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT name FROM t"))).scalars().all() == ["a"]


# -- fewer trips: BEGIN with the first statement, writes riding along, no empty rollbacks --------

_T = Table("t", MetaData(), Column("id", Integer, primary_key=True), Column("name", Text, unique=True),
           Column("n", Integer))


def _trips(engine: AsyncEngine) -> int:
    return int(engine.sync_engine.dialect.loaded_dbapi.trips)


async def test_a_transaction_with_one_statement_is_two_trips_and_an_empty_one_none(engine: AsyncEngine) -> None:
    before = _trips(engine)
    async with engine.begin() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar() == 0
    assert _trips(engine) - before == 2, "the statement (with its BEGIN) and the commit; no rollback on return"
    before = _trips(engine)
    async with engine.begin():
        pass
    assert _trips(engine) == before


async def test_the_write_lock_is_taken_with_the_first_statement(engine: AsyncEngine, tmp_path: Path) -> None:
    other = sqlite3.connect(tmp_path / "onetrip.db", timeout=0)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("SELECT count(*) FROM t"))  # a read, but BEGIN IMMEDIATE went with it
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("INSERT INTO t (name, n) VALUES ('other', 0)")
        other.execute("INSERT INTO t (name, n) VALUES ('other', 0)")
        other.commit()
    finally:
        other.close()


async def test_writes_ride_along_with_the_commit_and_promise_their_row_counts(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(insert(_T), [{"id": 1, "name": "a", "n": 1}])
    before = _trips(engine)
    async with engine.begin() as conn:
        await conn.execution_options(**{WRITES_RIDE_ALONG: True})
        many = await conn.execute(insert(_T), [{"id": 2, "name": "b", "n": 2}, {"id": 3, "name": "c", "n": 3}])
        updated = await conn.execute(update(_T).where(_T.c.id == 1).values(n=10))
        assert (many.rowcount, updated.rowcount) == (2, 1)
        assert _trips(engine) == before, "nothing sent yet"
    assert _trips(engine) - before == 1, "the writes and the commit: one trip"
    async with engine.connect() as conn:
        assert (await conn.execute(select(_T.c.name, _T.c.n).order_by(_T.c.id))).all() == [
            ("a", 10), ("b", 2), ("c", 3)]


async def test_a_statement_sees_the_writes_that_rode_along_before_it(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execution_options(**{WRITES_RIDE_ALONG: True})
        await conn.execute(insert(_T), [{"id": 1, "name": "a", "n": 1}])
        assert (await conn.execute(select(_T.c.name))).scalars().all() == ["a"]


async def test_a_write_riding_along_that_fails_fails_the_commit_and_undoes_the_transaction(
        engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(insert(_T), [{"id": 1, "name": "a", "n": 1}])
    sent = False
    with pytest.raises(IntegrityError):
        async with engine.begin() as conn:
            await conn.execute(update(_T).where(_T.c.id == 1).values(n=5))  # sent at once
            await conn.execution_options(**{WRITES_RIDE_ALONG: True})
            await conn.execute(insert(_T), [{"id": 2, "name": "b", "n": 2}, {"id": 3, "name": "a", "n": 3}])
            sent = True  # name is unique: it fails only when the commit's trip runs it
    assert sent
    with pytest.raises(DatabaseError, match="changed 0 rows, not 1"):
        async with engine.begin() as conn:
            await conn.execution_options(**{WRITES_RIDE_ALONG: True})
            await conn.execute(update(_T).where(_T.c.id == 1).values(n=6))
            await conn.execute(update(_T).where(_T.c.id == 99).values(n=7))  # no such row
    async with engine.connect() as conn:
        assert (await conn.execute(select(_T.c.id, _T.c.n))).all() == [(1, 1)]
    async with engine.begin() as conn:  # and the connection is fine afterwards
        await conn.execute(update(_T).where(_T.c.id == 1).values(n=8))


async def test_a_write_riding_along_for_any_rows_promises_and_checks_no_count(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(insert(_T), [{"id": 1, "name": "a", "n": 1}])
    before = _trips(engine)
    stmt = update(_T).where(_T.c.id == bindparam("key")).values(n=5).execution_options(
        **{WRITES_RIDE_ALONG: ANY_ROWS})
    async with engine.begin() as conn:
        await conn.execute(stmt, [{"key": 1}, {"key": 99}])  # no row 99: one row changed, not two
    assert _trips(engine) - before == 1, "the write and the commit: one trip"
    async with engine.connect() as conn:
        assert (await conn.execute(select(_T.c.id, _T.c.n))).all() == [(1, 5)]


async def test_what_needs_an_answer_never_rides_along(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execution_options(**{WRITES_RIDE_ALONG: True})
        new = await conn.execute(insert(_T).values(name="a", n=1))  # the new row's id is needed
        assert new.inserted_primary_key == (1,)
        returned = await conn.execute(insert(_T).values(name="b", n=2).returning(_T.c.id))
        assert returned.scalar() == 2
        assert (await conn.execute(text("UPDATE t SET n = n + 1"))).rowcount == 2  # text: not a known write


async def test_an_orm_flush_riding_along_that_fails_at_the_commit_leaves_nothing_and_the_session_usable(
        tmp_path: Path) -> None:
    from storage.db import create_sessionmaker, migrate
    from storage.models import CitizenSession

    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'orm.db'}")
    await migrate(engine)
    sessionmaker = create_sessionmaker(engine)
    now = datetime(2026, 11, 27, tzinfo=UTC)

    def citizen(user_id: int) -> CitizenSession:
        return CitizenSession(user_id=user_id, chat_id=user_id, locale="zh", state=None, data={}, awaiting=None,
                              extra={}, banned=False, updated_at=now)

    try:
        async with sessionmaker() as session, session.begin():
            session.add(citizen(1))
        flushed = False
        with pytest.raises(IntegrityError):
            async with sessionmaker() as session, session.begin():
                (await session.get_one(CitizenSession, 1)).locale = "en"
                broken = citizen(2)
                broken.chat_id = None  # type: ignore[assignment]  # NOT NULL: fails when the commit's trip runs it
                session.add(broken)
                connection = await session.connection()
                await connection.execution_options(**{WRITES_RIDE_ALONG: True})
                await session.flush()
                flushed = True
        assert flushed, "the flush sent nothing: the writes went with the commit"
        async with sessionmaker() as session, session.begin():
            rows = (await session.scalars(select(CitizenSession))).all()
            assert [(r.user_id, r.locale) for r in rows] == [(1, "zh")], "the whole transaction was undone"
            rows[0].locale = "en"
        async with sessionmaker() as session:
            assert (await session.get_one(CitizenSession, 1)).locale == "en"
    finally:
        await engine.dispose()


async def test_an_upsert_never_rides_along_and_a_failed_write_names_itself(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(insert(_T), [{"id": 1, "name": "a", "n": 1}])
    async with engine.begin() as conn:
        await conn.execution_options(**{WRITES_RIDE_ALONG: True})
        upsert = sqlite_insert(_T).values(id=1, name="a", n=2).on_conflict_do_nothing()
        assert (await conn.execute(upsert)).rowcount == 0, "its real count, not a promise"
    with pytest.raises(IntegrityError) as failed:
        async with engine.begin() as conn:
            await conn.execution_options(**{WRITES_RIDE_ALONG: True})
            await conn.execute(insert(_T), [{"id": 2, "name": "b", "n": 2}, {"id": 3, "name": "a", "n": 3}])
            await conn.execute(select(_T.c.id))  # the write goes with this statement's trip, and fails there
    assert any("INSERT INTO t" in note for note in getattr(failed.value.orig, "__notes__", []))
