"""indexes for the KPI report

``/stats`` runs in a staff update's write transaction, and three of the
report's reads went through every case, event or rating ever kept
(docs/BENCHMARKS.md, finding 36; 5.5 s at a million cases on SQLite):

* the period's cases: one partial index per time a clock starts at (the
  report unites one read per column);
* the period's transfers, assignments and supervision: ``at``;
* the period's rating invitations: ``invited_at``.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 08:20:00
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: As in storage.models (copied: a migration must not change when the models do).
CLOCK_STARTS = ('routed_at', 'unit_received_at', 'acceptance_notice_at', 'review_requested_at',
                'rereview_requested_at')


def upgrade() -> None:
    with op.batch_alter_table('cases', schema=None) as batch_op:
        for name in CLOCK_STARTS:
            filled = sa.column(name).is_not(None)
            batch_op.create_index(f'ix_cases_{name}', [name], unique=False,
                                  sqlite_where=filled, postgresql_where=filled)

    with op.batch_alter_table('case_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_case_events_at'), ['at'], unique=False)

    with op.batch_alter_table('ratings', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_ratings_invited_at'), ['invited_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('ratings', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_ratings_invited_at'))

    with op.batch_alter_table('case_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_case_events_at'))

    with op.batch_alter_table('cases', schema=None) as batch_op:
        for name in reversed(CLOCK_STARTS):
            batch_op.drop_index(f'ix_cases_{name}')
