"""The SQLite engine's one-trip adapter (storage/onetrip.py) behaves as a DBAPI
cursor must: rows, row counts, ids, executemany, RETURNING, errors, rollback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.db import create_engine
from storage.onetrip import OneTripConnection


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
