"""Add an index of the dead letters, for ``dlq list``.

- ``ix_operations_dead_letters``: ``finished_at`` of the operations that ended failed, dead or partial and
  were not discarded: the few rows ``dlq list`` reads, newest first, among a ledger of mostly successes
  (PostgreSQL reads 1,000 entries of it instead of every dead letter's row, then sorting them).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

DEAD_LETTERS = sa.text("status IN ('failed', 'dead', 'partial') AND discarded_at IS NULL")


def upgrade() -> None:
    op.create_index(
        "ix_operations_dead_letters",
        "operations",
        ["finished_at"],
        postgresql_where=DEAD_LETTERS,
        sqlite_where=DEAD_LETTERS,
    )


def downgrade() -> None:
    op.drop_index("ix_operations_dead_letters", table_name="operations")
