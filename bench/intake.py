"""Benchmark 1: intake throughput, the real bot against the framework's ceiling.

N citizens each run the whole filing dialog (20 updates, the last one the
confirm that creates the case) through the production dispatcher, update
pipeline, routers, storage and outbox writes, on a fake in-process Bot API,
fed as long polling delivers (:mod:`bench.feeder`). One citizen alone files
:data:`ALONE_IN_A_ROW` times, one filing after another. The ceiling bot
(:mod:`bench.ceiling`) runs a dialog of the same shape, fed the same way.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from bench.ceiling import build_ceiling
from bench.common import (
    ERRORS,
    BenchTelegram,
    build_bot,
    durable_commit_floor,
    durable_step_floor,
    round_trips,
    scratch_database,
    settle_wal,
    sqlite_commit_times,
    summary_ms,
)
from bench.feeder import FeedResult, Ids, Person, Script, run_closed_loop, run_paced
from bench.scripts import Receipts, ceiling_dialog, filing
from storage.models import Case, OutboxMessage, ProcessedUpdate

log = logging.getLogger(__name__)

FIRST_CITIZEN = 100_000
#: One citizen at a time files this many times in a row (each filing a new
#: citizen once the last one has its receipt): a single filing is 20 updates,
#: a few milliseconds, too short a run to time (the ceiling's moved by ±40 %).
ALONE_IN_A_ROW = 10

#: A commit trip longer than the p99 target holds every update of its batch,
#: and those arriving meanwhile, past the target by itself: a stall of the disk.
STALL_S = 0.010


def _stalls(commits: list[float], seconds: float) -> dict[str, float]:
    """Commit trips longer than :data:`STALL_S`, and the share of the run's time
    they took. Updates arrive at random at a person's pace, so about that share
    of them arrived while the bot waited for such a commit."""
    stalled = [c for c in commits if c > STALL_S]
    return {"over_ms": STALL_S * 1000, "count": len(stalled), "total_ms": sum(stalled) * 1000,
            "share_of_run": sum(stalled) / seconds if seconds else 0.0}


def _in_a_row(citizens: int, pace: tuple[float, float] | None) -> int:
    """Filings each script makes one after another: :data:`ALONE_IN_A_ROW` for
    a single citizen, saturated; else one."""
    return ALONE_IN_A_ROW if citizens == 1 and not pace else 1


def _people(citizens: int, pace: tuple[float, float] | None, dialog: Callable[[Person], Script],
            ids: Ids) -> list[Script]:
    """One script per citizen at once, each of :func:`_in_a_row` filings by
    as many citizens, one after another."""
    row = _in_a_row(citizens, pace)
    # The people are made now: a generator would read ``i`` only once the list is built.
    return [itertools.chain.from_iterable([dialog(Person(ids, FIRST_CITIZEN + i * row + k)) for k in range(row)])
            for i in range(citizens)]


def _feed_metrics(result: FeedResult) -> dict[str, Any]:
    return {
        "updates": result.updates,
        "seconds": result.seconds,
        "updates_per_s": result.rate,
        "batches": result.batches,
        "latency": summary_ms(result.latencies),
        "by_label": {label: summary_ms(values) for label, values in sorted(result.by_label.items())},
    }


async def run_intake(backend: str, citizens: int, pg_url: str, variant: str | None = None,
                     pace: tuple[float, float] | None = None) -> dict[str, Any]:
    """Saturated (the closed loop), or at a person's pace given ``pace``: the
    think time's bounds in seconds (:func:`bench.feeder.run_paced`)."""
    async with scratch_database(backend, pg_url) as url:
        app = await build_bot(url, variant=variant)
        try:
            if backend == "sqlite":  # before the warm-up: its scratch table is a change of schema
                settle_wal(make_url(url).database or "")
            ids = Ids(app.bot)
            # Warm-up: one filing, untimed (imports, catalogs, prepared statements, pool).
            warm = Receipts()
            shape: list[str] = []
            for step in filing(Person(ids, FIRST_CITIZEN - 1), app.telegram, warm):
                shape.append(step.label)
                await app.dp.feed_update(app.bot, step.update)
            assert warm.ok and not warm.failed, warm.failed

            before_db, before_calls = app.stats.snapshot(), app.telegram.total
            errors_before = ERRORS.count
            receipts = Receipts()
            scripts = _people(citizens, pace, lambda person: filing(person, app.telegram, receipts), ids)
            with sqlite_commit_times() as commits:
                result = (await run_paced(app.dp, app.bot, scripts, pace) if pace
                          else await run_closed_loop(app.dp, app.bot, scripts))
            delta = app.stats.since(before_db)
            calls = app.telegram.total - before_calls

            async with app.sessionmaker() as session:
                cases = await session.scalar(select(func.count()).select_from(Case))
                processed = await session.scalar(select(func.count()).select_from(ProcessedUpdate))
                outbox = await session.scalar(select(func.count()).select_from(OutboxMessage))
            n = result.updates
            # One citizen commits every update alone: the disk's own floor and the stack's, measured beside it.
            alone = backend == "sqlite" and _in_a_row(citizens, pace) > 1
            floor = durable_commit_floor() if alone else None
            step_floor = await durable_step_floor() if alone else None
            return {
                "backend": backend,
                "variant": variant,
                "citizens": citizens,
                "pace": pace,
                "updates_per_filing": len(shape),
                "filings_in_a_row": _in_a_row(citizens, pace),
                "shape": shape,
                **_feed_metrics(result),
                "db": {**delta, "statements_per_update": delta["statements"] / n,
                       "round_trips_per_update": round_trips(delta, backend) / n},
                "bot_api_calls_per_update": calls / n,
                "sqlite_commit_trip": summary_ms(commits) if commits else None,
                "sqlite_commit_stalls": _stalls(commits, result.seconds) if commits else None,
                "durable_commit_floor": floor,
                "durable_step_floor": step_floor,
                "errors": ERRORS.count - errors_before, "first_error": ERRORS.first,
                "check": {
                    "receipts_ok": len(receipts.ok), "receipts_failed": len(receipts.failed),
                    "failed_examples": receipts.failed[:3],
                    "cases_in_db": int(cases or 0) - 1,  # minus the warm-up filing
                    "processed_updates_in_db": int(processed or 0) - len(shape),
                    "outbox_rows": int(outbox or 0) - 1,
                },
            }
        finally:
            await app.close()


async def run_ceiling(citizens: int, shape: list[str], pace: tuple[float, float] | None = None) -> dict[str, Any]:
    dp, bot, telegram = build_ceiling(BenchTelegram())
    ids = Ids(bot)
    for step in ceiling_dialog(Person(ids, FIRST_CITIZEN - 1), shape):  # warm-up
        await dp.feed_update(bot, step.update)
    before = telegram.total
    scripts = _people(citizens, pace, lambda person: ceiling_dialog(person, shape), ids)
    result = await run_paced(dp, bot, scripts, pace) if pace else await run_closed_loop(dp, bot, scripts)
    return {
        "backend": "ceiling",
        "citizens": citizens,
        "pace": pace,
        "updates_per_filing": len(shape),
        "filings_in_a_row": _in_a_row(citizens, pace),
        **_feed_metrics(result),
        "bot_api_calls_per_update": (telegram.total - before) / result.updates,
    }
