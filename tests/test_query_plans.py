"""What runs in a write transaction delays every citizen's commit on SQLite
while it runs: the maintenance tick, every minute, and a staff member's
/stats. Their statements must find their rows through an index, never by
reading a table whole or everything before a time: such a read grows with
every case, rating and update ever kept (docs/BENCHMARKS.md, finding 36: the
tick took 210 ms a minute at a million cases, /stats 5.5 s).

The statements are the ones really run, caught as they go to the driver, then
explained by the database with the same parameters."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, timedelta
from typing import Any

import pytest
from sqlalchemy import event, insert
from sqlalchemy.ext.asyncio import AsyncEngine

from dialogs.bureau import BureauConfig
from handoff.kpi import compute
from storage.db import ANALYSIS_LIMIT
from storage.models import ProcessedUpdate
from tests.conftest import STAFF_CHAT, App
from tests.flows import file_petition
from tests.test_handoff_e2e import _case, _press
from tests.test_kpi import HUMEN, at
from tests.test_privacy import _withdrawn_after_words
from tests.test_report_cli import ADMIN, march

#: Partial indexes: reading one through (or all of it before a time) is reading
#: only the rows it was made for, which leave it once dealt with: the updates
#: whose replies are unsent, the ended cases not yet erased.
PARTIAL = {"ix_processed_updates_unsent", "ix_cases_ended_at"}
#: Tables that stay small whatever the traffic: other channels' petition counts,
#: entered by an admin, a few rows a month.
SMALL = ("FROM channel_counts",)


@contextmanager
def statements_of(engine: AsyncEngine) -> Iterator[list[tuple[str, Any]]]:
    seen: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if re.match(r"\s*(SELECT|UPDATE|DELETE)\b", statement, re.IGNORECASE):  # an INSERT adds, it reads nothing
            seen.append((statement, parameters[0] if executemany else parameters))

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)


async def plan(engine: AsyncEngine, statement: str, parameters: Any) -> list[str]:
    """The database's plan for the statement, a line per step."""
    async with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            return [row[3] for row in await conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)]
        # The tables are nearly empty here: forbid the sequential scan, and
        # PostgreSQL keeps it only where no index can serve.
        await conn.exec_driver_sql("SET enable_seqscan = off")
        return [row[0].strip() for row in await conn.exec_driver_sql(f"EXPLAIN {statement}", parameters)]


def reads_too_much(steps: list[str]) -> list[str]:
    """The steps that read a table whole, or all of it before some time.

    SQLite: "SCAN t" reads the table, "SCAN t USING [COVERING] INDEX i" all of
    an index (a partial one holds only the rows sought), "SEARCH … (at<?)" all
    rows older than a time. PostgreSQL: "Seq Scan", an index scan without an
    index condition (all of the index), or with only an upper bound."""
    found = [step for n, step in enumerate(steps)
             if (step.startswith("SCAN ") and not step.endswith(tuple(PARTIAL))
                and not step.startswith("SCAN anon_"))  # a subquery's own rows
             or (re.search(r"^SEARCH .*\(\w+<\?\)$", step) and not _of_partial(step))
             or "Seq Scan" in step
             or (re.match(r"Index Cond: \([\w.]+ <=? [^()]*\)$", step)
                 and not _of_partial(next((s for s in reversed(steps[:n]) if " using " in s or " on " in s), "")))]
    for n, step in enumerate(steps):
        scan = re.search(r"Index (Only )?Scan (Backward )?using (\w+)|Bitmap Index Scan on (\w+)", step)
        if scan and (scan[3] or scan[4]) not in PARTIAL:
            details = itertools.takewhile(lambda line: "->" not in line, steps[n + 1:])
            if not any(line.startswith("Index Cond:") for line in details):
                found.append(step)
    return found


