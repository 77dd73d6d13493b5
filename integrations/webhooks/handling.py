"""Handling a stored webhook event: its handlers run, it is linked to the operation it is about, and the
ledger records how it ended.

A handler is a callable ``(Event) -> None``: it returns when the event is dealt with, raises to have it
tried again (with the provider's ``[providers.<p>.retry]`` backoff, attempts counted in the event's row,
then ``dead``), or raises ``PermanentHandlerError`` when another try would not help (``failed``).

Handlers are registered per (provider, event type), ``"*"`` matching any, by application packages in two
ways, each naming a callable that takes no argument and returns the table::

    # pyproject.toml of the application package
    [project.entry-points."integrations.event_handlers"]
    shop = "shop.webhooks:handlers"

    # or, without packaging: INTEGRATIONS_EVENT_HANDLERS=shop.webhooks:handlers[,other.module:handlers]

    def handlers() -> dict[tuple[str, str], Handler | list[Handler]]:
        return {("stripe", "payment_intent.succeeded"): mark_order_paid, ("*", "*"): audit_event}

Every matching handler runs, the most specific first: ``(provider, type)``, ``(provider, "*")``,
``("*", type)``, ``("*", "*")``. A failure of one fails the pass, and the next pass runs them all again:
like the provider's own deliveries, handling is at least once, so a handler must tolerate an event twice.

Adapters register theirs too: ``Adapter.event_handlers()`` (by event type, run first), and for linking
they need no handler: the adapter's ``event_link(event)`` names the operation an event confirms or
contradicts (by its idempotency key, or by the ``reference`` of what it made), and the event is recorded
against that operation. An event with neither a handler nor a link ends ``unhandled``.
"""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from importlib.metadata import entry_points
from typing import Any, cast

from integrations.errors import ConfigError, ErrorInfo, ErrorType, retries_exhausted
from integrations.ledger.store import Ledger
from integrations.resilience.retry import RetryPolicy
from integrations.webhooks.events import Event, EventLink
from integrations.webhooks.store import EventRecord, EventStatus, EventStore, Relation

log = logging.getLogger("integrations.webhooks")

Handler = Callable[[Event], None]
Linker = Callable[[Event], EventLink | None]

# The task that handles a provider's events: integrations.<provider>.handle_event, on its queue.
HANDLE_EVENT = "handle_event"
ENTRY_POINT_GROUP = "integrations.event_handlers"
SETTING = "INTEGRATIONS_EVENT_HANDLERS"
ANY = "*"
# Events looked at in one sweep; the next sweep takes the rest.
SWEEP_LIMIT = 1000


class PermanentHandlerError(Exception):
    """Raised by a handler that refuses an event for good: it ends ``failed``, never tried again."""


# -- registration --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Handlers:
    """The registered handlers, by (provider or ``*``, event type or ``*``)."""

    table: Mapping[tuple[str, str], Sequence[Handler]] = field(default_factory=dict)

    def matching(self, provider: str, event_type: str) -> list[Handler]:
        """The handlers of an event, the most specific first."""
        keys = ((provider, event_type), (provider, ANY), (ANY, event_type), (ANY, ANY))
        return [handler for key in dict.fromkeys(keys) for handler in self.table.get(key, ())]

    def __len__(self) -> int:
        return sum(len(handlers) for handlers in self.table.values())

    @classmethod
    def load(cls, references: Iterable[str] = ()) -> Handlers:
        """The handlers of the installed packages' ``integrations.event_handlers`` entry points and of
        ``references`` (``module:callable``, as ``INTEGRATIONS_EVENT_HANDLERS`` lists them). A
        ``ConfigError`` names the entry point or reference that cannot be loaded or returns a bad table."""
        table: dict[tuple[str, str], list[Handler]] = {}
        sources: list[tuple[str, Any]] = []
        for point in entry_points(group=ENTRY_POINT_GROUP):
            where = f"entry point {point.name!r} ({point.value}) of group {ENTRY_POINT_GROUP!r}"
            sources.append((where, _loaded(where, point.load)))
        for reference in references:
            where = f"{SETTING} entry {reference!r}"
            sources.append((where, _imported(where, reference)))
        for where, made in sources:
            if not callable(made):
                raise ConfigError(f"{where}: names {type(made).__name__}, not a callable returning handlers")
            try:
                found = made()
            except Exception as exc:
                raise ConfigError(f"{where}: calling it raised {type(exc).__name__}: {exc}") from exc
            for key, handlers in _checked_table(where, found).items():
                table.setdefault(key, []).extend(handlers)
        return cls({key: tuple(handlers) for key, handlers in table.items()})


def references(setting: str | None) -> list[str]:
    """The ``module:callable`` references of ``INTEGRATIONS_EVENT_HANDLERS`` (comma-separated)."""
    return [part.strip() for part in (setting or "").split(",") if part.strip()]


def _loaded(where: str, load: Callable[[], Any]) -> Any:
    try:
        return load()
    except Exception as exc:
        raise ConfigError(
            f"{where} cannot be loaded: {type(exc).__name__}: {exc}; install the package that declares "
            "it, or fix the reference"
        ) from exc


