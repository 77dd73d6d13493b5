"""Alembic environment: the URL comes from ``integrations.ledger.schema``, never from an ini file.

Migrations run under ``schema.upgrade_lock``, so upgraders started together run one after another.
"""

from __future__ import annotations

from alembic import context

from integrations.ledger import schema
from integrations.ledger.models import metadata

engine = schema.migration_engine(context.config.attributes["url"])
try:
    # The lock comes first, so Alembic reads the current revision under it; on SQLite, configure then
    # finds the lock's transaction open and leaves transactions to it.
    with engine.connect() as connection, schema.upgrade_lock(connection):
        context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
        # On SQLite this begins nothing (the transaction is the lock's, and commits when it is released);
        # on PostgreSQL it is Alembic's usual transaction, inside the advisory lock.
        with context.begin_transaction():
            context.run_migrations()
finally:
    engine.dispose()