def _of_partial(step: str) -> bool:
    """Whether a plan's step reads one of the :data:`PARTIAL` indexes."""
    return re.search(r"\b(INDEX|using|on) (\w+)", step) is not None and any(
        re.search(rf"\b(INDEX|using|on) {name}\b", step) for name in PARTIAL)


async def assert_reads_are_bounded(db: AsyncEngine, statements: dict[str, Any]) -> None:
    """Each statement planned as for a big bureau's tables: SQLite without
    statistics assumes a million rows a table (the tables here hold a few, and
    their statistics would make reading them whole the cheapest);
    PostgreSQL with the sequential scan forbidden (see :func:`plan`)."""
    if db.dialect.name == "sqlite":
        async with db.begin() as conn:
            if (await conn.exec_driver_sql("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_stat1'")).first():
                await conn.exec_driver_sql("DELETE FROM sqlite_stat1")
                await conn.exec_driver_sql("ANALYZE sqlite_master")  # forget those loaded
    for statement, parameters in statements.items():
        # What a DELETE reads, it removes.
        if not statement.startswith("DELETE") and not any(table in statement for table in SMALL):
            assert reads_too_much(await plan(db, statement, parameters)) == [], statement


async def a_day_of_updates(app: App, db: AsyncEngine) -> None:
    """A day of update ids whose replies went out: the rows the tick must pass
    over (with statistics, so that PostgreSQL does not plan for an empty table)."""
    day = app.clock.now - timedelta(days=1)
    async with db.begin() as conn:
        await conn.execute(insert(ProcessedUpdate), [
            {"update_id": 10**9 + n, "processed_at": day + timedelta(seconds=20 * n), "replies": None,
             "delivered": True} for n in range(4000)])
        await conn.exec_driver_sql("ANALYZE processed_updates")


async def test_the_maintenance_tick_reads_no_table_whole(app: App, db: AsyncEngine) -> None:
    await a_day_of_updates(app, db)
    await app.sim.citizen().send("/start")
    app.maintenance.retention_days = 365
    with statements_of(db) as seen:
        await app.maintenance.tick()
    statements = dict(seen)
    assert any(s.startswith("SELECT") and "FROM processed_updates" in s for s in statements)  # sending again
    assert any(s.startswith("UPDATE ratings") for s in statements)  # expiring rating invitations
    assert any(s.startswith("SELECT") and "ended_at <" in s for s in statements)  # the retention purge
    assert any(s.startswith("DELETE FROM lookup_failures") for s in statements)  # failed lookups' ended windows
    assert any(s.startswith("DELETE FROM outbox") for s in statements)  # messages done with a month ago
    await assert_reads_are_bounded(db, statements)


async def test_the_retention_purge_reads_only_the_cases_it_erases(app: App, db: AsyncEngine) -> None:
    await _withdrawn_after_words(app)
    app.clock.advance(days=400)
    await a_day_of_updates(app, db)
    app.maintenance.retention_days = 365
    with statements_of(db) as seen:
        await app.maintenance.tick()
    statements = dict(seen)
    for table in ("cases", "case_events", "ratings", "outbox"):
        assert any(s.startswith(f"UPDATE {table} ") for s in statements), table
    await assert_reads_are_bounded(db, statements)


def outside_the_period(steps: list[str]) -> list[str]:
    """The steps of a period's read on the growing tables that do not find rows
    by a case (its id) or by a time bounded on both sides: a read by status,
    unit or action alone goes through every case, event or rating of that
    kind ever kept."""
    by_case = r"\b(rowid|id|case_id)=\?|INTEGER PRIMARY KEY|\(([\w.]+\.)?(id|case_id) = "
    bounded = r"\w+>\? AND \w+<\?|\(.* >= .*\) AND \(.* < .*\)"
    found = []
    for n, step in enumerate(steps):
        if re.match(r"SEARCH (cases|case_events|ratings) ", step):  # SQLite: the condition is on the line
            condition = step
        elif re.search(r"Index (Only )?Scan (Backward )?using \w+ on (cases|case_events|ratings)\b"
                       r"|Bitmap Index Scan on ix_(cases|case_events|ratings)_", step):
            details = itertools.takewhile(lambda line: "->" not in line, steps[n + 1:])
            condition = next((line for line in details if line.startswith("Index Cond:")), "")
        else:
            continue
        if not re.search(by_case, condition) and not re.search(bounded, condition):
            found.append(step)
    return found


