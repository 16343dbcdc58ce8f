"""New cases and their first rows, written at the commit: one statement per table.

On SQLite the ORM inserts a row whose id the database makes one statement at a
time: it cannot tell which new id belongs to which object in a multi-row
insert there. A new case comes with its events, its first clock and its staff
card, so every filing would cost several round trips. Nothing reads those rows
back before the commit, so they are kept here (new objects, never added to the
session) and written when the transaction commits: the cases in one
multi-row insert that returns each id with the case's tracking number (unique,
so the ids are matched whatever order the database returns them in), then
everything that refers to them, one executemany per table.

What this means for the transaction that files a case: the case and its rows
are not visible to its own queries (an ORM flush does not write them), which
is why only a new case and rows that nothing reads back go through here.

Registered on every ``Session`` (and so every ``AsyncSession``): whoever
commits the transaction writes them, and a rollback forgets them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from itertools import groupby
from typing import Any

from sqlalchemy import Table, event, inspect
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from storage.models import Base, Case

_KEY = "insert_at_commit"


def insert_at_commit(session: AsyncSession | Session, row: Base, case: Case | None = None) -> None:
    """Write ``row`` (a new object, not added to the session) at the commit.
    ``case``: a case the row belongs to, whose id goes into ``case_id`` then
    (itself a new case written here, or one already stored)."""
    sync = session.sync_session if isinstance(session, AsyncSession) else session
    sync.info.setdefault(_KEY, []).append((row, case))


def add(session: AsyncSession | Session, row: Base, case: Case | None = None) -> None:
    """Add a new ``row`` belonging to ``case``: to the session, or, when the case
    was filed in this transaction (no id yet), kept for the commit with it."""
    if case is not None and case.id is None:
        insert_at_commit(session, row, case)
    else:
        session.add(row)


def _values(row: Base, case: Case | None) -> dict[str, Any]:
    """The row's column values as set (unset columns take their defaults)."""
    values = {attr.columns[0].key: row.__dict__[attr.key] for attr in inspect(type(row)).column_attrs
              if attr.key in row.__dict__}
    if case is not None:
        if case.id is None:
            raise RuntimeError("a row refers to a case that was neither stored nor kept for the commit")
        values["case_id"] = case.id
    return values


@event.listens_for(Session, "before_commit")
def _write(session: Session) -> None:
    # Plain INSERTs: in a polling batch (storage.onetrip.WRITES_RIDE_ALONG) all but
    # the cases' (their ids are read back) ride along with the commit's trip on SQLite.
    pending: list[tuple[Base, Case | None]] | None = session.info.pop(_KEY, None)
    if not pending:
        return
    _write_cases(session, [row for row, _ in pending if isinstance(row, Case)])
    by_table: dict[Table, list[dict[str, Any]]] = defaultdict(list)
    for row, case in pending:
        if not isinstance(row, Case):
            by_table[row.__table__].append(_values(row, case))  # type: ignore[index]
    for table, rows in by_table.items():
        for same in _same_columns(table, rows):
            # inline(): no new id is read back (nothing here needs one), so even a
            # single row's INSERT can ride along with the commit's trip.
            session.execute(table.insert().inline(), same)


def _write_cases(session: Session, cases: list[Case]) -> None:
    if not cases:
        return
    table: Table = Case.__table__  # type: ignore[assignment]
    by_number = {case.tracking_number: case for case in cases}
    for same in _same_columns(table, [_values(case, None) for case in cases]):
        result = session.execute(table.insert().returning(table.c.id, table.c.tracking_number), same)
        for row in result.all():
            by_number[str(row.tracking_number)].id = int(row.id)


def _same_columns(table: Table, rows: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """The rows in runs that set the same columns, one statement each (an
    executemany needs the same columns). Rows that left a nullable column
    without a default unset get it as NULL first, so that they share one."""
    optional = {c.key for c in table.columns if c.nullable and c.default is None and c.server_default is None}
    given = set().union(*rows) & optional
    for row in rows:
        for key in given - row.keys():
            row[key] = None
    for _, same in groupby(rows, key=lambda r: sorted(r)):
        yield list(same)


@event.listens_for(Session, "after_soft_rollback")
def _forget(session: Session, previous_transaction: Any) -> None:
    session.info.pop(_KEY, None)
