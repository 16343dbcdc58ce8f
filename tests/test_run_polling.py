"""`petition-bot run` as a real process, long polling a Bot API server on loopback."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.app import GIL_SWITCH_INTERVAL, ready_to_serve
from bot.callbacks import IntakeButton
from storage.db import create_engine, create_sessionmaker
from storage.repositories import CaseRepository, PetitionerQuery
from tests.fake_bot_api import TOKEN, FakeBotAPI

CITIZEN = 8801


@contextmanager
def _settling() -> Iterator[float]:
    """Undo, for the rest of the suite, what settling the process does (yields the switch interval before it)."""
    before = sys.getswitchinterval()
    try:
        yield before
    finally:
        gc.unfreeze()
        sys.setswitchinterval(before)


async def test_serving_compiles_ahead_freezes_start_up_objects_and_hands_the_gil_over_sooner(
        sessionmaker: async_sessionmaker[AsyncSession], caplog: pytest.LogCaptureFixture) -> None:
    # What polling and the webhook do once start-up is over (bot.app.background_work).
    with _settling() as before:
        await ready_to_serve(sessionmaker)
        assert gc.get_freeze_count() > 0
        assert sys.getswitchinterval() == GIL_SWITCH_INTERVAL < before
    # The first batch that confirms two filings (or three, five, nine) finds its petitioner query compiled.
    caplog.set_level(logging.INFO, logger="sqlalchemy.engine.Engine")
    for count in (1, 2, 3, 5, 9):
        caplog.clear()
        filings = [PetitionerQuery(user, f"1380013{user:04d}", None, "labor", "dongcheng", f"DG-TEST-{user:04d}")
                   for user in range(11, 11 + count)]
        async with sessionmaker() as session, session.begin():
            found = await CaseRepository(session).petitioners(filings)
        assert [p.filed_before for p in found] == [False] * count
        messages = [r.getMessage() for r in caplog.records if r.name == "sqlalchemy.engine.Engine"]
        union = next(i for i, m in enumerate(messages) if "UNION ALL" in m)
        assert messages[union + 1].startswith("[cached since"), (count, messages[union + 1][:80])


async def test_serving_starts_even_when_the_database_is_away_at_that_moment(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'missing' / 'p.db'}")
    try:
        with _settling():
            await ready_to_serve(create_sessionmaker(engine))
            assert gc.get_freeze_count() > 0, "start-up went on"
    finally:
        await engine.dispose()
    assert "could not compile the petitioner query ahead" in caplog.text


class BotProcess:
    def __init__(self, api_url: str, db: Path, tmp: Path) -> None:
        self.env = {**os.environ, "PETITION_BOT_TOKEN": TOKEN, "PETITION_TELEGRAM_API_URL": api_url,
                    "PETITION_DATABASE_URL": f"sqlite+aiosqlite:///{db}", "PETITION_POLLING_TIMEOUT": "1",
                    "PETITION_LOG_LEVEL": "INFO"}
        self.env.pop("PETITION_STAFF_CHAT_ID", None)
        self.log = tmp / "bot.log"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bot", "run", env=self.env, stdout=log, stderr=log,
                cwd=self.log.parent)  # not the checkout: a developer's .env there would apply

    async def kill(self, sig: int = signal.SIGKILL) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return await asyncio.wait_for(self.proc.wait(), 20)


async def test_polling_survives_kill_9_mid_dialog_and_never_drops_updates(api: FakeBotAPI, tmp_path: Path) -> None:
    bot = BotProcess(f"http://127.0.0.1:{api.port}", tmp_path / "p.db", tmp_path)
    await bot.start()
    api.push_text(CITIZEN, "/new")
    [consent] = await api.wait_for(CITIZEN, 1)
    assert "隐私说明" in consent.text
    assert "setMyCommands" in api.calls
    api.push_callback(CITIZEN, IntakeButton(step="consent", value="accept").pack())
    await api.wait_for(CITIZEN, 2)
    api.push_callback(CITIZEN, IntakeButton(step="matter_class", value="suggestion").pack())
    await api.wait_for(CITIZEN, 3)
    assert await bot.kill(signal.SIGKILL) == -signal.SIGKILL

    # Sent while the bot was down: must be processed after the restart, in order.
    api.push_text(CITIZEN, "社保")
    api.push_callback(CITIZEN, IntakeButton(step="subcategory", value="~skip").pack())
    await bot.start()
    messages = await api.wait_for_replies(CITIZEN, 5)
    assert "更具体的分类" in messages[3].text
    assert "问题发生在哪里" in messages[4].text

    api.push_text(CITIZEN, "虎门")
    messages = await api.wait_for_replies(CITIZEN, 6)
    assert "标题" in messages[5].text
    assert await bot.kill(signal.SIGTERM) == 0
    assert len(api.replies_to(CITIZEN)) == 6, "a replayed update was answered twice"
    assert api.resends_to(CITIZEN) <= 1, "only the reply the kill interrupted may be sent again"
    log = bot.log.read_text()
    assert "Traceback" not in log
    # Everything processed was confirmed before the graceful exit.
    assert api.pending == [] or all(u["update_id"] > api.confirmed_up_to for u in api.pending)


async def test_polling_delivers_the_staff_card_and_staff_actions_reach_the_citizen(
        api: FakeBotAPI, tmp_path: Path) -> None:
    bot = BotProcess(f"http://127.0.0.1:{api.port}", tmp_path / "p.db", tmp_path)
    staff_chat, admin = -100777, 4040
    bot.env.update({"PETITION_STAFF_CHAT_ID": str(staff_chat), "PETITION_ADMIN_IDS": str(admin)})
    await bot.start()
    steps = [("text", "/new"), ("cb", "consent:accept"), ("cb", "matter_class:suggestion"), ("text", "教育"),
             ("cb", "subcategory:~skip"), ("text", "东城"), ("text", "标题"), ("text", "诉求"), ("text", "事实"),
             ("text", "理由"), ("cb", "occurred:~skip"), ("cb", "accused:~skip"), ("cb", "litigation:none"),
             ("cb", "attachments:~done"), ("text", "李四"), ("text", "13912345678"), ("text", "地址"),
             ("cb", "publish:no"), ("cb", "summary:~confirm")]
    for n, (kind, value) in enumerate(steps, 1):
        if kind == "text":
            api.push_text(CITIZEN, value)
        else:
            step, _, choice = value.partition(":")
            api.push_callback(CITIZEN, IntakeButton(step=step, value=choice).pack())
        await api.wait_for(CITIZEN, n if n < 16 else n + 1)  # the phone step adds a "saved" line
    [card] = await api.wait_for(staff_chat, 1)
    assert "待登记" in card.text and "李*" in card.text
    register = next(data for label, data in card.buttons() if "登记" in label)
    api.pending.append({"update_id": 10_000, "callback_query": {
        "id": "cbx", "chat_instance": "x", "data": register,
        "from": {"id": admin, "is_bot": False, "first_name": "A"},
        "message": {"message_id": 1, "date": 0, "chat": {"id": staff_chat, "type": "supergroup"}, "text": "…"}}})
    api._news.set()
    messages = await api.wait_for(CITIZEN, len(steps) + 2)
    assert "已登记" in messages[-1].text
    assert await bot.kill(signal.SIGTERM) == 0
