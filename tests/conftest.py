"""Fixtures: a database per test (SQLite file, and PostgreSQL when
PETITION_TEST_DATABASE_URL is set), and the real dispatcher on a fake Bot API."""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from bot.app import create_bot, create_dispatcher, create_maintenance, create_outbox_worker
from bot.settings import Settings
from bot.simulator import FakeTelegram, Simulator
from dialogs.bureau import BureauConfig, load_bureau_config
from handoff.maintenance import Maintenance
from handoff.outbox import OutboxWorker
from handoff.pacer import Pacer
from storage import crypto
from storage.db import create_engine, create_sessionmaker, migrate
from tests.fake_bot_api import FakeBotAPI

PG_URL = os.environ.get("PETITION_TEST_DATABASE_URL")
TEST_DATA_KEY = "Vq7yqV3m4dW2m2sQ0mJ7gYfZr1X9kLpA8cN5bT6uE0w="
crypto.configure([TEST_DATA_KEY])
# Bot processes started by tests read and write the same databases as the tests.
os.environ.setdefault("PETITION_DATA_KEYS", TEST_DATA_KEY)
BACKENDS = ["sqlite", *(["postgresql"] if PG_URL else [])]
TOKEN = "123456:TEST-token-for-the-fake-bot-api-0000"
STAFF_CHAT = -1001234567890


class TestClock:
    """A clock the test moves by hand (no sleeping)."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 3, 2, 1, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture(scope="session")
def bureau() -> BureauConfig:
    return load_bureau_config()


async def _pg_database(template: str | None = None) -> tuple[str, str]:
    assert PG_URL
    name = f"petition_test_{uuid.uuid4().hex[:12]}"
    admin = create_async_engine(PG_URL, isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(text(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")))
    await admin.dispose()
    return make_url(PG_URL).set(database=name).render_as_string(hide_password=False), name


async def _pg_drop(name: str) -> None:
    assert PG_URL
    admin = create_async_engine(PG_URL, isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    await admin.dispose()


@dataclass(frozen=True)
class Migrated:
    """Databases migrated once per test session, copied for each test that
    asks for a migrated one (``db``): running the migrations for every test
    took a large share of the suite's time."""

    sqlite_file: Path
    pg_database: str | None


async def _migrated(sqlite_file: Path) -> Migrated:
    urls = [f"sqlite+aiosqlite:///{sqlite_file}"]
    pg_database = None
    if PG_URL:
        url, pg_database = await _pg_database()
        urls.append(url)
    for url in urls:
        engine = create_engine(url)
        try:
            await migrate(engine)
        finally:
            await engine.dispose()
    return Migrated(sqlite_file, pg_database)


@pytest.fixture(scope="session")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Migrated]:
    made = asyncio.run(_migrated(tmp_path_factory.mktemp("migrated") / "petitions.db"))
    try:
        yield made
    finally:
        if made.pg_database:
            asyncio.run(_pg_drop(made.pg_database))


@pytest.fixture(params=BACKENDS)
async def database_url(request: pytest.FixtureRequest, tmp_path: Path, migrated: Migrated) -> AsyncIterator[str]:
    """A new database: empty, or a copy of one already migrated when the test
    asks for ``db`` (whose ``migrate`` then finds nothing to do)."""
    template = migrated if "db" in request.fixturenames else None
    if request.param == "sqlite":
        path = tmp_path / "petitions.db"
        if template is not None:
            shutil.copyfile(template.sqlite_file, path)
        yield f"sqlite+aiosqlite:///{path}"
        return
    url, name = await _pg_database(template.pg_database if template is not None else None)
    try:
        yield url
    finally:
        await _pg_drop(name)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    await migrate(engine)
    yield engine
    await engine.dispose()


