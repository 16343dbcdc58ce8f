"""The maintenance tick runs every minute in a write transaction, so what it
reads delays every citizen's commit on SQLite while it runs. Each of its
statements must find its rows through an index, never by reading a table
whole: such a read grows with every case, rating and update ever kept
(docs/BENCHMARKS.md, finding 36: 210 ms a minute at a million cases).

The statements are the ones the tick really runs, caught as they go to the
driver, then explained by the database with the same parameters."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import App

#: Partial indexes: reading one through is reading only the rows it was made for.
PARTIAL = {"ix_processed_updates_unsent"}


@contextmanager
def statements_of(engine: AsyncEngine) -> Iterator[list[tuple[str, Any]]]:
    seen: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if re.match(r"\s*(SELECT|UPDATE|DELETE|INSERT)\b", statement, re.IGNORECASE):
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


def whole_reads(steps: list[str]) -> list[str]:
    """SQLite: "SCAN t" reads the table, "SCAN t USING [COVERING] INDEX i" all of
    an index (a partial one holds only the rows sought); PostgreSQL: "Seq Scan"."""
    return [step for step in steps if (step.startswith("SCAN ") and not step.endswith(tuple(PARTIAL)))
            or "Seq Scan" in step]


async def test_the_maintenance_tick_reads_no_table_whole(app: App, db: AsyncEngine) -> None:
    await app.sim.citizen().send("/start")  # an update recorded: the tick has rows to pass over
    with statements_of(db) as seen:
        await app.maintenance.tick()
    statements = {statement: parameters for statement, parameters in seen}
    unsent = [s for s in statements if s.startswith("SELECT") and "FROM processed_updates" in s]
    expiring = [s for s in statements if s.startswith("UPDATE ratings")]
    assert unsent and expiring  # sending again was looked for, and rating invitations expired
    for statement, parameters in statements.items():
        assert whole_reads(await plan(db, statement, parameters)) == [], statement
    # Expired invitations are sought among the open ones, not among all that
    # ever expired (a range over expires_at alone reads every one of those).
    steps = await plan(db, expiring[0], statements[expiring[0]])
    assert any(re.search(r"\(status=\?|Index Cond: .*status", step) for step in steps), steps
