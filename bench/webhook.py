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
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiogram.types import InlineKeyboardMarkup
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import create_async_engine

from bench.common import ADMIN_ID, STAFF_CHAT, TOKEN, BenchTelegram, scratch_database, summary_ms
from bench.feeder import Ids, Person, Step
from bench.intake import FIRST_CITIZEN
from bench.scripts import Receipts, filing
from storage import crypto
from storage.models import Case
from tests.fake_bot_api import FakeBotAPI, Sent, free_port, wait_for_port

SECRET = "bench-webhook-secret-0000"


def _screen(api: FakeBotAPI) -> BenchTelegram:
    """Each chat's latest keyboard and text, as the dialog scripts read them,
    kept current from what the workers send to the fake API."""
    seen = BenchTelegram(track_chats=True)

    def on_send(sent: Sent) -> None:
        markup = sent.params.get("reply_markup")
        if markup:
            with contextlib.suppress(ValueError):
                seen.keyboards[sent.chat_id] = InlineKeyboardMarkup.model_validate_json(str(markup))
        if sent.text:
            seen.last_text[sent.chat_id] = sent.text

    api.on_send = on_send
    return seen


async def run_webhook(workers: int, citizens: int, pg_url: str) -> dict[str, Any]:
    api = FakeBotAPI(TOKEN)
    await api.start()
    screen = _screen(api)
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
        ports = [free_port() for _ in range(workers)]
        logs = Path(tempfile.mkdtemp(prefix="petition-bench-webhook-"))
        procs = []
        for i, port in enumerate(ports):
            with (logs / f"worker{i}.log").open("wb") as log:
                procs.append(await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "bot", "run", "--webhook", "--no-set-webhook",
                    env={**subprocess_env, "PETITION_WEBHOOK_PORT": str(port)}, stdout=log, stderr=log))
        try:
            for port in ports:
                await wait_for_port(port, limit=60)
            result = await _drive(api, screen, ports, citizens)
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


async def _drive(api: FakeBotAPI, screen: BenchTelegram, ports: list[int], citizens: int) -> dict[str, Any]:
    ids = Ids(None)
    receipts = Receipts()
    latencies: list[float] = []
    failures: list[str] = []
    turn = 0
    headers = {"X-Telegram-Bot-Api-Secret-Token": SECRET, "Content-Type": "application/json"}

    async def citizen(http: aiohttp.ClientSession, n: int) -> None:
        nonlocal turn
        for step in filing(Person(ids, FIRST_CITIZEN + n), screen, receipts):
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
            "latency": summary_ms(latencies), "bot_api_calls_per_update": len(api.calls) / max(1, len(latencies)),
            "http_failures": failures[:5], "http_failure_count": len(failures), "scripts_broken": broken[:3],
            "receipts_ok": len(receipts.ok), "receipts_failed": len(receipts.failed)}


def _as_json(step: Step) -> dict[str, Any]:
    return step.update.model_dump(mode="json", by_alias=True, exclude_none=True)
