"""Benchmark 2b: what runs in a write transaction as the history grows.

On SQLite a write transaction holds the database's one write lock, so while it
runs no citizen's step commits. Three such transactions read old rows:

* the maintenance tick, every minute: expiring rating invitations, closing
  review windows, statutory reminders, forgetting old update ids, and sending
  again the replies not known to be sent (``bot.app.create_maintenance``);
* ``/stats`` for this month, in a staff member's update (``handoff.kpi.compute``,
  the same call);
* the retention purge (``handoff.privacy.purge``, part of the tick when
  ``PETITION_RETENTION_DAYS`` is set), the tick's batch: over a backlog
  (retention just turned on over years of ended cases), and the every-minute
  call once nothing is due. It is timed after the others, its erasures dated
  the day before this month, so that this month still holds one filing.

The history is the status benchmark's cloned cases (:mod:`bench.fill`), moved
into the past: each case 105 days to five years old, with its timeline, routed,
received by a unit, accepted and closed 60 days after submission (nine in ten),
a review asked for one in fifty, and two rating invitations, rated long ago.
The update ids of a busy day are kept as the bot keeps them (replies sent).
This month holds only the one real filing, so whatever grows with the table is
the history's cost, not the period's. Each is timed as a whole, several times,
at each size.
"""

from __future__ import annotations

import logging
import statistics
import time
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import text

from bench.common import ERRORS, scratch_database
from bench.status import Table
from bot.app import create_maintenance
from dialogs.engine import utcnow
from handoff.deadlines import BUREAU_TZ
from handoff.kpi import compute
from handoff.maintenance import PURGE_EACH_TICK
from handoff.privacy import purge

log = logging.getLogger(__name__)

#: How far back the history reaches: from 105 days (so that its latest step, a
#: review asked for 70 days after submission, falls before this month) to five years.
NEWEST_DAYS, SPAN_DAYS = 105, 1825
#: The retention period the purge is timed with: three quarters of the ended
#: cases are past it, a backlog at every size. Nothing is past the second.
RETENTION_DAYS, RETENTION_NOTHING_DUE = 365, 3650


def _days_ago(backend: str, column: str, days: str) -> str:
    """SQL for ``column`` moved ``days`` (an SQL integer expression) into the past."""
    if backend == "sqlite":
        return f"datetime({column}, '-' || ({days}) || ' days')"
    return f"{column} - make_interval(days => ({days})::int)"


def _days_after(backend: str, column: str, days: int) -> str:
    """SQL for ``column`` moved ``days`` into the future."""
    return f"datetime({column}, '+{days} days')" if backend == "sqlite" else f"{column} + interval '{days} days'"


async def age(table: Table, first_id: int) -> None:
    """Move the cases from ``first_id`` on (and their rows) into the past, and
    give each its life: routing, receipt, acceptance, ratings."""
    app, backend = table.app, table.app.backend
    offset = f"{NEWEST_DAYS} + id % {SPAN_DAYS}"
    after = _days_after  # short: the statements below use it often
    statements = [
        f"UPDATE cases SET submitted_at = {_days_ago(backend, 'submitted_at', offset)} WHERE id >= :first",
        f"UPDATE cases SET routed_at = {after(backend, 'submitted_at', 1)}, "
        f"unit_received_at = {after(backend, 'submitted_at', 2)}, "
        f"acceptance_notice_at = {after(backend, 'submitted_at', 9)} WHERE id >= :first AND id % 10 <> 0",
        f"UPDATE cases SET review_requested_at = {after(backend, 'submitted_at', 70)} "
        "WHERE id >= :first AND id % 50 = 0",
        f"UPDATE cases SET status = 'closed', closed_at = {after(backend, 'submitted_at', 60)}, "
        f"ended_at = {after(backend, 'submitted_at', 60)} WHERE id >= :first AND id % 10 <> 0",
        f"UPDATE case_events SET at = {_days_ago(backend, 'at', f'{NEWEST_DAYS} + case_id % {SPAN_DAYS}')} "
        "WHERE case_id >= :first",
        *(f"INSERT INTO ratings (case_id, stage, invited_at, expires_at, status) "
          f"SELECT id, '{stage}', {after(backend, 'submitted_at', days)}, {after(backend, 'submitted_at', days + 30)}, "
          f"'rated' FROM cases WHERE id >= :first" for stage, days in (("acceptance", 9), ("decision", 60))),
    ]
    async with app.engine.begin() as conn:
        for sql in statements:
            await conn.execute(text(sql), {"first": first_id})
        # What SQLite's PRAGMA optimize (the tick's) and PostgreSQL's autovacuum keep current.
        await conn.exec_driver_sql("ANALYZE")
    if backend == "postgresql":
        # A history written over years was vacuumed as it went. Aged in bulk, it
        # leaves a dead version of each row updated above, which autovacuum was
        # still working through while the tick and /stats were timed (the tick
        # 3.2 ms one run, 6-12 ms the next, with a fourth UPDATE here).
        async with app.engine.connect() as conn:
            autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await autocommit.exec_driver_sql("VACUUM (ANALYZE) cases, case_events, ratings")


