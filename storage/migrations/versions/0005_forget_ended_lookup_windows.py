"""forget failed status lookups once their window ends

Failed lookups were counted per account and per tracking number and never
forgotten: every account that once mistyped a number or a code stayed in
``lookup_failures`` for good. The maintenance tick now deletes the windows
that ended, through this index.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28 17:05:00
"""
from __future__ import annotations

from collections.abc import Sequence

from alembic import op


revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index('ix_lookup_failures_window_start', 'lookup_failures', ['window_start'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_lookup_failures_window_start', table_name='lookup_failures')
