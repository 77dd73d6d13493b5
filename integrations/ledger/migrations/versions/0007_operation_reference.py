"""Add operations.reference: the provider's id of what a succeeded operation made.

- ``operations.reference``: written by the statement that records the success, from the adapter's reading
  of the answer (a Stripe PaymentIntent's ``pi_…``); how an inbound event that names only that object
  finds the operation that made it.
- an index on (provider, reference) for that lookup.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("operations") as batch:
        batch.add_column(sa.Column("reference", sa.String(255), nullable=True))
    op.create_index("ix_operations_provider_reference", "operations", ["provider", "reference"])


def downgrade() -> None:
    op.drop_index("ix_operations_provider_reference", table_name="operations")
    with op.batch_alter_table("operations") as batch:
        batch.drop_column("reference")
