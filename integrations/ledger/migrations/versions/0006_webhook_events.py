"""Inbound webhook events: one row per (provider, the provider's event id), kept for a retention.

- ``webhook_events``: who sent it (``provider``, ``event_id``, ``type``), when it came (``received_at``), its
  body as the bytes received (signatures are over those bytes, so they can be checked again), how handling
  went (``status``, ``attempts``, ``error``, ``handled_at``), and the operation it confirms or contradicts
  (``operation_id``, ``relation``).
- indexes for ``events list`` (received_at, and by provider), ``events`` of an operation, and the unique
  (provider, event_id) that deduplicates deliveries.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

JSONDocument = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "webhook_events",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("event_id", sa.String(255), nullable=False),
        sa.Column("type", sa.String(255), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("error", JSONDocument, nullable=True),
        sa.Column("handled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("operation_id", sa.String(36), nullable=True),
        sa.Column("relation", sa.String(16), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_webhook_events"),
        sa.UniqueConstraint("provider", "event_id", name="uq_webhook_events_provider_event_id"),
    )
    op.create_index("ix_webhook_events_received_at", "webhook_events", ["received_at"])
    op.create_index("ix_webhook_events_provider_received_at", "webhook_events", ["provider", "received_at"])
    op.create_index("ix_webhook_events_operation_id", "webhook_events", ["operation_id"])


def downgrade() -> None:
    op.drop_index("ix_webhook_events_operation_id", table_name="webhook_events")
    op.drop_index("ix_webhook_events_provider_received_at", table_name="webhook_events")
    op.drop_index("ix_webhook_events_received_at", table_name="webhook_events")
    op.drop_table("webhook_events")