async def test_stats_reads_only_its_period(app: App, db: AsyncEngine, bureau: BureauConfig) -> None:
    await march(app.sessionmaker)  # cases routed, accepted and rated in March
    app.clock.now = at("2026-03-31", 20)
    with statements_of(db) as seen:
        [answer] = await app.sim.staff(ADMIN, STAFF_CHAT).send("/stats 2026-03")
        async with app.sessionmaker() as session:  # one unit's, as `petition-bot report --unit` asks
            report = await compute(session, bureau, start=date(2026, 3, 1), end=date(2026, 3, 31),
                                   now=app.clock.now, unit=HUMEN)
    assert "及时受理率" in answer and report.units
    statements = dict(seen)
    for table in ("FROM cases", "FROM case_events", "FROM ratings"):
        assert any(s.startswith("SELECT") and table in s for s in statements), table
    await assert_reads_are_bounded(db, statements)
    for statement, parameters in statements.items():
        if "channel_counts" not in statement:
            assert outside_the_period(await plan(db, statement, parameters)) == [], statement


async def test_sqlite_planner_statistics_are_sampled_and_refreshed_hourly(app: App, db: AsyncEngine) -> None:
    """ANALYZE of a big table read every row of it under the write lock (1.7 s
    for the cases at a million), and SQLite's PRAGMA optimize analyzes a table
    again at every call while one of its partial indexes matches no row."""
    if db.dialect.name != "sqlite":
        pytest.skip("PostgreSQL's autovacuum keeps its statistics")
    async with db.connect() as conn:
        assert (await conn.exec_driver_sql("PRAGMA analysis_limit")).scalar() == ANALYSIS_LIMIT
    optimized: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "optimize" in statement:
            optimized.append(statement)

    event.listen(db.sync_engine, "before_cursor_execute", record)
    try:
        await app.maintenance.tick()
        app.clock.now += timedelta(minutes=59)
        await app.maintenance.tick()
        assert len(optimized) == 1
        app.clock.now += timedelta(minutes=1)
        await app.maintenance.tick()
        assert len(optimized) == 2
    finally:
        event.remove(db.sync_engine, "before_cursor_execute", record)


async def test_a_case_from_filing_to_decision_reads_no_table_whole(app: App, db: AsyncEngine) -> None:
    """Every statement of a case's life, the citizen's and the staff's, on the
    tables that grow with the bureau's history."""
    await a_day_of_updates(app, db)
    citizen = app.sim.citizen()
    staff = app.sim.staff(ADMIN, STAFF_CHAT)
    with statements_of(db) as seen:
        number, code = await file_petition(citizen)
        await app.deliver()
        for action, arg, text in (("claim", "", None), ("register", "", None), ("transfer", "u=441900121", None),
                                  ("receive", "", None), ("accept", "", None), ("start_handling", "", None),
                                  ("extend", "d=15", "需要调取工资流水"),
                                  ("decide", "o=support", "责令公司支付拖欠工资")):
            mark = len(seen)
            case = await _case(app)  # the test's own read (of every case: there is one)
            del seen[mark:]
            await _press(app, ADMIN, case, action, arg)
            if text is not None:
                await staff.send(text)
            await app.deliver()
        assert number in (await citizen.send(f"/status {number} {code}"))[-1]
        await citizen.send("还有一份材料")  # a follow-up message, relayed under the card
        for command in ("/queue", "/mine", f"/case {number}"):
            await staff.send(command)
        await app.deliver()
        await app.maintenance.tick()
    await assert_reads_are_bounded(db, dict(seen))
