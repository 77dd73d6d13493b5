"""Finding and fixing operations: attempt history, conflict counts, discarded dead letters, operator actions.

- ``operations.history``: the operation's last attempts (when, how long, outcome, status code, error).
- ``operations.conflicts`` and ``last_conflict_at``: messages refused for reusing the key, and the last one.
- ``operations.discarded_at``, ``discarded_by``, ``discard_reason``: a dead letter settled by an operator.
- indexes for ``ops list`` (created_at), ``ops show`` by task id, and ``ops conflicts``.
- the ``operator_actions`` table: who changed what (limits, breakers, replays, discards), when and why.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

JSONDocument = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("operations") as batch:
        batch.add_column(sa.Column("history", JSONDocument, nullable=True))
        batch.add_column(sa.Column("conflicts", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("last_conflict_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("discarded_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("discarded_by", sa.String(255), nullable=True))
        batch.add_column(sa.Column("discard_reason", sa.Text(), nullable=True))
    op.create_index("ix_operations_created_at", "operations", ["created_at"])
    op.create_index("ix_operations_task_id", "operations", ["task_id"])
    op.create_index("ix_operations_last_conflict_at", "operations", ["last_conflict_at"])
    op.create_table(
        "operator_actions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("target", sa.String(255), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("details", JSONDocument, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_operator_actions"),
    )
    op.create_index("ix_operator_actions_at", "operator_actions", ["at"])
    op.create_index("ix_operator_actions_action_at", "operator_actions", ["action", "at"])


def downgrade() -> None:
    op.drop_index("ix_operator_actions_action_at", table_name="operator_actions")
    op.drop_index("ix_operator_actions_at", table_name="operator_actions")
    op.drop_table("operator_actions")
    op.drop_index("ix_operations_last_conflict_at", table_name="operations")
    op.drop_index("ix_operations_task_id", table_name="operations")
    op.drop_index("ix_operations_created_at", table_name="operations")
    with op.batch_alter_table("operations") as batch:
        batch.drop_column("discard_reason")
        batch.drop_column("discarded_by")
        batch.drop_column("discarded_at")
        batch.drop_column("last_conflict_at")
        batch.drop_column("conflicts")
        batch.drop_column("history")
