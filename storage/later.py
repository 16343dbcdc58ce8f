"""New cases and their first rows, written at the commit: one statement per table.

On SQLite the ORM inserts a row whose id the database makes one statement at a
time: it cannot tell which new id belongs to which object in a multi-row
insert there. A new case comes with its events, its first clock and its staff
card, so every filing would cost several round trips. Nothing reads those rows
back before the commit, so they are kept here (new objects, never added to the
session) and written when the transaction commits: the cases first, then
everything that refers to them, one executemany per table (per set of
columns the rows give). A row
of a new case finds its case's id in the same statement, by the case's
tracking number (unique), so no id is read back and, in a polling batch on
SQLite, none of these statements is a trip of its own: they all ride along
with the commit's (``storage.onetrip``). The new ``Case`` objects keep no id.

What this means for the transaction that files a case: the case and its rows
are not visible to its own queries (an ORM flush does not write them), which
is why only a new case and rows that nothing reads back go through here.

Registered on every ``Session`` (and so every ``AsyncSession``): whoever
commits the transaction writes them, and a rollback forgets them.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Iterator
from itertools import groupby
from typing import Any

from sqlalchemy import Table, bindparam, event, func, inspect, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from storage.models import Base, Case

_KEY = "insert_at_commit"
#: The bind parameter naming a new case, by its tracking number, in a row that refers to it.
_CASE_NUMBER = "new_case_tracking_number"


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


@functools.cache
def _columns(cls: type[Base]) -> tuple[tuple[str, str], ...]:
    """(attribute, column) names of a mapped class, in the mapper's order."""
    return tuple((attr.key, attr.columns[0].key) for attr in inspect(cls).column_attrs)


def _values(row: Base, case: Case | None, new: set[int]) -> dict[str, Any]:
    """The row's column values as set (unset columns take their defaults);
    a case written here (its ``id()`` in ``new``) is named by its tracking number."""
    state = row.__dict__
    values = {column: state[attr] for attr, column in _columns(type(row)) if attr in state}
    if case is not None:
        if id(case) in new:
            values[_CASE_NUMBER] = case.tracking_number
            values.pop("case_id", None)
        elif case.id is None:
            raise RuntimeError("a row refers to a case that was neither stored nor kept for the commit")
        else:
            values["case_id"] = case.id
    return values


@functools.cache
def _insert(table: Table, of_new_case: bool) -> Any:
    """A plain INSERT into ``table`` that reads nothing back (``inline()``), so
    that even a single row's can ride along with the commit's trip. For rows of
    a case written in this transaction, the case's id is found by its tracking
    number; a case not found gives id -1, which the foreign key refuses, so
    such a row fails the commit instead of being kept without its case (the
    outbox's ``case_id`` may be NULL). Built once per table and kind."""
    insert = table.insert().inline()
    if not of_new_case:
        return insert
    cases: Table = Case.__table__  # type: ignore[assignment]
    found = select(cases.c.id).where(cases.c.tracking_number == bindparam(_CASE_NUMBER)).scalar_subquery()
    return insert.values(case_id=func.coalesce(found, -1))


@event.listens_for(Session, "before_commit")
def _write(session: Session) -> None:
    # Plain INSERTs: in a polling batch (storage.onetrip.WRITES_RIDE_ALONG) they
    # ride along with the commit's trip on SQLite, the cases' first.
    pending: list[tuple[Base, Case | None]] | None = session.info.pop(_KEY, None)
    if not pending:
        return
    cases = [row for row, _ in pending if isinstance(row, Case)]
    new = {id(case) for case in cases}
    by_table: dict[tuple[Table, bool], list[dict[str, Any]]] = defaultdict(list)
    if cases:
        by_table[Case.__table__, False] = [_values(case, None, new) for case in cases]  # type: ignore[index]
    for row, case in pending:
        if not isinstance(row, Case):
            by_table[row.__table__, case is not None and id(case) in new].append(  # type: ignore[index]
                _values(row, case, new))
    for (table, of_new_case), rows in by_table.items():
        for same in _same_columns(table, rows):
            session.execute(_insert(table, of_new_case), same)


@functools.cache
def _optional(table: Table) -> frozenset[str]:
    """Nullable columns without a default: unset, they are NULL."""
    return frozenset(c.key for c in table.columns if c.nullable and c.default is None and c.server_default is None)


def _same_columns(table: Table, rows: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """The rows in runs that set the same columns, one statement each (an
    executemany needs the same columns). Rows that left a nullable column
    without a default unset get it as NULL first, so that they share one."""
    if len(rows) == 1:
        yield rows
        return
    given = set().union(*rows) & _optional(table)
    for row in rows:
        for key in given - row.keys():
            row[key] = None
    for _, same in groupby(rows, key=lambda r: sorted(r)):
        yield list(same)


@event.listens_for(Session, "after_soft_rollback")
def _forget(session: Session, previous_transaction: Any) -> None:
    session.info.pop(_KEY, None)
