"""Benchmark 5b: intake through webhook worker processes sharing PostgreSQL.

Real ``petition-bot run --webhook --no-set-webhook`` processes (one, then two),
migrated PostgreSQL, and a fake Bot API over HTTP in this process. Each
simulated citizen runs the filing dialog of :mod:`bench.scripts`: it posts an
update to a worker (round robin, as a reverse proxy would), waits for the
answer, which Telegram gets only after the update is committed and its replies
are sent, reads the keyboard it was sent, and posts the next. Latency is one
request, from the post to the answer.

Both workers share the database and the outbox; each update is posted once,
and the run checks that every filing ended with a receipt and one case.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiogram.types import InlineKeyboardMarkup
from aiohttp import web
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import create_async_engine

from bench.common import ADMIN_ID, STAFF_CHAT, TOKEN, BenchTelegram, scratch_database, summary_ms
from bench.feeder import Ids, Person, Step
from bench.intake import FIRST_CITIZEN
from bench.scripts import Receipts, filing
from storage import crypto
from storage.models import Case

SECRET = "bench-webhook-secret-0000"
_BOT = {"id": 4242, "is_bot": True, "first_name": "Petition bot", "username": "petition_bench_bot"}


class HttpBotAPI:
    """Answers the Bot API methods the workers call; remembers each chat's
    latest keyboard and text in a :class:`BenchTelegram` (what the scripts read)."""

    def __init__(self) -> None:
        self.seen = BenchTelegram(track_chats=True)
        self.runner: web.AppRunner | None = None
        self.port = 0
        self._ids = 0

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/bot{token}/{method}", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        params = dict(await request.post())
        self.seen.total += 1
        self.seen.counts[method] += 1
        if method == "getMe":
            return web.json_response({"ok": True, "result": _BOT})
        if method in ("sendMessage", "sendPhoto", "sendDocument", "editMessageText", "editMessageReplyMarkup"):
            chat = int(str(params.get("chat_id", "0")))
            markup = params.get("reply_markup")
            if markup:
                with contextlib.suppress(ValueError):
                    self.seen.keyboards[chat] = InlineKeyboardMarkup.model_validate_json(str(markup))
            if params.get("text"):
                self.seen.last_text[chat] = str(params["text"])
            self._ids += 1
            return web.json_response({"ok": True, "result": {
                "message_id": self._ids, "date": int(time.time()), "from": _BOT,
                "chat": {"id": chat, "type": "private" if chat > 0 else "supergroup"},
                "text": str(params.get("text", "")) or "…"}})
        return web.json_response({"ok": True, "result": True})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _wait_for_port(port: int, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"worker on port {port} did not start")


async def run_webhook(workers: int, citizens: int, pg_url: str) -> dict[str, Any]:
    api = HttpBotAPI()
    await api.start()
    async with scratch_database("postgresql", pg_url) as url:
        env = {**os.environ, "PETITION_BOT_TOKEN": TOKEN, "PETITION_TELEGRAM_API_URL": f"http://127.0.0.1:{api.port}",
               "PETITION_DATABASE_URL": url, "PETITION_DATA_KEYS": crypto.new_key(),
               "PETITION_STAFF_CHAT_ID": str(STAFF_CHAT), "PETITION_ADMIN_IDS": str(ADMIN_ID),
               "PETITION_WEBHOOK_URL": "https://bench.invalid", "PETITION_WEBHOOK_SECRET": SECRET,
               "PETITION_FLOOD_LIMIT": str(10**9), "PETITION_LOG_LEVEL": "WARNING",
               # The workers' capacity, not Telegram's 30 messages a second (the fake API has no limits).
               "PETITION_TELEGRAM_MESSAGES_PER_SECOND": str(10**6)}
        subprocess_env = {k: v for k, v in env.items() if v is not None}
        migrate = await asyncio.create_subprocess_exec(sys.executable, "-m", "bot", "migrate", env=subprocess_env)
        assert await migrate.wait() == 0, "migrate failed"
        ports = [_free_port() for _ in range(workers)]
        logs = Path(tempfile.mkdtemp(prefix="petition-bench-webhook-"))
        procs = []
        for i, port in enumerate(ports):
            with (logs / f"worker{i}.log").open("wb") as log:
                procs.append(await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "bot", "run", "--webhook", "--no-set-webhook",
                    env={**subprocess_env, "PETITION_WEBHOOK_PORT": str(port)}, stdout=log, stderr=log))
        try:
            for port in ports:
                await _wait_for_port(port)
            result = await _drive(api, ports, citizens)
        finally:
            for proc in procs:
                if proc.returncode is None:
                    proc.terminate()
            for proc in procs:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), 30)
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
        errors = sum(("Traceback" in (logs / f"worker{i}.log").read_text(errors="replace"))
                     for i in range(workers))
        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:
                cases = await conn.scalar(select(func.count()).select_from(Case))
        finally:
            await engine.dispose()
        await api.stop()
        return {**result, "backend": "postgresql", "workers": workers, "citizens": citizens,
                "cases_in_db": int(cases or 0), "worker_logs_with_traceback": errors}


async def _drive(api: HttpBotAPI, ports: list[int], citizens: int) -> dict[str, Any]:
    ids = Ids(None)
    receipts = Receipts()
    latencies: list[float] = []
    failures: list[str] = []
    turn = 0
    headers = {"X-Telegram-Bot-Api-Secret-Token": SECRET, "Content-Type": "application/json"}

    async def citizen(http: aiohttp.ClientSession, n: int) -> None:
        nonlocal turn
        for step in filing(Person(ids, FIRST_CITIZEN + n), api.seen, receipts):
            body = json.dumps(_as_json(step))
            port = ports[turn % len(ports)]
            turn += 1
            t0 = time.perf_counter()
            async with http.post(f"http://127.0.0.1:{port}/telegram", data=body, headers=headers) as answer:
                await answer.read()
                if answer.status != 200:
                    failures.append(f"{answer.status} on {step.label}")
            latencies.append(time.perf_counter() - t0)

    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        outcomes = await asyncio.gather(*(citizen(http, n) for n in range(citizens)), return_exceptions=True)
    seconds = time.perf_counter() - started
    broken = [repr(o)[:200] for o in outcomes if isinstance(o, BaseException)]
    return {"updates": len(latencies), "seconds": seconds, "updates_per_s": len(latencies) / seconds,
            "latency": summary_ms(latencies), "bot_api_calls_per_update": api.seen.total / max(1, len(latencies)),
            "http_failures": failures[:5], "http_failure_count": len(failures), "scripts_broken": broken[:3],
            "receipts_ok": len(receipts.ok), "receipts_failed": len(receipts.failed)}


def _as_json(step: Step) -> dict[str, Any]:
    return step.update.model_dump(mode="json", by_alias=True, exclude_none=True)
