"""Rows written at the commit, one statement per table.

On SQLite the ORM inserts a row whose id the database makes one statement at a
time: it cannot tell which new id belongs to which object in a multi-row
insert there. A new case comes with its events, its first clock and its staff
messages, so every filing would cost a round trip per row. Nothing reads those
rows back before the commit, so they are kept here (transient objects, never
added to the session) and written when the transaction commits: first the flush
that gives their case its id, then one executemany per table.

Registered on every ``Session`` (and so every ``AsyncSession``): whoever
commits the transaction writes them, and a rollback forgets them.
"""

from __future__ import annotations

from collections import defaultdict
from itertools import groupby
from typing import Any

from sqlalchemy import Table, event, inspect
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from storage.models import Base, Case

_KEY = "insert_at_commit"


def insert_at_commit(session: AsyncSession | Session, row: Base, case: Case) -> None:
    """Write ``row`` (a new object, not added to the session) at the commit,
    with ``case_id`` set to ``case``'s id by then."""
    sync = session.sync_session if isinstance(session, AsyncSession) else session
    sync.info.setdefault(_KEY, []).append((row, case))


def _values(row: Base, case: Case) -> dict[str, Any]:
    """The row's column values as set (unset columns take their defaults)."""
    values = {attr.columns[0].key: row.__dict__[attr.key] for attr in inspect(type(row)).column_attrs
              if attr.key in row.__dict__}
    values["case_id"] = case.id
    return values


@event.listens_for(Session, "before_commit")
def _write(session: Session) -> None:
    pending: list[tuple[Base, Case]] | None = session.info.pop(_KEY, None)
    if not pending:
        return
    session.flush()  # the cases get their ids
    by_table: dict[Table, list[dict[str, Any]]] = defaultdict(list)
    for row, case in pending:
        by_table[row.__table__].append(_values(row, case))  # type: ignore[index]
    for table, rows in by_table.items():
        _fill_nulls(table, rows)
        for _, same in groupby(rows, key=lambda r: sorted(r)):
            session.execute(table.insert(), list(same))


def _fill_nulls(table: Table, rows: list[dict[str, Any]]) -> None:
    """Rows that left a nullable column without a default unset get it as NULL,
    so that they share one statement (an executemany needs the same columns)."""
    optional = {c.key for c in table.columns if c.nullable and c.default is None and c.server_default is None}
    given = set().union(*rows) & optional
    for row in rows:
        for key in given - row.keys():
            row[key] = None


@event.listens_for(Session, "after_soft_rollback")
def _forget(session: Session, previous_transaction: Any) -> None:
    session.info.pop(_KEY, None)
