"""indexes for the maintenance tick

The tick runs every minute in a write transaction; two of its statements read
rows in proportion to all that was ever kept, and SQLite's write lock waited
for them (docs/BENCHMARKS.md, finding 36):

* sending again the replies not known to be sent looked through every update
  of the last two days: an index of the unsent ones only (partial);
* expiring rating invitations went through every invitation ever expired:
  the index on ``expires_at`` becomes one on ``(status, expires_at)``.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 07:30:16.339090
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Rendered by each dialect as the query renders it (SQLite ``IS 0``, PostgreSQL
# ``IS false``): a partial index is used only for a query whose WHERE names
# the same condition.
_UNSENT = sa.column('delivered', sa.Boolean()).is_(False)


def upgrade() -> None:
    with op.batch_alter_table('processed_updates', schema=None) as batch_op:
        batch_op.create_index('ix_processed_updates_unsent', ['update_id'], unique=False,
                              sqlite_where=_UNSENT, postgresql_where=_UNSENT)

    with op.batch_alter_table('ratings', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_ratings_expires_at'))
        batch_op.create_index('ix_ratings_status_expires_at', ['status', 'expires_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('ratings', schema=None) as batch_op:
        batch_op.drop_index('ix_ratings_status_expires_at')
        batch_op.create_index(batch_op.f('ix_ratings_expires_at'), ['expires_at'], unique=False)

    with op.batch_alter_table('processed_updates', schema=None) as batch_op:
        batch_op.drop_index('ix_processed_updates_unsent')
