"""The ledger on SQLite and PostgreSQL: atomic start/claim/finish, dead letters, replay, pruning, schema."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from integrations.errors import ErrorInfo, ErrorType
from integrations.ledger import models
from integrations.ledger.engine import create_ledger_engine
from integrations.ledger.models import OperationStatus
from integrations.ledger.records import AuditAction, NewOperation, OperationRecord
from integrations.ledger.rows import HISTORY_LIMIT
from integrations.ledger.store import Ledger
from integrations.replay import reset_for_replay
from integrations.resilience.idempotency import fingerprint
from tests.clock import Clock

LEASE = timedelta(seconds=35)
PAYLOAD = {"method": "POST", "path": "/v1/charges", "json": {"amount": 500, "currency": "eur"}}
T0 = datetime(2026, 11, 21, 12, 0, 0, 123456, tzinfo=UTC)


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
def timed(ledger_url: str, clock: Clock) -> Iterator[Ledger]:
    """A ledger whose clock is ``clock``."""
    ledger = Ledger(create_ledger_engine(ledger_url), clock=clock)
    yield ledger
    ledger.dispose()


def start(
    ledger: Ledger, key: str = "charge-1", *, provider: str = "acme", request_id: str = "req-1"
) -> OperationRecord:
    new = NewOperation(provider, "request", key, fingerprint("request", PAYLOAD), PAYLOAD, request_id)
    record = ledger.start(new, lease=LEASE)
    assert record is not None
    return record


def transient() -> ErrorInfo:
    return ErrorInfo(type=ErrorType.PROVIDER_UNAVAILABLE, message="acme.request: HTTP 503", status_code=503)


def ended(ledger: Ledger, key: str, status: OperationStatus, *, provider: str = "acme") -> OperationRecord:
    """An operation that ran one attempt and ended (or was queued again) with ``status``."""
    record = start(ledger, key, provider=provider)
    if status is OperationStatus.RUNNING:
        return record
    if status is OperationStatus.SUCCEEDED:
        finished = ledger.finish(record, status, response={"status_code": 200, "body": {"id": "ch_1"}})
    elif status is OperationStatus.DEAD:
        error = ErrorInfo(type=ErrorType.RETRIES_EXHAUSTED, message="gave up after 1 attempt")
        finished = ledger.finish(record, status, error=error)
    elif status is OperationStatus.FAILED:
        error = ErrorInfo(
            type=ErrorType.PROVIDER_REJECTED, message="HTTP 422", status_code=422, body={"e": 1}
        )
        finished = ledger.finish(record, status, error=error)
    else:
        finished = ledger.finish(record, status, error=transient(), next_attempt_at=ledger.clock() + LEASE)
    assert finished is not None
    return finished


def invalid(ledger: Ledger, key: str | None, *, payload: Any = "not a dict") -> OperationRecord:
    return ledger.record_invalid(
        NewOperation("acme", "request", key, fingerprint("request", payload), payload, "req-bad"),
        ErrorInfo(type=ErrorType.INVALID_REQUEST, message="acme.request: payload.path: Field required"),
    )


# -- start -----------------------------------------------------------------------------------------


def test_start_inserts_the_first_attempt_as_running(timed: Ledger) -> None:
    record = start(timed)

    assert record.status is OperationStatus.RUNNING
    assert record.attempts == 1
    assert record.replays == 0
    assert (record.provider, record.operation, record.idempotency_key) == ("acme", "request", "charge-1")
    assert record.payload == PAYLOAD
    assert record.request_id == "req-1"
    assert record.created_at == record.started_at == T0
    assert record.lease_expires_at == T0 + LEASE
    assert record.finished_at is None
    assert record.next_attempt_at is None
    assert timed.get(record.id) == record
    assert timed.find("acme", "charge-1") == record


def test_start_twice_with_the_same_key_loses(ledger: Ledger) -> None:
    first = start(ledger)

    other = {"other": True}
    second = ledger.start(
        NewOperation("acme", "request", "charge-1", fingerprint("request", other), other, "req-2"),
        lease=LEASE,
    )

    assert second is None
    assert ledger.get(first.id) == first
    assert ledger.count_by_status() == {"running": 1}


def test_the_same_key_is_free_for_another_provider(ledger: Ledger) -> None:
    acme = start(ledger, "charge-1", provider="acme")
    other = start(ledger, "charge-1", provider="mailer")

    assert acme.id != other.id
    assert ledger.find("mailer", "charge-1") == other
    assert ledger.find("acme", "charge-1") == acme
    assert ledger.find("crm", "charge-1") is None


# -- claim and finish ------------------------------------------------------------------------------


def test_claim_starts_the_next_attempt(timed: Ledger, clock: Clock) -> None:
    queued = ended(timed, "charge-1", OperationStatus.QUEUED)
    clock.set(T0 + timedelta(seconds=40))

    claimed = timed.claim(queued, lease=LEASE, request_id="req-2")

    assert claimed is not None
    assert claimed.status is OperationStatus.RUNNING
    assert claimed.attempts == queued.attempts + 1 == 2
    assert claimed.version == queued.version + 1
    assert claimed.request_id == "req-2"
    assert claimed.started_at == T0 + timedelta(seconds=40)
    assert claimed.lease_expires_at == T0 + timedelta(seconds=40) + LEASE
    assert claimed.next_attempt_at is None
    assert timed.get(queued.id) == claimed


def test_claim_of_a_stale_record_changes_nothing(ledger: Ledger) -> None:
    queued = ended(ledger, "charge-1", OperationStatus.QUEUED)
    winner = ledger.claim(queued, lease=LEASE, request_id="req-winner")
    assert winner is not None

    assert ledger.claim(queued, lease=LEASE, request_id="req-loser") is None

    current = ledger.get(queued.id)
    assert current == winner
    assert current is not None
    assert current.attempts == queued.attempts + 1
    assert current.request_id == "req-winner"


def test_takeover_claim_replaces_an_invalid_request(ledger: Ledger) -> None:
    bad = invalid(ledger, "charge-1")

    valid = NewOperation("acme", "request", "charge-1", fingerprint("request", PAYLOAD), PAYLOAD, "req-2")
    claimed = ledger.claim(bad, lease=LEASE, request_id="req-2", takeover=valid)

    assert claimed is not None
    assert ledger.get(bad.id) == claimed
    assert claimed.status is OperationStatus.RUNNING
    assert claimed.attempts == 1
    assert claimed.payload == PAYLOAD
    assert claimed.fingerprint == fingerprint("request", PAYLOAD)
    assert claimed.error is None
    assert claimed.finished_at is None


def test_finish_is_fenced_by_version(timed: Ledger, clock: Clock) -> None:
    first = start(timed)  # worker A's attempt; its lease runs out
    clock.set(T0 + LEASE + timedelta(seconds=1))
    second = timed.claim(first, lease=LEASE, request_id="req-b")  # worker B takes over
    assert second is not None

    late = timed.finish(first, OperationStatus.SUCCEEDED, response={"status_code": 200, "body": "from A"})

    assert late is None
    assert timed.get(first.id) == second

    clock.set(T0 + LEASE + timedelta(seconds=2))
    done = timed.finish(second, OperationStatus.SUCCEEDED, response={"status_code": 200, "body": "from B"})

    assert done is not None
    assert timed.get(first.id) == done
    assert done.status is OperationStatus.SUCCEEDED
    assert done.response == {"status_code": 200, "body": "from B"}
    assert done.finished_at == T0 + LEASE + timedelta(seconds=2)
    assert done.lease_expires_at is None
    assert done.attempts == 2


def test_finish_keeps_what_the_provider_answered_with_nul_characters_replaced(ledger: Ledger) -> None:
    # PostgreSQL refuses NUL in text: an answer quoting one must still be recorded, not fail the write.
    error = ErrorInfo(
        type=ErrorType.PROVIDER_REJECTED, message="acme.request: bad\x00name", body={"e": "x\x00y"}
    )
    finished = ledger.finish(start(ledger), OperationStatus.FAILED, error=error)

    stored = ledger.get(finished.id) if finished else None
    assert stored is not None and stored.error is not None
    assert (stored.error["message"], stored.error["body"]) == (
        "acme.request: bad\ufffdname",
        {"e": "x\ufffdy"},
    )


def test_finish_queued_for_retry_keeps_the_error_and_schedule(timed: Ledger, clock: Clock) -> None:
    record = start(timed)
    due = T0 + timedelta(seconds=4)

    queued = timed.finish(record, OperationStatus.QUEUED, error=transient(), next_attempt_at=due)

    assert queued is not None
    stored = timed.get(record.id)
    assert stored == queued
    assert stored is not None
    assert stored.status is OperationStatus.QUEUED
    assert stored.next_attempt_at == due
    assert stored.finished_at is None
    assert stored.lease_expires_at is None
    assert stored.error == {
        "type": "provider_unavailable",
        "message": "acme.request: HTTP 503",
        "status_code": 503,
        "body": None,
    }


def test_concurrent_claims_have_exactly_one_winner(ledger: Ledger) -> None:
    queued = ended(ledger, "charge-1", OperationStatus.QUEUED)
    workers = 8
    barrier = threading.Barrier(workers)
    results: dict[str, OperationRecord | None] = {}
    failures: list[BaseException] = []

    def claim(request_id: str) -> None:
        try:
            barrier.wait(timeout=30)
            results[request_id] = ledger.claim(queued, lease=LEASE, request_id=request_id)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=claim, args=(f"req-{n}",)) for n in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert failures == []
    winners = {request_id: record for request_id, record in results.items() if record is not None}
    assert len(results) == workers
    assert len(winners) == 1
    [(request_id, winner)] = winners.items()
    assert ledger.get(queued.id) == winner
    assert winner.request_id == request_id
    assert winner.attempts == queued.attempts + 1


# -- invalid requests ------------------------------------------------------------------------------


def test_record_invalid_binds_a_free_key(timed: Ledger) -> None:
    record = invalid(timed, "charge-1")

    assert timed.find("acme", "charge-1") == record
    assert record.status is OperationStatus.FAILED
    assert record.attempts == 0
    assert record.finished_at == T0
    assert record.payload == "not a dict"
    assert record.error is not None
    assert record.error["type"] == "invalid_request"


def test_record_invalid_with_a_taken_key_keeps_the_original(ledger: Ledger) -> None:
    original = start(ledger)

    first = invalid(ledger, "charge-1")
    second = invalid(ledger, "charge-1", payload={"method": "FETCH"})

    assert first.idempotency_key is None
    assert second.idempotency_key is None
    assert len({original.id, first.id, second.id}) == 3
    assert ledger.get(first.id) == first
    assert ledger.get(second.id) == second
    assert ledger.get(original.id) == original
    assert ledger.find("acme", "charge-1") == original


def test_record_invalid_without_a_key(ledger: Ledger) -> None:
    records = [invalid(ledger, None) for _ in range(2)]

    assert [ledger.get(record.id) for record in records] == records
    assert all(record.idempotency_key is None for record in records)


# -- dead letters, replay, restore -----------------------------------------------------------------


def test_dead_letters_lists_failed_and_dead_newest_first(timed: Ledger, clock: Clock) -> None:
    by_key: dict[str, OperationRecord] = {}
    for minute, (key, status, provider) in enumerate(
        [
            ("failed-old", OperationStatus.FAILED, "acme"),
            ("dead", OperationStatus.DEAD, "acme"),
            ("succeeded", OperationStatus.SUCCEEDED, "acme"),
            ("queued", OperationStatus.QUEUED, "acme"),
            ("running", OperationStatus.RUNNING, "acme"),
            ("failed-mailer", OperationStatus.FAILED, "mailer"),
            ("failed-new", OperationStatus.FAILED, "acme"),
        ]
    ):
        clock.set(T0 + timedelta(minutes=minute))
        by_key[key] = ended(timed, key, status, provider=provider)

    every = [record.idempotency_key for record in timed.dead_letters()]
    acme = [record.idempotency_key for record in timed.dead_letters("acme")]

    assert every == ["failed-new", "failed-mailer", "dead", "failed-old"]
    assert acme == ["failed-new", "dead", "failed-old"]
    assert [r.idempotency_key for r in timed.dead_letters("acme", limit=2)] == ["failed-new", "dead"]
    assert timed.dead_letters("crm") == []
    assert timed.dead_letters("mailer") == [by_key["failed-mailer"]]


def test_reset_for_replay_requeues_a_dead_operation(timed: Ledger, clock: Clock) -> None:
    dead = ended(timed, "charge-1", OperationStatus.DEAD)
    clock.set(T0 + timedelta(hours=1))

    replayed = reset_for_replay(timed, dead.id)[1]

    assert timed.get(dead.id) == replayed
    assert replayed.status is OperationStatus.QUEUED
    assert replayed.attempts == 0
    assert replayed.replays == dead.replays + 1 == 1
    assert replayed.error is None
    assert replayed.finished_at is None
    assert replayed.next_attempt_at is None
    assert replayed.updated_at == T0 + timedelta(hours=1)
    assert replayed.payload == dead.payload
    assert timed.dead_letters() == []


def test_reset_for_replay_of_a_failed_operation(ledger: Ledger) -> None:
    failed = ended(ledger, "charge-1", OperationStatus.FAILED)

    replayed = reset_for_replay(ledger, failed.id)[1]

    assert (replayed.status, replayed.attempts, replayed.replays) == (OperationStatus.QUEUED, 0, 1)


@pytest.mark.parametrize(
    "status", [OperationStatus.SUCCEEDED, OperationStatus.QUEUED, OperationStatus.RUNNING]
)
def test_reset_for_replay_refuses_an_operation_that_did_not_fail(
    ledger: Ledger, status: OperationStatus
) -> None:
    record = ended(ledger, "charge-1", status)

    with pytest.raises(ValueError, match=f"is {status.value}; only failed, dead or partial ones replay"):
        reset_for_replay(ledger, record.id)[1]

    assert ledger.get(record.id) == record


def test_reset_for_replay_refuses_an_invalid_request(ledger: Ledger) -> None:
    record = invalid(ledger, "charge-1")

    with pytest.raises(ValueError, match="was an invalid request; the same message would fail again"):
        reset_for_replay(ledger, record.id)[1]

    assert ledger.get(record.id) == record


def test_reset_for_replay_of_an_unknown_operation(ledger: Ledger) -> None:
    with pytest.raises(LookupError, match="no operation 'no-such-id' in the ledger"):
        reset_for_replay(ledger, "no-such-id")[1]


def test_restore_undoes_a_replay(ledger: Ledger) -> None:
    dead = ended(ledger, "charge-1", OperationStatus.DEAD)
    replayed = reset_for_replay(ledger, dead.id)[1]

    ledger.restore(dead, replayed)

    restored = ledger.get(dead.id)
    assert restored is not None
    assert restored.version == replayed.version + 1
    assert restored == OperationRecord(**{**dead.__dict__, "version": replayed.version + 1})
    assert ledger.dead_letters() == [restored]


# -- pruning ---------------------------------------------------------------------------------------


def test_prune_deletes_ended_operations_past_retention(timed: Ledger, clock: Clock) -> None:
    now = T0 + timedelta(days=100)
    rows = {
        # key: (status, days before now it was written, kept?)
        "succeeded-old": (OperationStatus.SUCCEEDED, 8, False),
        "succeeded-recent": (OperationStatus.SUCCEEDED, 6, True),
        "failed-old": (OperationStatus.FAILED, 31, False),
        "failed-recent": (OperationStatus.FAILED, 29, True),
        "dead-old": (OperationStatus.DEAD, 31, False),
        "dead-past-success-retention": (OperationStatus.DEAD, 8, True),
        "queued-ancient": (OperationStatus.QUEUED, 99, True),
        "running-ancient": (OperationStatus.RUNNING, 99, True),
    }
    ids = {}
    for key, (status, days, _kept) in rows.items():
        clock.set(now - timedelta(days=days))
        ids[key] = ended(timed, key, status).id
    clock.set(now - timedelta(days=40))
    ids["invalid-old"] = invalid(timed, "invalid-old").id
    clock.set(now)

    deleted = timed.prune(retention=timedelta(days=7), dead_letter_retention=timedelta(days=30))

    kept = {key for key, (_status, _days, keep) in rows.items() if keep}
    assert deleted == len(ids) - len(kept)
    assert {key for key, operation_id in ids.items() if timed.get(operation_id) is not None} == kept
    assert timed.prune(retention=timedelta(days=7), dead_letter_retention=timedelta(days=30)) == 0


# -- what comes back -------------------------------------------------------------------------------


def test_timestamps_come_back_as_aware_utc(ledger_url: str) -> None:
    local = T0.astimezone(timezone(timedelta(hours=5, minutes=30)))
    ledger = Ledger.connect(ledger_url, clock=Clock(local))
    try:
        record = ended(ledger, "charge-1", OperationStatus.SUCCEEDED)
        stored = ledger.get(record.id)
    finally:
        ledger.dispose()

    assert stored is not None
    for name in ("created_at", "updated_at", "started_at", "finished_at"):
        value = getattr(stored, name)
        assert value == T0, name
        assert value.tzinfo is UTC, name
        assert value.isoformat() == "2026-11-21T12:00:00.123456+00:00", name


def test_to_json(timed: Ledger) -> None:
    record = ended(timed, "charge-1", OperationStatus.FAILED)

    stored = timed.get(record.id)
    assert stored is not None

    data = stored.to_json()

    assert json.loads(json.dumps(data)) == data
    assert "fingerprint" not in data
    assert "version" not in data
    assert "id" not in data
    assert data["operation_id"] == record.id
    assert data["status"] == "failed"
    assert data["provider"] == "acme"
    assert data["idempotency_key"] == "charge-1"
    assert data["attempts"] == 1
    assert data["payload"] == PAYLOAD
    assert data["error"] == {
        "type": "provider_rejected",
        "message": "HTTP 422",
        "status_code": 422,
        "body": {"e": 1},
    }
    assert data["created_at"] == data["finished_at"] == "2026-11-21T12:00:00.123456+00:00"
    assert datetime.fromisoformat(data["updated_at"]) == T0
    assert data["next_attempt_at"] is None
    assert data["lease_expires_at"] is None


def test_migration_matches_the_models(ledger: Ledger) -> None:
    with ledger.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), models.metadata)

    assert differences == []


# -- attempt history ---------------------------------------------------------------------------------


def test_each_attempt_joins_the_history_in_the_statement_that_ends_it(timed: Ledger, clock: Clock) -> None:
    first = start(timed)
    clock.advance(1.5)
    queued = timed.finish(first, OperationStatus.QUEUED, error=transient(), next_attempt_at=clock())
    assert queued is not None
    clock.advance(10)
    second = timed.claim(queued, lease=LEASE, request_id="req-1")
    assert second is not None
    clock.advance(0.25)
    done = timed.finish(
        second, OperationStatus.SUCCEEDED, response={"status_code": 201, "body": {"id": "ch"}}
    )
    assert done is not None

    stored = timed.get(first.id)
    assert stored is not None and stored.history == done.history
    assert list(stored.history) == [
        {
            "attempt": 1,
            "started_at": T0.isoformat(),
            "seconds": 1.5,
            "outcome": "retry",
            "status_code": 503,
            "error_type": "provider_unavailable",
            "error": "acme.request: HTTP 503",
        },
        {
            "attempt": 2,
            "started_at": (T0 + timedelta(seconds=11.5)).isoformat(),
            "seconds": 0.25,
            "outcome": "succeeded",
            "status_code": 201,  # from the response: the provider's answer itself is not kept here
            "error_type": None,
            "error": None,
        },
    ]
    assert stored.to_json()["history"] == [dict(entry) for entry in stored.history]


def test_a_claim_over_a_lost_attempt_notes_it_lost(timed: Ledger, clock: Clock) -> None:
    lost = start(timed)
    clock.set(T0 + LEASE + timedelta(seconds=1))

    taken = timed.claim(lost, lease=LEASE, request_id="req-2")

    assert taken is not None
    [entry] = taken.history
    assert (entry["attempt"], entry["outcome"], entry["seconds"]) == (1, "lost", None)
    assert entry["started_at"] == T0.isoformat()
    done = timed.finish(taken, OperationStatus.DEAD, error=transient())
    assert done is not None
    assert [(e["attempt"], e["outcome"]) for e in done.history] == [(1, "lost"), (2, "dead")]


def test_a_wait_over_a_lost_attempt_notes_it_lost_and_gives_back_only_its_own(
    timed: Ledger, clock: Clock
) -> None:
    lost = start(timed)
    clock.set(T0 + LEASE + timedelta(seconds=1))
    taken = timed.claim(lost, lease=LEASE, request_id="req-2")
    assert taken is not None and taken.attempts == 2

    until = clock() + timedelta(seconds=30)
    assert timed.unclaim(taken, reason="breaker_open", until=until) is not None

    waiting = timed.get(lost.id)
    assert waiting is not None and waiting.status is OperationStatus.QUEUED
    assert (waiting.attempts, waiting.waiting, waiting.next_attempt_at) == (1, "breaker_open", until)
    assert [(e["attempt"], e["outcome"]) for e in waiting.history] == [(1, "lost")]


def test_the_history_keeps_the_last_attempts_and_ending_a_queued_row_adds_none(ledger: Ledger) -> None:
    record = start(ledger)
    for _ in range(HISTORY_LIMIT + 2):
        queued = ledger.finish(record, OperationStatus.QUEUED, error=transient())
        assert queued is not None
        claimed = ledger.claim(queued, lease=LEASE, request_id="req-1")
        assert claimed is not None
        record = claimed
    queued = ledger.finish(record, OperationStatus.QUEUED, error=transient())
    assert queued is not None
    internal = ErrorInfo(type=ErrorType.INTERNAL_ERROR, message="acme.request: internal error")
    failed = ledger.finish(queued, OperationStatus.FAILED, error=internal)  # no attempt was in flight
    assert failed is not None

    stored = ledger.get(record.id)
    assert stored is not None
    assert [entry["attempt"] for entry in stored.history] == list(range(4, HISTORY_LIMIT + 4))


# -- conflicts -------------------------------------------------------------------------------------


def test_a_conflict_is_counted_without_bumping_the_version(timed: Ledger, clock: Clock) -> None:
    running = start(timed)
    clock.advance(5)
    timed.record_conflict("acme", "charge-1")
    clock.advance(5)
    timed.record_conflict("acme", "charge-1")
    timed.record_conflict("mailer", "charge-1")  # no such row: nothing to count

    counted = timed.get(running.id)
    assert counted is not None
    assert (counted.conflicts, counted.last_conflict_at) == (2, T0 + timedelta(seconds=10))
    assert (counted.version, counted.updated_at) == (running.version, running.updated_at)
    done = timed.finish(running, OperationStatus.SUCCEEDED, response={})  # the claim's finish still wins
    assert done is not None
    assert [r.id for r in timed.conflicted()] == [running.id]
    assert timed.conflicted(since=T0 + timedelta(seconds=11)) == []
    assert timed.conflicted(provider="mailer") == []


def test_restore_keeps_the_conflicts_counted_since(ledger: Ledger) -> None:
    dead = ended(ledger, "charge-1", OperationStatus.DEAD)
    replayed = reset_for_replay(ledger, dead.id)[1]
    ledger.record_conflict("acme", "charge-1")

    assert ledger.restore(dead, replayed)

    restored = ledger.get(dead.id)
    assert restored is not None and (restored.status, restored.conflicts) == (OperationStatus.DEAD, 1)


# -- finding operations ------------------------------------------------------------------------------


def test_lookup_by_operation_id_or_task_id_and_listing(timed: Ledger, clock: Clock) -> None:
    new = NewOperation("acme", "request", "charge-1", "fp", PAYLOAD, None, "task-1")
    queued, _ = timed.enqueue(new)
    clock.advance(60)
    dead = ended(timed, "charge-2", OperationStatus.DEAD, provider="mailer")

    assert timed.lookup("task-1") == [queued]
    assert timed.lookup(dead.id) == [dead]
    assert timed.lookup("nothing") == []
    assert timed.operations() == [dead, queued]
    assert timed.operations(statuses=[OperationStatus.QUEUED]) == [queued]
    assert timed.operations(provider="mailer") == [dead]
    assert timed.operations(created_before=T0 + timedelta(seconds=30)) == [queued]


def test_dead_letters_by_error_type_and_since(timed: Ledger, clock: Clock) -> None:
    failed = ended(timed, "charge-1", OperationStatus.FAILED)  # provider_rejected
    clock.advance(3600)
    dead = ended(timed, "charge-2", OperationStatus.DEAD)  # retries_exhausted

    assert timed.dead_letters(error_type="provider_rejected") == [failed]
    assert timed.dead_letters(error_type="timeout") == []
    assert timed.dead_letters(since=T0 + timedelta(minutes=30)) == [dead]


# -- discard and the operators' actions ------------------------------------------------------------


def test_discard_settles_a_dead_letter_with_its_action_in_one_transaction(
    timed: Ledger, clock: Clock
) -> None:
    dead = ended(timed, "charge-1", OperationStatus.DEAD)
    clock.advance(60)

    done = timed.discard(dead, actor="alice@ops", reason="refunded by hand")

    assert done is not None
    discarded, action = done
    assert timed.get(dead.id) == discarded
    assert (discarded.status, discarded.discarded_at) == (OperationStatus.DEAD, T0 + timedelta(seconds=60))
    assert (discarded.discarded_by, discarded.discard_reason) == ("alice@ops", "refunded by hand")
    assert timed.dead_letters() == []
    assert timed.find("acme", "charge-1") == discarded  # the key stays taken
    assert timed.actions() == [action]
    assert (action.action, action.target, action.actor) == ("dlq.discard", dead.id, "alice@ops")
    assert action.details["error_type"] == "retries_exhausted"
    assert timed.discard(dead, actor="bob", reason="stale read") is None  # the row changed since
    assert timed.actions() == [action]

    replayed = reset_for_replay(timed, dead.id)[1]  # by id, a discarded one goes again
    assert (replayed.discarded_at, replayed.discarded_by, replayed.discard_reason) == (None, None, None)


def test_actions_newest_first_by_action_and_since(timed: Ledger, clock: Clock) -> None:
    first = timed.record_action(
        AuditAction.LIMITS_SET, actor="alice", target="acme", details={"old": {"burst": 20}}
    )
    clock.advance(60)
    second = timed.record_action(AuditAction.BREAKER_OPEN, actor="bob", target="acme", reason="maintenance")

    assert timed.actions() == [second, first]
    assert timed.actions(action="limits.set") == [first]
    assert timed.actions(since=T0 + timedelta(seconds=30)) == [second]
    assert timed.actions(limit=1) == [second]
    assert (first.details, second.details, second.reason) == ({"old": {"burst": 20}}, {}, "maintenance")
