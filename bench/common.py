"""Shared pieces of the benchmarks: databases, the instrumented engine, the real
bot on a fake in-process Bot API, and statistics.

Nothing here changes product behaviour: the bot is built with the product's own
``create_engine`` / ``migrate`` / ``create_dispatcher`` / ``create_bot``; the
benchmark only listens to SQLAlchemy events and answers Bot API calls locally.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import shutil
import sqlite3
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any

from aiogram import Bot, Dispatcher
from aiogram.methods import TelegramMethod
from aiogram.types import InlineKeyboardMarkup
from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

import bot.app as app_module
from bench import DEFAULT_PG_URL
from bot.app import create_bot, create_dispatcher, ready_to_serve
from bot.settings import Settings
from bot.simulator import FakeTelegram
from dialogs.bureau import BureauConfig, load_bureau_config
from storage.db import create_engine, create_sessionmaker, migrate

TOKEN = "123456:BENCH-token-for-the-fake-bot-api-00000"
STAFF_CHAT = -1001234567890
ADMIN_ID = 9001


# -- statistics ---------------------------------------------------------------------------


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (q in 0..100)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summary_ms(seconds: list[float]) -> dict[str, float]:
    values = sorted(seconds)
    return {
        "n": len(values),
        "p50_ms": percentile(values, 50) * 1000,
        "p99_ms": percentile(values, 99) * 1000,
        "max_ms": (values[-1] * 1000) if values else math.nan,
        "mean_ms": (sum(values) / len(values) * 1000) if values else math.nan,
    }


@contextmanager
def sqlite_commit_times() -> Iterator[list[float]]:
    """Wall time of every commit's trip in aiosqlite's thread while inside: the
    writes riding along, the WAL write and its fsync (``synchronous=FULL``).
    It shows how much of an update's latency the disk takes, which moves a
    lot on a shared host. Measured by wrapping the adapter's commit function
    for the run (nothing in the product times itself); a commit with nothing
    riding along (rare in a batch) is not seen."""
    from storage import onetrip

    times: list[float] = []
    commit = onetrip._commit

    def timed(connection: Any, ahead: Any) -> None:
        started = time.perf_counter()
        try:
            commit(connection, ahead)
        finally:
            times.append(time.perf_counter() - started)

    onetrip._commit = timed  # type: ignore[assignment]
    try:
        yield times
    finally:
        onetrip._commit = commit  # type: ignore[assignment]


#: Pages written to settle a new SQLite file's WAL: past one automatic
#: checkpoint (1,000 pages by default), and with room for a batch's commit
#: on top of the pages a checkpoint waits for.
_SETTLE_PAGES = 2_000


def settle_wal(path: str) -> None:
    """Bring a new SQLite database's write-ahead log to the state of one in use.

    Until its first checkpoint, every commit appends to the log and makes the
    file longer, and on this disk an fsync that grows a file cost 0.4–0.9 ms
    where one over pages already there cost 0.3–0.4 ms (a bare ``sqlite3``
    commit of five pages). A running bot passes its first checkpoint within
    its first ~200 filings and from then on writes over the same file, which
    SQLite keeps (no ``journal_size_limit``); a benchmark on a new file would
    otherwise time the first minutes of a new deployment. The pages are
    written to a scratch table, dropped again, and checkpointed.

    SQLite deletes the log when its last connection closes: another
    connection to ``path`` must be open, and stay open while timing."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE bench_settle (body BLOB)")
        db.execute("BEGIN IMMEDIATE")
        db.executemany("INSERT INTO bench_settle VALUES (randomblob(3500))", ([] for _ in range(_SETTLE_PAGES)))
        db.execute("COMMIT")
        db.execute("DROP TABLE bench_settle")
        db.execute("PRAGMA wal_checkpoint(PASSIVE)")
    finally:
        db.close()


