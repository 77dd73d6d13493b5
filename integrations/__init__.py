"""integrations: an outbound integration job queue.

Application code enqueues logical operations with Celery's ``send_task``; workers run them through
provider adapters with idempotency, retries and a durable ledger. This package is the core and knows
nothing of Celery: ``tasks/`` is the only place where Celery meets it.
"""

__version__ = "0.1.0"