def _imported(where: str, reference: str) -> Any:
    module, _, name = reference.partition(":")
    if not module or not name:
        raise ConfigError(f"{where}: write it as module:callable, e.g. shop.webhooks:handlers")
    try:
        found: Any = importlib.import_module(module)
        for part in name.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"{where} cannot be loaded: {type(exc).__name__}: {exc}; is the module on the Python path?"
        ) from exc
    return found


def _checked_table(where: str, found: Any) -> dict[tuple[str, str], list[Handler]]:
    if not isinstance(found, Mapping):
        raise ConfigError(
            f"{where}: returned {type(found).__name__}; return a mapping of (provider or '*', event type "
            "or '*') to a handler or a list of handlers"
        )
    table: dict[tuple[str, str], list[Handler]] = {}
    for key, value in found.items():
        if not (isinstance(key, tuple) and len(key) == 2 and all(isinstance(s, str) and s for s in key)):
            raise ConfigError(
                f"{where}: key {key!r} is not (provider or '*', event type or '*'), e.g. "
                "('stripe', 'payment_intent.succeeded')"
            )
        handlers = list(value) if isinstance(value, list | tuple) else [value]
        for handler in handlers:
            if not callable(handler):
                raise ConfigError(
                    f"{where}: the handler of {key!r} is {type(handler).__name__}, not a callable taking "
                    "the event"
                )
        table[cast(tuple[str, str], key)] = handlers
    return table


# -- handling ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Handling:
    """How one pass over an event went: its status in the ledger afterwards (``received`` with
    ``retry_in`` when it is to be tried again), and the record as the pass left it (``None``: the event
    is no longer in the ledger)."""

    status: EventStatus
    record: EventRecord | None
    retry_in: float | None = None
    # True when this pass found the event already ended and did nothing.
    already: bool = False

    @property
    def outcome(self) -> str:
        """``handled``, ``unhandled``, ``failed``, ``dead``, ``retry`` or ``gone``."""
        if self.record is None:
            return "gone"
        return "retry" if self.status is EventStatus.RECEIVED else self.status.value


class _ReferenceLinks:
    """Says once per process that events naming operations by reference are not linked, when the
    ledger cannot look operations up by reference."""

    said = False


def handle(
    store: EventStore,
    id: str,
    handlers: Handlers,
    policy: RetryPolicy,
    *,
    ledger: Ledger | None = None,
    link: Linker | None = None,
    own: Mapping[str, Sequence[Handler]] | None = None,
) -> Handling:
    """One pass over the event ``id``: run its handlers (``own``, the adapter's by event type, first), link
    it to its operation when ``link`` (the adapter's ``event_link``) names one found in ``ledger``, and
    record the outcome in one compare-and-set statement. An event that already ended is left as it is."""
    record = store.get(id)
    if record is None:
        log.warning("webhook event %s is not in the ledger (pruned?): nothing to handle", id)
        return Handling(EventStatus.RECEIVED, None)
    if record.status.ended:
        return Handling(record.status, record, already=True)
    what = f"webhook event {record.id} ({record.provider} {record.type} {record.event_id})"
    attempt = record.attempts + 1
    try:
        event = _event_of(record)
    except ValueError as exc:
        error = ErrorInfo(type=ErrorType.INVALID_REQUEST, message=f"{what}: {exc}")
        return _ended(store, record, EventStatus.FAILED, error)
    adapters = own or {}
    matching = [
        *adapters.get(record.type, ()),
        *adapters.get(ANY, ()),
        *handlers.matching(record.provider, record.type),
    ]
    try:
        named = link(event) if link is not None and ledger is not None else None
        for handler in matching:
            handler(event)
    except PermanentHandlerError as exc:
        error = _error(what, exc, retryable=False)
        return _ended(store, record, EventStatus.FAILED, error)
    except Exception as exc:
        error = _error(what, exc, retryable=True)
        if attempt >= policy.max_attempts:
            return _ended(store, record, EventStatus.DEAD, retries_exhausted(what, attempt, error))
        marked = store.mark(record.id, EventStatus.RECEIVED, error=error)
        if marked is None:
            return _current(store, record)
        delay = policy.delay(attempt)
        log.warning(
            "%s: attempt %d failed (%s); tried again in %.2fs", what, attempt, type(exc).__name__, delay
        )
        return Handling(EventStatus.RECEIVED, marked, retry_in=delay)
    # The ledger's own lookups, outside the handlers': its outage is no failure of the event, and goes
    # up as LedgerUnavailable (the task tries again without counting an attempt).
    found = _operation_of(event, named, ledger, record.provider) if named is not None else None
    if not matching and found is None:
        return _ended(store, record, EventStatus.UNHANDLED, None)
    operation_id, relation = found if found is not None else (None, None)
    return _ended(store, record, EventStatus.HANDLED, None, operation_id, relation)