def durable_commit_floor(commits: int = 300) -> dict[str, float]:
    """The least one durably committed step costs on this disk: a bare
    ``sqlite3`` commit of one small row (WAL, ``synchronous=FULL`` as the
    product's default, ``BEGIN IMMEDIATE``), in the calling thread, without
    aiosqlite, SQLAlchemy or aiogram. One citizen alone commits every update on
    its own, so it can go no faster than this (BENCHMARKS.md, verdict). The
    log is settled first, as for the bot (:func:`settle_wal`)."""
    times: list[float] = []
    with scratch_directory() as directory:
        db = sqlite3.connect(os.path.join(directory, "floor.db"), isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("CREATE TABLE step (body BLOB)")
            settle_wal(os.path.join(directory, "floor.db"))
            for _ in range(commits):
                started = time.perf_counter()
                db.execute("BEGIN IMMEDIATE")
                db.execute("INSERT INTO step VALUES (randomblob(200))")
                db.execute("COMMIT")
                times.append(time.perf_counter() - started)
        finally:
            db.close()
    return summary_ms(times)


async def durable_step_floor(steps: int = 300) -> dict[str, Any]:
    """The least one durably committed step costs through the stack the design
    card fixes: SQLAlchemy's asyncio over aiosqlite, on the product's own engine
    (``storage.db.create_engine``: its one-trip adapter, ``BEGIN IMMEDIATE``,
    WAL, ``synchronous=FULL``). Each step writes one small row by its key and
    commits, the write riding along with the commit's trip; nothing is read, no
    aiogram, no dialog. Timed as an ORM session (as the product's updates are)
    and as a bare Core connection, ``steps`` of each, alternating; ``floor_ms``
    is the lower p50. A bot on this stack does the ceiling's work and at least
    this for every update, so at one citizen it can reach no more than
    ``ceiling / (ceiling + floor)`` of the ceiling's rate (BENCHMARKS.md,
    verdict). The log is settled first, as for the bot (:func:`settle_wal`)."""
    from sqlalchemy import Column, Integer, LargeBinary, MetaData, Table, insert, update

    from storage.onetrip import WRITES_RIDE_ALONG

    table = Table("step", MetaData(), Column("id", Integer, primary_key=True), Column("body", LargeBinary))
    write = (update(table).where(table.c.id == 1).values(body=os.urandom(200))
             .execution_options(**{WRITES_RIDE_ALONG: True}))
    times: dict[str, list[float]] = {"session": [], "connection": []}
    with scratch_directory() as directory:
        engine = create_engine(f"sqlite+aiosqlite:///{directory}/step.db")
        try:
            async with engine.begin() as connection:
                await connection.run_sync(table.metadata.create_all)
                await connection.execute(insert(table).values(id=1, body=b""))
            settle_wal(os.path.join(directory, "step.db"))  # the engine's pooled connection keeps the log
            sessionmaker = create_sessionmaker(engine)
            for _ in range(steps):
                started = time.perf_counter()
                async with sessionmaker.begin() as session:
                    await session.execute(write)
                times["session"].append(time.perf_counter() - started)
                started = time.perf_counter()
                async with engine.begin() as connection:
                    await connection.execute(write)
                times["connection"].append(time.perf_counter() - started)
        finally:
            await engine.dispose()
    each = {kind: summary_ms(values) for kind, values in times.items()}
    return {**each, "floor_ms": min(s["p50_ms"] for s in each.values())}


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class ErrorCounter(logging.Handler):
    """Counts the product's error log records: an update that failed and was rolled
    back (the citizen is asked to send again), or one that raised after its commit."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.count = 0
        self.first: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        if self.first is None:
            exc = record.exc_info[1] if record.exc_info else None
            self.first = f"{record.getMessage()}: {type(exc).__name__}: {exc}"[:300] if exc else record.getMessage()


ERRORS = ErrorCounter()
for _name in ("bot", "handoff"):
    logging.getLogger(_name).addHandler(ERRORS)


# -- databases ------------------------------------------------------------------------------


@contextmanager
def scratch_directory() -> Iterator[str]:
    """A fresh temporary directory (under ``PETITION_BENCH_TMP`` if set), removed afterwards."""
    directory = tempfile.mkdtemp(prefix="petition-bench-", dir=os.environ.get("PETITION_BENCH_TMP"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@asynccontextmanager
async def scratch_database(backend: str, pg_url: str = DEFAULT_PG_URL) -> AsyncIterator[str]:
    """A fresh, empty database URL for one benchmark, removed afterwards."""
    if backend == "sqlite":
        with scratch_directory() as directory:
            yield f"sqlite+aiosqlite:///{directory}/bench.db"
        return
    name = f"petition_bench_{uuid.uuid4().hex[:12]}"
    admin = create_async_engine(pg_url, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield make_url(pg_url).set(database=name).render_as_string(hide_password=False)
    finally:
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()


@dataclass
class DbStats:
    """Driver round trips seen on an engine, through SQLAlchemy's events.

    ``statements`` is what the brief asks for (``before_cursor_execute``: every
    SQL statement, ``BEGIN IMMEDIATE`` included). The other counters are the
    round trips that are not statements: COMMIT/ROLLBACK, the pool's reset on
    return (a ROLLBACK, which on aiosqlite is one more thread hop) and
    checkouts (on PostgreSQL each checkout runs the ``pool_pre_ping`` ping).
    """

    statements: int = 0
    #: SQLite: the one-trip adapter's own count of trips to aiosqlite's thread
    #: (``storage.onetrip.OneTripDBAPI.trips``), read at each snapshot.
    dbapi: Any = None
    commits: int = 0
    rollbacks: int = 0
    resets: int = 0
    checkouts: int = 0
    by_verb: Counter[str] = field(default_factory=Counter)

    def attach(self, engine: AsyncEngine) -> DbStats:
        sync = engine.sync_engine
        if hasattr(sync.dialect.loaded_dbapi, "trips"):
            self.dbapi = sync.dialect.loaded_dbapi

        @event.listens_for(sync, "before_cursor_execute")
        def _stmt(conn: Any, cursor: Any, statement: str, params: Any, context: Any, executemany: bool) -> None:
            self.statements += 1
            self.by_verb[statement.lstrip().split(None, 1)[0].upper()] += 1

        @event.listens_for(sync, "commit")
        def _commit(conn: Any) -> None:
            self.commits += 1

        @event.listens_for(sync, "rollback")
        def _rollback(conn: Any) -> None:
            self.rollbacks += 1

        @event.listens_for(sync.pool, "reset")
        def _reset(dbapi_conn: Any, record: Any, reset_state: Any = None) -> None:
            self.resets += 1

        @event.listens_for(sync.pool, "checkout")
        def _checkout(dbapi_conn: Any, record: Any, proxy: Any) -> None:
            self.checkouts += 1

        return self

    def snapshot(self) -> dict[str, int]:
        counts = {"statements": self.statements, "commits": self.commits, "rollbacks": self.rollbacks,
                  "resets": self.resets, "checkouts": self.checkouts}
        if self.dbapi is not None:
            counts["trips"] = int(self.dbapi.trips)
        return counts

    def since(self, before: dict[str, int]) -> dict[str, int]:
        now = self.snapshot()
        return {k: now[k] - before.get(k, 0) for k in now}


def round_trips(delta: dict[str, int], backend: str) -> int:
    """Statements plus the other driver round trips of ``delta`` (see DbStats).

    SQLite (aiosqlite: every call is a hop to the connection's thread): the
    one-trip adapter counts its trips itself (a BEGIN and the writes riding
    along with a statement or the commit share its trip; a rollback with no
    transaction open makes none); without it, the statements (``BEGIN
    IMMEDIATE`` is one), COMMIT/ROLLBACK, and the pool's reset-on-return
    ``rollback()``. PostgreSQL (asyncpg): the statements, the
    ``BEGIN`` the adapter sends before a transaction's first statement and its
    COMMIT/ROLLBACK, and ``pool_pre_ping``: BEGIN, ``;``, ROLLBACK per checkout
    (SQLAlchemy 2.1 pings inside a transaction for pgbouncer's sake). A reset
    after COMMIT is free on asyncpg (no transaction open).
    """
    transactions = delta["commits"] + delta["rollbacks"]
    if backend == "sqlite":
        if "trips" in delta:
            return delta["trips"]
        return delta["statements"] + transactions + delta["resets"]
    return delta["statements"] + 2 * transactions + 3 * delta["checkouts"]


# -- the fake Bot API ------------------------------------------------------------------------


class BenchTelegram(FakeTelegram):
    """The simulator's in-process Bot API, without its unbounded call log.

    Counts calls by method; optionally remembers each chat's latest inline
    keyboard and text (the dialog driver reads them to press buttons, as a
    person reads the screen); optionally checks Telegram's flood limits
    (``limits``) and answers 429 when one is exceeded.
    """

    def __init__(self, *, track_chats: bool = False, limits: Any = None,
                 on_sent: Callable[[TelegramMethod[Any]], None] | None = None) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()
        self.total = 0
        self.track_chats = track_chats
        self.keyboards: dict[int, InlineKeyboardMarkup] = {}
        self.last_text: dict[int, str] = {}
        self.limits = limits
        self.on_sent = on_sent

    async def make_request(self, bot: Bot, method: TelegramMethod[Any],
                           timeout: int | None = None) -> Any:  # noqa: ASYNC109 - aiogram's signature
        if self.failures:
            raise self.failures.popleft()
        if self.limits is not None:
            self.limits.check(method)  # raises TelegramRetryAfter when over a limit
        self.total += 1
        self.counts[type(method).__name__] += 1
        chat_id = getattr(method, "chat_id", None)
        if self.track_chats and chat_id is not None:
            markup = getattr(method, "reply_markup", None)
            if isinstance(markup, InlineKeyboardMarkup):
                self.keyboards[int(chat_id)] = markup
            text_ = getattr(method, "text", None)
            if text_:
                self.last_text[int(chat_id)] = text_
        if self.on_sent is not None:
            self.on_sent(method)
        return self._answer(method)


# -- the real bot ----------------------------------------------------------------------------


@dataclass
class BotUnderTest:
    url: str
    backend: str
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    settings: Settings
    bureau: BureauConfig
    dp: Dispatcher
    bot: Bot
    telegram: BenchTelegram
    stats: DbStats

    async def close(self) -> None:
        await self.engine.dispose()


async def build_bot(url: str, *, telegram: BenchTelegram | None = None, migrate_schema: bool = True,
                    variant: str | None = None, **settings_overrides: Any) -> BotUnderTest:
    """The production dispatcher on a database URL, with a fake Bot API session."""
    crypto = _crypto()
    if crypto is not None and "data_keys" not in settings_overrides:
        settings_overrides["data_keys"] = BENCH_DATA_KEY or crypto.new_key()
    settings = Settings(_env_file=None, bot_token=TOKEN, database_url=url,
                        staff_chat_id=STAFF_CHAT, admin_ids=[ADMIN_ID], log_level="WARNING",
                        **settings_overrides)
    configure = getattr(app_module, "configure_encryption", None)
    if configure is not None:  # personal data encrypted at rest: the product's own key setup
        configure(settings)
    engine = (create_engine(url, sqlite_synchronous=settings.sqlite_synchronous) if variant is None
              else variant_engine(variant, url, settings.sqlite_synchronous))
    if migrate_schema:
        await migrate(engine)
    stats = DbStats().attach(engine)
    sessionmaker = create_sessionmaker(engine)
    bureau = load_bureau_config(settings.bureau_config) if settings.bureau_config else load_bureau_config()
    dp = create_dispatcher(settings, sessionmaker, bureau)
    telegram = telegram or BenchTelegram(track_chats=True)
    bot = create_bot(TOKEN, session=telegram)
    await ready_to_serve(sessionmaker)  # as polling and webhook do when they start
    return BotUnderTest(url, "sqlite" if url.startswith("sqlite") else "postgresql", engine, sessionmaker,
                        settings, bureau, dp, bot, telegram, stats)


#: What-if engines, for the suggestions in the report only (the product's engine is the default).
VARIANTS = {
    "sqlite-pool1": "SQLite with a pool of one connection: writers queue in asyncio instead of "
                    "SQLite's busy handler (sleeps of 1-100 ms)",
    "pg-noping": "PostgreSQL without pool_pre_ping",
}


def variant_engine(variant: str, url: str, synchronous: str) -> AsyncEngine:
    from storage import db

    if variant == "sqlite-pool1":
        engine = create_async_engine(url, connect_args={"timeout": 5.0}, pool_size=1, max_overflow=0)
        db._sqlite_setup(engine, synchronous, 5000)
        return engine
    if variant == "pg-noping":
        return create_async_engine(url)
    raise ValueError(f"unknown variant {variant!r}")


BENCH_DATA_KEY = os.environ.get("PETITION_BENCH_DATA_KEY")


def _crypto() -> Any:
    """``storage.crypto`` where the product encrypts personal data (newer trees), else None."""
    try:
        return importlib.import_module("storage.crypto")
    except ImportError:
        return None


class Stopwatch:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start
