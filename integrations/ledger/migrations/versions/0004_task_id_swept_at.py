"""Add operations.task_id and operations.swept_at, for the sweeper that finishes what the broker dropped.

``task_id``: the id of the message that first brought the operation (its ``AsyncResult`` id), which a
message sent again by the sweeper keeps. ``swept_at``: when the sweeper last sent it again.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("operations") as batch:
        batch.add_column(sa.Column("task_id", sa.String(255), nullable=True))
        batch.add_column(sa.Column("swept_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("operations") as batch:
        batch.drop_column("swept_at")
        batch.drop_column("task_id")
