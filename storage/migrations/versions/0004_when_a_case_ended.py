"""when a case ended, for the retention purge

The purge found the ended cases by grouping every event ever kept by case
(454 ms at a million cases on SQLite, under the write lock), so it ran once a
day, and erased at most one batch a day: a backlog never caught up
(docs/BENCHMARKS.md, finding 39). A case now keeps when it ended, and a
partial index holds the ended cases not yet erased, so the purge reads only
those.

Existing ended cases get the time of their last event, the latest moment
the old purge counted from (nothing is erased sooner than before).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 15:05:00
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: As in state_machine.case (copied: a migration must not change when the code does).
TERMINAL = ('closed', 'duplicate', 'final', 'not_reaccepted', 'withdrawn')
_NOT_ERASED = sa.and_(sa.column('anonymised_at').is_(None), sa.column('ended_at').is_not(None))


# Plain operations, not Alembic's batch mode: see downgrade().
def upgrade() -> None:
    op.add_column('cases', sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True))

    cases = sa.table('cases', sa.column('id'), sa.column('status'), sa.column('anonymised_at'),
                     sa.column('ended_at'))
    events = sa.table('case_events', sa.column('case_id'), sa.column('at'))
    last_event = (sa.select(sa.func.max(events.c.at)).where(events.c.case_id == cases.c.id)
                  .scalar_subquery())
    op.execute(cases.update().where(cases.c.status.in_(TERMINAL), cases.c.anonymised_at.is_(None))
               .values(ended_at=last_event))

    op.create_index('ix_cases_ended_at', 'cases', ['ended_at'], unique=False,
                    sqlite_where=_NOT_ERASED, postgresql_where=_NOT_ERASED)


def downgrade() -> None:
    # Not in batch mode: on SQLite that copies the table to a new one and drops
    # the old, and dropping it deletes every row that cascades from a case
    # (timeline, clocks, attachments). SQLite drops a column in place since 3.35.
    op.drop_index('ix_cases_ended_at', table_name='cases')
    op.drop_column('cases', 'ended_at')
