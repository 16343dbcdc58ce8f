"""`petition-bot run --webhook` as a real process: secret checked, answered after commit, each update once."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.fake_bot_api import TOKEN, FakeBotAPI, free_port, wait_for_port

SECRET = "s3cret-token-for-tests_0123456789"
CITIZEN = 8811



def _update(update_id: int, text: str) -> dict[str, Any]:
    return {"update_id": update_id, "message": {
        "message_id": update_id, "date": int(time.time()), "chat": {"id": CITIZEN, "type": "private"},
        "from": {"id": CITIZEN, "is_bot": False, "first_name": "C", "language_code": "zh"}, "text": text}}


async def test_webhook_checks_the_secret_and_handles_each_update_once(api: FakeBotAPI, tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "PETITION_BOT_TOKEN": TOKEN, "PETITION_TELEGRAM_API_URL": f"http://127.0.0.1:{api.port}",
           "PETITION_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'w.db'}",
           "PETITION_WEBHOOK_URL": "https://bot.example.invalid", "PETITION_WEBHOOK_SECRET": SECRET,
           "PETITION_WEBHOOK_PORT": str(port)}
    log = (tmp_path / "bot.log").open("wb")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "bot", "run", "--webhook", env=env,
                                                stdout=log, stderr=log, cwd=tmp_path)
    try:
        await wait_for_port(port)
        assert "setWebhook" in api.calls
        # One connection by default: Telegram then sends the next update only after
        # this one was answered, so one chat's updates arrive and run in order.
        assert api.last_params["setWebhook"]["max_connections"] == "1"
        url = f"http://127.0.0.1:{port}/telegram"
        async with aiohttp.ClientSession() as http:
            async with http.post(url, json=_update(1, "/start")) as missing:
                assert missing.status == 401
            async with http.post(url, json=_update(1, "/start"),
                                 headers={"X-Telegram-Bot-Api-Secret-Token": "wrong-secret-0000000"}) as wrong:
                assert wrong.status == 401
            assert api.to_chat(CITIZEN) == []
            headers = {"X-Telegram-Bot-Api-Secret-Token": SECRET}
            async with http.post(url, json=_update(1, "/start"), headers=headers) as ok:
                assert ok.status == 200
            # Answered only after the update was handled: the reply is already out.
            [greeting] = api.to_chat(CITIZEN)
            assert "东莞市信访局" in greeting.text
            async with http.post(url, json=_update(1, "/start"), headers=headers) as again:
                assert again.status == 200
            async with http.post(url, json=_update(2, "/new"), headers=headers) as new:
                assert new.status == 200
        # The repeated update 1 had no effect; update 2 started a filing.
        replies = api.to_chat(CITIZEN)
        assert len(replies) == 2 and "隐私说明" in replies[1].text
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        log.close()
    assert "Traceback" not in (tmp_path / "bot.log").read_text()


def test_webhook_mode_without_a_secret_says_so(tmp_path: Path) -> None:
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith("PETITION_")}
    env["PETITION_BOT_TOKEN"] = TOKEN
    result = subprocess.run([sys.executable, "-m", "bot", "run", "--webhook"], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "PETITION_WEBHOOK_SECRET" in result.stderr
