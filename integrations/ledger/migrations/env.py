"""Alembic environment: the URL comes from ``integrations.ledger.schema``, never from an ini file."""

from __future__ import annotations

from alembic import context

from integrations.ledger.engine import create_ledger_engine
from integrations.ledger.models import metadata

url = context.config.attributes["url"]
connectable = context.config.attributes.get("connection")

if connectable is None:
    engine = create_ledger_engine(url)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()
else:
    context.configure(connection=connectable, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
