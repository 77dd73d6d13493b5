"""Fewer index writes per operation: index only the rows that have a value, and drop an index no query needs.

- ``ix_operations_last_conflict_at``: only operations that had a conflict (``ops conflicts`` reads it);
- ``ix_operations_provider_reference``: only operations whose answer named what they made (an inbound
  event's operation is found by it);
- ``ix_operations_provider_status`` goes: the queries by status read ``ix_operations_status_finished_at``
  and filter the provider there.

Most operations have no conflict and no reference. An index of every row takes a write at every operation's
start and, on PostgreSQL, at every change of its status (which writes a new version of the row into every
index of the table); a partial one, only for the rows it holds.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

# name: (columns, the rows indexed)
PARTIAL = {
    "ix_operations_last_conflict_at": (["last_conflict_at"], "last_conflict_at IS NOT NULL"),
    "ix_operations_provider_reference": (["provider", "reference"], "reference IS NOT NULL"),
}


# name, columns
DROPPED = ("ix_operations_provider_status", ["provider", "status"])


def upgrade() -> None:
    for name, (columns, rows) in PARTIAL.items():
        op.drop_index(name, table_name="operations")
        where = sa.text(rows)
        op.create_index(name, "operations", columns, postgresql_where=where, sqlite_where=where)
    op.drop_index(DROPPED[0], table_name="operations")


def downgrade() -> None:
    for name, (columns, _rows) in PARTIAL.items():
        op.drop_index(name, table_name="operations")
        op.create_index(name, "operations", columns)
    op.create_index(DROPPED[0], "operations", DROPPED[1])