@pytest.fixture
def sessionmaker(db: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return create_sessionmaker(db)


@pytest.fixture
def clock() -> TestClock:
    return TestClock()


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(_env_file=None, bot_token=TOKEN, database_url=database_url,  # type: ignore[call-arg]
                    staff_chat_id=STAFF_CHAT, admin_ids=[9001])


class Monotonic:
    """A fake monotonic clock for the pacer, moved together with the test clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class App:
    sim: Simulator
    telegram: FakeTelegram
    sessionmaker: async_sessionmaker[AsyncSession]
    clock: TestClock
    settings: Settings
    bureau: BureauConfig
    worker: OutboxWorker
    monotonic: Monotonic
    maintenance: Maintenance

    async def deliver(self, max_rounds: int = 10_000) -> None:
        """Run the outbox until nothing is pending, moving time over pacing waits and back-offs."""
        for _ in range(max_rounds):
            wait = await self.worker.deliver_due()
            if wait is None:
                return
            if wait > 0:
                self.clock.advance(seconds=wait)
                self.monotonic.now += wait
        raise AssertionError("outbox did not drain")

    def restart(self) -> App:
        """A new dispatcher, bot and fake API on the same database (a process restart)."""
        return make_app(self.settings, self.sessionmaker, self.bureau, self.clock,
                        first_update_id=self.sim.next_update_id())


@contextmanager
def sqlite_write_lock(database_url: str) -> Iterator[None]:
    """Another writer holding the SQLite database's write lock until the block ends."""
    path = make_url(database_url).database
    assert path
    locker = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        locker.execute("BEGIN IMMEDIATE")
        yield
        locker.execute("ROLLBACK")
    finally:
        locker.close()


@asynccontextmanager
async def impatient_app(database_url: str, settings: Settings, bureau: BureauConfig, clock: TestClock,
                        batches: bool = False) -> AsyncIterator[App]:
    """An app on its own engine whose SQLite connections give up after 200 ms
    on a write lock held elsewhere (:func:`sqlite_write_lock`)."""
    engine = create_engine(database_url, busy_timeout_ms=200)
    try:
        yield make_app(settings, create_sessionmaker(engine), bureau, clock, batches=batches)
    finally:
        await engine.dispose()


def make_app(settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], bureau: BureauConfig,
             clock: TestClock, first_update_id: int = 1, batches: bool = False) -> App:
    telegram = FakeTelegram()
    bot = create_bot(TOKEN, session=telegram)
    dp = create_dispatcher(settings, sessionmaker, bureau, clock=clock)
    sim = Simulator(dp, bot, telegram, batches=batches)
    sim.start_update_ids(first_update_id)
    monotonic = Monotonic()
    worker = create_outbox_worker(dp, sessionmaker, bot, clock=clock, pacer=Pacer(clock=monotonic))
    return App(sim, telegram, sessionmaker, clock, settings, bureau, worker, monotonic,
               create_maintenance(dp, sessionmaker, clock, bot=bot))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A module with ``BOTH_FEEDS = True`` runs its tests twice: each update fed
    as a webhook delivers it (``feed_update``, one transaction per update) and
    as polling does (a batch of one through ``run_batch``, the group's way)."""
    if "feed" in metafunc.fixturenames and getattr(metafunc.module, "BOTH_FEEDS", False):
        metafunc.parametrize("feed", ["update", "batch"], indirect=True)


@pytest.fixture
def feed(request: pytest.FixtureRequest) -> str:
    """How the app's simulator feeds updates (see pytest_generate_tests)."""
    return str(getattr(request, "param", "update"))


@pytest.fixture
async def app(settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], bureau: BureauConfig,
              clock: TestClock, feed: str) -> App:
    return make_app(settings, sessionmaker, bureau, clock, batches=feed == "batch")


@pytest.fixture
async def api() -> AsyncIterator[FakeBotAPI]:
    """A Bot API server on loopback (real HTTP) for the bot processes a test starts."""
    server = FakeBotAPI()
    await server.start()
    yield server
    await server.stop()
