"""Benchmark 4: memory as distinct chats grow.

Run in a fresh process (``python -m bench`` starts one per benchmark). N
distinct private chats each send one /start through the real bot, fed like
polling (batches of 100 chats). RSS is read after a warm-up of 1,000 other
chats (pool, caches, imports) and again after the N chats, once the run has
settled (``gc.collect()`` and a short pause). The fake Bot API keeps no per-chat
state here, so what grows is the bot's.

Also reported: the size of the per-chat structures that can be counted from
outside — aiogram's FSM storage (``Dispatcher.fsm.storage``: the dispatcher's
default MemoryStorage, which the product does not use for its dialog) and the
update pipeline's per-chat locks.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
from collections.abc import Iterator
from typing import Any

from bench.common import ERRORS, BenchTelegram, build_bot, rss_bytes, scratch_database
from bench.feeder import POLL_LIMIT, Ids, Person, Step, run_closed_loop

log = logging.getLogger(__name__)

FIRST = 10_000_000
WARMUP = 1_000
WAVE = 10_000
#: The flood gate keeps each person's timestamps for its window (default 60 s) and
#: drops them lazily on a later update; a 5 s window lets the run settle in 5 s.
FLOOD_WINDOW = 5


def _starts(ids: Ids, first: int, count: int) -> Iterator[Iterator[Step]]:
    for i in range(count):
        yield iter([Step("start", Person(ids, first + i).text("/start"))])


async def _feed(app: Any, ids: Ids, first: int, count: int) -> float:
    """``count`` chats, one poll batch (100) at a time: pending updates wait at
    Telegram, not in the bot, so the driver never holds more than one batch."""
    seconds = 0.0
    for start in range(0, count, POLL_LIMIT):
        n = min(POLL_LIMIT, count - start)
        seconds += (await run_closed_loop(app.dp, app.bot, list(_starts(ids, first + start, n)))).seconds
    return seconds


def _settle() -> int:
    for _ in range(3):
        gc.collect()
    return rss_bytes()


def _fsm_records(dp: Any) -> int | None:
    storage = getattr(getattr(dp, "fsm", None), "storage", None)
    records = getattr(storage, "storage", None)
    return len(records) if records is not None else None


async def run_memory(backend: str, chats: int, pg_url: str, sqlite_synchronous: str = "FULL",
                     variant: str | None = None) -> dict[str, Any]:
    """``variant="no-fsm"`` (what-if, for the report): aiogram's FSM middleware unregistered,
    which is what ``Dispatcher(disable_fsm=True)`` would do."""
    async with scratch_database(backend, pg_url) as url:
        app = await build_bot(url, telegram=BenchTelegram(track_chats=False),
                              sqlite_synchronous=sqlite_synchronous, flood_window_seconds=FLOOD_WINDOW)
        if variant == "no-fsm":
            app.dp.update.outer_middleware.unregister(app.dp.fsm)
        try:
            ids = Ids(app.bot)
            await _feed(app, ids, FIRST - WARMUP, WARMUP)
            await asyncio.sleep(1)
            before = _settle()
            fsm_before = _fsm_records(app.dp)
            curve = []
            errors_before = ERRORS.count
            done = 0
            seconds = 0.0
            while done < chats:
                n = min(WAVE, chats - done)
                seconds += await _feed(app, ids, FIRST + done, n)
                done += n
                curve.append((done, rss_bytes() - before))
            # Settle: let the flood gate's window pass, then one more update (its pruning is lazy).
            await asyncio.sleep(FLOOD_WINDOW + 1)
            await _feed(app, ids, FIRST - WARMUP, 1)
            after = _settle()
            trimmed = after
            try:  # what glibc would give back: tells retained heap from live objects
                ctypes.CDLL("libc.so.6").malloc_trim(0)
                trimmed = rss_bytes()
            except OSError:
                pass
            pipeline = next((m for m in app.dp.update.outer_middleware if hasattr(m, "locks")), None)
            flood = getattr(pipeline, "flood", None)
            return {
                "backend": backend, "variant": variant, "chats": chats, "errors": ERRORS.count - errors_before,
                "sqlite_synchronous": sqlite_synchronous,
                "updates_per_s": chats / seconds if seconds else 0.0,
                "rss_before_mb": before / 2**20, "rss_after_mb": after / 2**20,
                "growth_mb": (after - before) / 2**20, "growth_after_trim_mb": (trimmed - before) / 2**20,
                "bytes_per_chat": (after - before) / chats,
                "curve_mb": [(n, g / 2**20) for n, g in curve],
                "fsm_storage_records": {"before": fsm_before, "after": _fsm_records(app.dp)},
                "pipeline_locks_after": len(pipeline.locks) if pipeline is not None else None,
                "flood_gate_entries_after": len(flood) if flood is not None else None,
                "flood_window_s": FLOOD_WINDOW,
            }
        finally:
            await app.close()


if __name__ == "__main__":  # pragma: no cover - manual run
    logging.basicConfig(level=logging.WARNING)