async def keep_updates(table: Table, count: int) -> None:
    """The update ids of the last day, replies sent, as the bot keeps them."""
    now = utcnow()
    step = timedelta(days=1) / max(count, 1)
    rows = [[10**12 + n, now - timedelta(days=1) + n * step, None, True] for n in range(count)]
    for start in range(0, count, 20_000):
        await table.filler._insert("processed_updates", ["update_id", "processed_at", "replies", "delivered"],
                                   rows[start:start + 20_000])


async def _purge(app: Any, days: int, now: datetime) -> tuple[float, int]:
    """One call of the retention purge in its own transaction, as the tick
    makes it (its batch, its commit): seconds, and cases erased."""
    started = time.perf_counter()
    async with app.sessionmaker() as session, session.begin():
        erased = await purge(session, now, days, PURGE_EACH_TICK)
    return time.perf_counter() - started, erased


async def run_upkeep(backend: str, sizes: list[int], updates: int, pg_url: str, repeats: int = 5) -> dict[str, Any]:
    errors_before = ERRORS.count
    async with scratch_database(backend, pg_url) as url:
        table = await Table.open(url)
        app = table.app
        try:
            maintenance = create_maintenance(app.dp, app.sessionmaker, bot=app.bot)
            await keep_updates(table, updates)
            today = utcnow().astimezone(BUREAU_TZ).date()
            levels = []
            for size in sizes:
                first_id = table.filler.next_ids.get("cases", 2)
                started = time.perf_counter()
                await table.filler.grow_to(size)
                await age(table, max(first_id, 2))  # case 1 is the real filing, this month's
                fill_seconds = time.perf_counter() - started
                await maintenance.tick()  # once untimed: the first run plans and warms the cache
                ticks, reports, purges, idle, erased = [], [], [], [], []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    await maintenance.tick()
                    ticks.append((time.perf_counter() - t0) * 1e3)
                    async with app.sessionmaker() as session, session.begin():
                        t0 = time.perf_counter()
                        report = await compute(session, app.bureau, start=today.replace(day=1), end=today,
                                               now=utcnow())
                        reports.append((time.perf_counter() - t0) * 1e3)
                before_this_month = datetime.combine(today.replace(day=1) - timedelta(days=1), datetime.min.time(),
                                                     BUREAU_TZ)
                await _purge(app, RETENTION_NOTHING_DUE, before_this_month)  # once untimed, as the tick
                for _ in range(repeats):
                    seconds, count = await _purge(app, RETENTION_DAYS, before_this_month)
                    purges.append(seconds * 1e3)
                    erased.append(count)
                    seconds, count = await _purge(app, RETENTION_NOTHING_DUE, before_this_month)
                    assert count == 0, count
                    idle.append(seconds * 1e3)
                levels.append({"cases": size, "ratings": 2 * size, "updates_kept": updates,
                               "fill_seconds": fill_seconds, "tick_ms": ticks, "stats_ms": reports,
                               "tick_p50_ms": statistics.median(ticks), "stats_p50_ms": statistics.median(reports),
                               "purge_ms": purges, "purge_p50_ms": statistics.median(purges), "purge_erased": erased,
                               "purge_idle_ms": idle, "purge_idle_p50_ms": statistics.median(idle),
                               "received_this_month": report.summary.received})
                log.warning("upkeep %s %s: tick %.1f ms, /stats %.1f ms, purge %.1f ms (%s erased), idle %.1f ms",
                            backend, size, statistics.median(ticks), statistics.median(reports),
                            statistics.median(purges), erased, statistics.median(idle))
        finally:
            await app.close()
    return {"backend": backend, "levels": levels, "errors": ERRORS.count - errors_before}
