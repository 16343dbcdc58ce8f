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
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from storage.onetrip import OneTripConnection, let_writes_ride_along, one_trip_dbapi

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
#: Execution option of a reader's connections (:func:`create_sessionmaker`).
READ_ONLY = "petition_read_only"
#: Rows of each index an SQLite ANALYZE looks at (SQLite's own advice: a few hundred to a thousand).
ANALYSIS_LIMIT = 1000


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def create_engine(url: str, *, sqlite_synchronous: str = "FULL", busy_timeout_ms: int = 5000,
                  echo: bool = False) -> AsyncEngine:
    if not is_sqlite(url):
        return create_async_engine(url, echo=echo, pool_pre_ping=True)
    # One connection: SQLite has one writer anyway, and queueing for the pool is an
    # asyncio wait, where several connections would spin in SQLite's busy handler
    # (measured: twice the throughput, a fraction of the tail latency).
    # One trip to aiosqlite's thread per statement instead of four, and fewer (storage.onetrip).
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
        # ANALYZE (run by the maintenance tick's PRAGMA optimize) samples this
        # many rows of each index instead of reading them all: 1 ms for the
        # cases table at a million rows, where a full one took 1.7 s under
        # the write lock (docs/BENCHMARKS.md, finding 36).
        cursor.execute(f"PRAGMA analysis_limit={ANALYSIS_LIMIT}")
        cursor.close()

    event.listen(sync_engine, "before_cursor_execute", let_writes_ride_along)

    @event.listens_for(sync_engine, "begin")
    def _on_begin(connection: Connection) -> None:
        # A reader's transaction takes no lock: in WAL mode it reads a snapshot
        # while the bot keeps committing.
        begin = "BEGIN" if connection.get_execution_options().get(READ_ONLY) else "BEGIN IMMEDIATE"
        raw = connection.connection.dbapi_connection
        if isinstance(raw, OneTripConnection):
            raw.begin_with_next(begin)  # sent with the first statement, no trip of its own
        else:
            connection.exec_driver_sql(begin)


def create_sessionmaker(engine: AsyncEngine, *, read_only: bool = False) -> async_sessionmaker[AsyncSession]:
    """Sessions on the engine; ``read_only`` ones, for reports, must not write:
    on SQLite they do not take the write lock (a long report would otherwise
    hold every citizen's commit while it reads, docs/BENCHMARKS.md finding 36)."""
    bind = engine.execution_options(**{READ_ONLY: True}) if read_only else engine
    return async_sessionmaker(bind, expire_on_commit=False)


def alembic_config(url: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


async def migrate(engine: AsyncEngine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` on this engine (used at start and by ``migrate``).

    A schema already at the newest revision is left alone after a look in a
    reader's transaction: upgrading begins a writer's one, which on SQLite
    waits for the write lock, so ``petition-bot report`` run beside a busy
    bot would wait for it only to find nothing to do."""

    def _upgrade(connection: Connection) -> None:
        cfg = alembic_config()
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, revision)

    def _at_head(connection: Connection) -> bool:
        current = set(MigrationContext.configure(connection).get_current_heads())
        return current == set(ScriptDirectory.from_config(alembic_config()).get_heads())

    if revision == "head":
        async with engine.execution_options(**{READ_ONLY: True}).connect() as connection:
            if await connection.run_sync(_at_head):
                return
    async with engine.begin() as connection:
        await connection.run_sync(_upgrade)


async def downgrade(engine: AsyncEngine, revision: str) -> None:
    def _downgrade(connection: Connection) -> None:
        cfg = alembic_config()
        cfg.attributes["connection"] = connection
        command.downgrade(cfg, revision)

    async with engine.begin() as connection:
        await connection.run_sync(_downgrade)
