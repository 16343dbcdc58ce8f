"""Citizens' rows kept in memory between polling batches (``CitizenCache``):
what the citizen sees stays what the database holds, whoever else wrote it."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from bot.app import create_dispatcher
from bot.middlewares import UpdatePipeline
from bot.polling import process_batch
from bot.settings import Settings
from dialogs.bureau import BureauConfig
from dialogs.i18n import t
from state_machine.intake import Step
from storage.db import create_engine, create_sessionmaker
from storage.models import CitizenSession
from storage.repositories import citizen_cache
from tests import conftest
from tests.conftest import STAFF_CHAT, App, make_app
from tests.test_handoff_e2e import ADMIN
from tests.test_intake_validation_e2e import reach, stored

BANNED = "限制使用本服务"


def _cache_of(app: App) -> int:
    pipeline: UpdatePipeline = app.sim.dp.workflow_data["pipeline"]
    return len(pipeline.citizen_cache) if pipeline.citizen_cache is not None else 0


@pytest.fixture
def polling(settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], bureau: BureauConfig,
            clock: conftest.TestClock) -> App:
    """Every update through ``run_batch``, as long polling feeds it."""
    return make_app(settings, sessionmaker, bureau, clock, batches=True)


async def test_a_row_changed_by_another_process_between_batches_is_obeyed_not_overwritten(
        polling: App, database_url: str) -> None:
    citizen = polling.sim.citizen()
    await reach(citizen, Step.TITLE)
    before = await stored(polling, citizen)
    # Another process (an operator's tool) bars the citizen; its own clock.
    async with polling.sessionmaker() as session, session.begin():
        await session.execute(update(CitizenSession).where(CitizenSession.user_id == citizen.user.id)
                              .values(banned=True, updated_at=polling.clock.now + timedelta(seconds=1)))
    [answer] = await citizen.send("拖欠工资")
    assert BANNED in answer
    assert await stored(polling, citizen) == before  # the answer was not taken, nothing undone
    async with polling.sessionmaker() as session:
        row = await session.get(CitizenSession, citizen.user.id)
    assert row is not None and row.banned


@pytest.mark.parametrize("ban_fed", ["in a batch", "alone"])
async def test_a_ban_from_the_staff_chat_reaches_a_citizen_whose_row_is_kept(
        polling: App, ban_fed: str, caplog: pytest.LogCaptureFixture) -> None:
    """The ban written in a batch of its own, or alone (one transaction, as a
    webhook or the redo of a failed batch feeds it): either way the citizen's
    next batch sees it, without a batch redone (the test clock stands still,
    so only this process's own record of what it wrote can tell)."""
    citizen = polling.sim.citizen(4321)
    await reach(citizen, Step.TITLE)
    admin = polling.sim.staff(ADMIN, STAFF_CHAT)
    ban = admin.message_update(text="/ban 4321")
    if ban_fed == "alone":
        await polling.sim.dp.feed_update(polling.sim.bot, ban)
    else:
        await polling.sim.feed(ban)
    assert "已限制用户 4321" in admin.last_text
    [answer] = await citizen.send("拖欠工资")
    assert BANNED in answer
    assert "failed as one transaction" not in caplog.text


async def test_a_batch_that_rolls_back_leaves_none_of_its_changes_in_memory(
        database_url: str, db: AsyncEngine, settings: Settings, bureau: BureauConfig,
        clock: conftest.TestClock) -> None:
    if not database_url.startswith("sqlite"):
        pytest.skip("SQLite only: the rows are kept in memory only on SQLite")
    async with conftest.impatient_app(database_url, settings, bureau, clock, batches=True) as app:
        citizen = app.sim.citizen()
        await reach(citizen, Step.REQUEST)
        assert _cache_of(app) == 1
        before = await stored(app, citizen)
        with conftest.sqlite_write_lock(database_url):  # the commit cannot happen
            await process_batch(app.sim.dp, app.sim.bot, [citizen.message_update(text="要求支付工资")])
        assert citizen.last_text == t("zh", "retry_later")
        assert await stored(app, citizen) == before
        # Sent again, the answer is taken as the answer to the same question,
        # not to the next one the failed batch had moved to in memory.
        await citizen.send("要求支付工资")
        after = await stored(app, citizen)
        assert after.state == Step.FACTS
        assert after.answers == {**before.answers, "request": "要求支付工资"}


async def test_more_citizens_than_the_cache_holds_each_continue_where_they_were(
        settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], bureau: BureauConfig,
        clock: conftest.TestClock) -> None:
    small = settings.model_copy(update={"citizen_cache_size": 2})
    app = make_app(small, sessionmaker, bureau, clock, batches=True)
    citizens = [app.sim.citizen(5000 + i) for i in range(3)]
    for citizen in citizens:
        await reach(citizen, Step.TITLE)
    for i, citizen in enumerate(citizens):
        await citizen.send(f"拖欠工资{i}")
    for i, citizen in enumerate(citizens):
        row = await stored(app, citizen)
        assert row.state == Step.REQUEST and row.answers["title"] == f"拖欠工资{i}"
    assert _cache_of(app) <= 2


async def test_rows_are_kept_only_on_sqlite_and_only_when_asked_for(
        settings: Settings, bureau: BureauConfig, tmp_path: Path) -> None:
    engines = [create_engine(f"sqlite+aiosqlite:///{tmp_path / 'cache.db'}"),
               create_engine("postgresql+asyncpg://postgres@127.0.0.1:5432/test")]  # never connected
    try:
        sqlite_maker, pg_maker = (create_sessionmaker(e) for e in engines)
        assert citizen_cache(sqlite_maker, 10) is not None
        assert citizen_cache(sqlite_maker, 0) is None
        assert citizen_cache(pg_maker, 10) is None
        off = create_dispatcher(settings.model_copy(update={"citizen_cache_size": 0}), sqlite_maker, bureau)
        assert off.workflow_data["pipeline"].citizen_cache is None
    finally:
        for engine in engines:
            await engine.dispose()
