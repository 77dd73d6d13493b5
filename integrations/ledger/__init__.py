"""The operation ledger: one durable row per (provider, idempotency key), in SQL through SQLAlchemy 2.

``store.Ledger`` reads and writes it; ``records`` holds the values it hands out; ``models`` the schema.
"""
