"""The workers' result backend: Celery's Redis one, storing a task's result in one round trip.

Celery's ``BaseKeyValueStoreBackend`` reads the stored state before it writes a result (so that a success
is never overwritten) and then writes it in a transaction with its publication: two round trips, which
cost a worker's pool process about 0.6 ms of CPU per task here against 0.3 ms for one script call
(``tasks/lua/store_result.lua``) that does the same. Everything else (the key, the encoding, the expiry,
the retries while Redis is away, how results are read and waited for) is Celery's, so an application's
plain Celery app reads these results as any other.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

from celery import Celery
from celery.backends.redis import RedisBackend
from celery.exceptions import BackendStoreError
from kombu.utils.encoding import bytes_to_str

from integrations.resilience.scripts import Script, source

# The URL schemes this backend serves in place of Celery's (``sentinel://`` keeps Celery's own).
SCHEMES = ("redis", "rediss")


class ResultBackend(RedisBackend):  # type: ignore[misc]
    """Celery's ``RedisBackend`` with ``_store_result`` in one script call."""

    @cached_property
    def _store_script(self) -> Script:
        return Script(self.client, source("store_result", "tasks"))

    def _store_result(
        self,
        task_id: str | bytes,
        result: Any,
        state: str,
        traceback: str | None = None,
        request: Any = None,
        **kwargs: Any,
    ) -> Any:
        meta = self._get_result_meta(result=result, state=state, traceback=traceback, request=request)
        meta["task_id"] = bytes_to_str(task_id)
        value = self.encode(meta)
        if isinstance(value, str) and len(value) > self._MAX_STR_VALUE_SIZE:
            raise BackendStoreError("value too large for Redis backend", state=state, task_id=task_id)
        # Retried as Celery retries its own writes while Redis cannot be reached.
        self.ensure(self._store, (self.get_key_for_task(task_id), value))
        return result

    def _store(self, key: str | bytes, value: str | bytes) -> None:
        self._store_script(keys=[key], args=[value, self.expires or ""])


def use_result_backend(app: Celery) -> None:
    """Make ``app``'s ``redis://`` and ``rediss://`` result backend this one; its settings stay as they are
    (``result_backend`` names the Redis, whichever class serves it)."""
    name = f"{__name__}:{ResultBackend.__name__}"
    app.loader.override_backends = {**app.loader.override_backends, **dict.fromkeys(SCHEMES, name)}
