"""`petition-bot run` as a real process, long polling a Bot API server on loopback."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.callbacks import IntakeButton
from tests.fake_bot_api import FakeBotAPI

TOKEN = "777000:fake-token-for-a-local-bot-api-server"
CITIZEN = 8801


@pytest.fixture
async def api() -> AsyncIterator[FakeBotAPI]:
    server = FakeBotAPI(TOKEN)
    await server.start()
    yield server
    await server.stop()


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
                sys.executable, "-m", "bot", "run", env=self.env, stdout=log, stderr=log)

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
    messages = await api.wait_for(CITIZEN, 5)
    assert "更具体的分类" in messages[3].text
    assert "问题发生在哪里" in messages[4].text

    api.push_text(CITIZEN, "虎门")
    messages = await api.wait_for(CITIZEN, 6)
    assert "标题" in messages[5].text
    assert await bot.kill(signal.SIGTERM) == 0
    assert len(api.to_chat(CITIZEN)) == 6, "a replayed update was answered twice"
    log = bot.log.read_text()
    assert "Traceback" not in log
    # Everything processed was confirmed before the graceful exit.
    assert api.pending == [] or all(u["update_id"] > api.confirmed_up_to for u in api.pending)