def _event_of(record: EventRecord) -> Event:
    try:
        payload = json.loads(record.body or b"")
    except ValueError as exc:
        raise ValueError(f"its body is not JSON ({exc})") from None
    return Event(record.id, record.provider, record.event_id, record.type, record.received_at, payload)


def _operation_of(
    event: Event, named: EventLink, ledger: Ledger | None, provider: str
) -> tuple[str, Relation] | None:
    """The operation the adapter's link names, as (operation id, relation), if the ledger has it."""
    if ledger is None:
        return None
    if named.idempotency_key is not None:
        operation = ledger.find(provider, named.idempotency_key)
    else:
        find_by_reference = getattr(ledger, "find_by_reference", None)
        if find_by_reference is None:
            if not _ReferenceLinks.said:
                _ReferenceLinks.said = True
                log.warning(
                    "webhook events of %s name operations by reference, which this ledger cannot look up: "
                    "they are handled without being linked to their operation",
                    provider,
                )
            return None
        operation = find_by_reference(provider, named.reference)
    if operation is None:
        log.info(
            "webhook event %s names an operation of %s not in the ledger: not linked", event.id, provider
        )
        return None
    return operation.id, named.relation


def _error(what: str, exc: Exception, *, retryable: bool) -> ErrorInfo:
    """A handler's failure as the event's row keeps it (operators read it with ``events show``)."""
    kind = ErrorType.INVALID_REQUEST if not retryable else ErrorType.INTERNAL_ERROR
    return ErrorInfo(type=kind, message=f"{what}: handler raised {type(exc).__name__}: {exc}")


def _ended(
    store: EventStore,
    record: EventRecord,
    status: EventStatus,
    error: ErrorInfo | None,
    operation_id: str | None = None,
    relation: Relation | None = None,
) -> Handling:
    marked = store.mark(record.id, status, error=error, operation_id=operation_id, relation=relation)
    if marked is None:
        return _current(store, record)
    log.log(
        logging.WARNING if status in (EventStatus.FAILED, EventStatus.DEAD) else logging.INFO,
        "webhook event %s (%s %s %s) %s after %d attempt(s)%s",
        record.id,
        record.provider,
        record.type,
        record.event_id,
        status.value,
        marked.attempts,
        f"; {relation.value} operation {operation_id}" if relation is not None else "",
    )
    return Handling(status, marked)


def _current(store: EventStore, record: EventRecord) -> Handling:
    """The event as another pass ended it meanwhile."""
    now = store.get(record.id)
    return Handling(now.status if now else EventStatus.RECEIVED, now, already=True)


# -- finishing events whose message was lost, and replaying ended ones ----------------------------------


def retry_window(policy: RetryPolicy) -> timedelta:
    """The longest an event's retries can take: every backoff at its cap."""
    return timedelta(seconds=policy.backoff.cap * max(policy.max_attempts - 1, 0))


def sweep_events(
    store: EventStore,
    publish: Callable[[str, str], str],
    policies: Mapping[str, RetryPolicy],
    grace: timedelta,
    *,
    now: datetime | None = None,
    limit: int = SWEEP_LIMIT,
) -> list[EventRecord]:
    """Publish again (``publish(provider, id) -> task id``) the events still ``received`` a ``grace``
    after they came: never tried, so their first message was lost (the receiver could not publish it,
    or the broker dropped it); or tried, and still not ended a grace past their whole retry window.
    ``policies``: the providers this deployment handles events of, with their retry policy. A message
    that was only late costs one more pass, which finds the event ended and does nothing."""
    before = (now or store.clock()) - grace
    swept = []
    for record in store.list(status=EventStatus.RECEIVED, received_before=before, limit=limit):
        policy = policies.get(record.provider)
        if policy is None:
            continue
        if record.attempts > 0 and record.received_at >= before - retry_window(policy):
            continue  # its retry may still be waiting for its countdown
        task_id = publish(record.provider, record.id)
        log.warning(
            "swept webhook event %s (%s %s %s, %d attempt(s), received %s): published again as task %s",
            record.id,
            record.provider,
            record.type,
            record.event_id,
            record.attempts,
            record.received_at.isoformat(),
            task_id,
        )
        swept.append(record)
    return swept


def reset_for_replay(store: EventStore, id: str) -> tuple[EventRecord, EventRecord]:
    """The event ``id`` as it was, and as it is once back to ``received`` with no attempt counted, no
    error and no operation: its next pass runs its handlers again. A ``LookupError`` if it is not in the
    ledger, a ``ValueError`` if its handling has not ended (it is being handled)."""
    before = store.get(id)
    if before is None:
        raise LookupError(f"no event with id {id!r} in the ledger at {store.where}")
    if not before.status.ended:
        raise ValueError(
            f"event {id} is {before.status.value}: its handling has not ended, so there is nothing to "
            "replay (`integrations events show` says how its attempts went)"
        )
    after = store.reset(id, before.status)
    if after is None:
        raise ValueError(f"event {id} changed while it was being replayed; look at it again")
    return before, after
