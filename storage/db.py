"""Engine setup for the embedded SQLite and for PostgreSQL, and schema migration.

SQLite: WAL (readers never block the writer), foreign keys on, a busy
timeout, and every transaction opened with ``BEGIN IMMEDIATE`` so a
read-then-write transaction takes the write lock up front instead of failing
with SQLITE_BUSY half-way (PITFALLS.md).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from storage.onetrip import OneTripConnection, OneTripCursor, one_trip_dbapi

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"


#: An execution option: on SQLite through ``storage.onetrip``, the connection's
#: INSERTs and UPDATEs that return nothing (no RETURNING, no new row id) ride
#: along with its next trip, the commit's at the latest, each promised to
#: change one row per parameter set (checked when it runs; upserts and INSERTs
#: from a SELECT never ride). Set it only where that holds and nothing needs
#: their effect before the next statement: an ORM flush (whose UPDATEs are by
#: primary key, and which checks the same counts) and the rows
#: ``storage.later`` writes at the commit (plain INSERTs).
WRITES_RIDE_ALONG = "petition_writes_ride_along"


def _one_row_each(statement: Any) -> bool:
    """Whether a write changes one row per parameter set when it succeeds, as far
    as its form tells: not an upsert (ON CONFLICT may change none) and not an
    INSERT from a SELECT."""
    return getattr(statement, "_post_values_clause", None) is None and getattr(statement, "select", None) is None


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def create_engine(url: str, *, sqlite_synchronous: str = "FULL", busy_timeout_ms: int = 5000,
                  echo: bool = False) -> AsyncEngine:
    if not is_sqlite(url):
        return create_async_engine(url, echo=echo, pool_pre_ping=True)
    # One connection: SQLite has one writer anyway, and queueing for the pool is an
    # asyncio wait, where several connections would spin in SQLite's busy handler
    # (measured: twice the throughput, a fraction of the tail latency).
    # One trip to aiosqlite's thread per statement instead of four (storage.onetrip).
    driver = {"module": one_trip_dbapi()} if make_url(url).get_driver_name() == "aiosqlite" else {}
    engine = create_async_engine(url, echo=echo, connect_args={"timeout": busy_timeout_ms / 1000},
                                 pool_size=1, max_overflow=0, pool_timeout=120, **driver)
    _sqlite_setup(engine, sqlite_synchronous, busy_timeout_ms)
    return engine


def _sqlite_setup(engine: AsyncEngine, synchronous: str, busy_timeout_ms: int) -> None:
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.close()

    @event.listens_for(sync_engine, "before_cursor_execute")
    def _ride_along(_conn: Connection, cursor: Any, _statement: str, parameters: Any, context: Any,
                    executemany: bool) -> None:
        if context is None or not context.execution_options.get(WRITES_RIDE_ALONG):
            return
        compiled = context.compiled
        if (isinstance(cursor, OneTripCursor) and (context.isinsert or context.isupdate) and compiled is not None
                and not compiled.effective_returning and not compiled.postfetch_lastrowid
                and _one_row_each(compiled.statement)):
            cursor.ride_along(len(parameters) if executemany else 1)

    @event.listens_for(sync_engine, "begin")
    def _on_begin(connection: Connection) -> None:
        raw = connection.connection.dbapi_connection
        if isinstance(raw, OneTripConnection):
            raw.begin_with_next("BEGIN IMMEDIATE")  # sent with the first statement, no trip of its own
        else:
            connection.exec_driver_sql("BEGIN IMMEDIATE")


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def alembic_config(url: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


async def migrate(engine: AsyncEngine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` on this engine (used at start and by ``migrate``)."""

    def _upgrade(connection: Connection) -> None:
        cfg = alembic_config()
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, revision)

    async with engine.begin() as connection:
        await connection.run_sync(_upgrade)


async def downgrade(engine: AsyncEngine, revision: str) -> None:
    def _downgrade(connection: Connection) -> None:
        cfg = alembic_config()
        cfg.attributes["connection"] = connection
        command.downgrade(cfg, revision)

    async with engine.begin() as connection:
        await connection.run_sync(_downgrade)
