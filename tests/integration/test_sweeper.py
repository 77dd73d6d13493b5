"""The sweeper against a real ledger (both backends): which operations it sends again, once, and when."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import timedelta

import pytest

from integrations.errors import ErrorInfo, ErrorType
from integrations.ledger.models import OperationStatus
from integrations.ledger.records import NewOperation, OperationRecord
from integrations.ledger.store import Ledger
from integrations.sweeper import Sweeper
from tests.clock import Clock
from tests.published import Published

GRACE = timedelta(seconds=30)
LEASE = timedelta(seconds=35)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def timed(ledger_url: str, clock: Clock) -> Iterator[Ledger]:
    ledger = Ledger.connect(ledger_url, clock=clock)
    yield ledger
    ledger.dispose()


@pytest.fixture
def published() -> Published:
    return Published()


def sweeper(ledger: Ledger, published: Published, clock: Clock) -> Sweeper:
    return Sweeper(ledger, published, providers={"acme"}, grace=GRACE, clock=clock)


def new(key: str, provider: str = "acme") -> NewOperation:
    return NewOperation(
        provider, "request", key, key, {"method": "POST", "path": "/x"}, f"req-{key}", f"task-{key}"
    )


def waiting(ledger: Ledger, key: str, until_seconds: float, provider: str = "acme") -> OperationRecord:
    """A queued operation whose next attempt is due ``until_seconds`` from now (a retry's backoff)."""
    running = ledger.start(new(key, provider), lease=LEASE)
    assert running is not None
    error = ErrorInfo(type=ErrorType.PROVIDER_UNAVAILABLE, message="acme.request: HTTP 503")
    due = ledger.clock() + timedelta(seconds=until_seconds)
    queued = ledger.finish(running, OperationStatus.QUEUED, error=error, next_attempt_at=due)
    assert queued is not None
    return queued


def test_a_retry_whose_message_never_came_back_is_sent_again_under_its_task_id(
    timed: Ledger, published: Published, clock: Clock
) -> None:
    waiting(timed, "lost", until_seconds=10)
    waiting(timed, "later", until_seconds=300)
    clock.advance(10 + GRACE.total_seconds() - 1)
    assert sweeper(timed, published, clock).sweep() == []  # due, but still within the grace

    clock.advance(2)
    [swept] = sweeper(timed, published, clock).sweep()

    assert published.keys() == ["lost"]
    assert swept.task_id == "task-lost" and swept.record.status is OperationStatus.QUEUED
    row = timed.find("acme", "lost")
    assert row is not None and row.swept_at == clock.now and row.version == swept.record.version


def test_an_operation_is_sent_again_once_per_grace_period_while_no_delivery_comes(
    timed: Ledger, published: Published, clock: Clock
) -> None:
    waiting(timed, "lost", until_seconds=0)
    clock.advance(GRACE.total_seconds() + 1)
    first, second = sweeper(timed, published, clock), sweeper(timed, published, clock)

    assert len(first.sweep()) == 1
    assert second.sweep() == []  # another sweeper at the same time finds it marked
    clock.advance(GRACE.total_seconds() - 1)
    assert first.sweep() == []
    clock.advance(2)
    assert len(first.sweep()) == 1
    assert published.keys() == ["lost", "lost"]


def test_a_running_operation_is_swept_only_once_its_lease_ran_out_a_grace_period_ago(
    timed: Ledger, published: Published, clock: Clock
) -> None:
    assert timed.start(new("held"), lease=LEASE) is not None  # its worker then dies with the message
    clock.advance((LEASE + GRACE).total_seconds() - 1)
    assert sweeper(timed, published, clock).sweep() == []

    clock.advance(2)
    [swept] = sweeper(timed, published, clock).sweep()

    assert swept.record.status is OperationStatus.RUNNING and published.keys() == ["held"]


def test_a_new_operation_with_no_delivery_is_swept_from_its_creation(
    timed: Ledger, published: Published, clock: Clock
) -> None:
    until = clock.now  # a guard said wait: the row is new, its next attempt due now
    claimed = timed.start(new("fresh"), lease=LEASE)
    assert claimed is not None and timed.unclaim(claimed, reason="throttled", until=until) is not None
    clock.advance(GRACE.total_seconds() + 1)

    assert published.keys() == [] and len(sweeper(timed, published, clock).sweep()) == 1
    assert published.keys() == ["fresh"]


@pytest.mark.parametrize("status", [OperationStatus.SUCCEEDED, OperationStatus.FAILED, OperationStatus.DEAD])
def test_ended_operations_are_never_swept(
    timed: Ledger, published: Published, clock: Clock, status: OperationStatus
) -> None:
    running = timed.start(new("ended"), lease=LEASE)
    assert running is not None
    error = ErrorInfo(type=ErrorType.PROVIDER_REJECTED, message="no")
    assert timed.finish(
        running, status, response={}, error=None if status is OperationStatus.SUCCEEDED else error
    )
    clock.advance(3600)

    assert sweeper(timed, published, clock).sweep() == [] and published.keys() == []


def test_a_worker_that_claims_meanwhile_is_not_disturbed_by_the_mark(
    timed: Ledger, published: Published, clock: Clock
) -> None:
    queued = waiting(timed, "race", until_seconds=0)
    clock.advance(GRACE.total_seconds() + 1)
    assert len(sweeper(timed, published, clock).sweep()) == 1

    claimed = timed.claim(queued, lease=LEASE, request_id="req-race")  # read before the sweep

    assert claimed is not None and claimed.status is OperationStatus.RUNNING


def test_operations_of_a_provider_not_served_are_left_and_named(
    timed: Ledger, published: Published, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    waiting(timed, "gone", until_seconds=0, provider="retired")
    clock.advance(GRACE.total_seconds() + 1)

    with caplog.at_level(logging.ERROR, logger="integrations.sweeper"):
        assert sweeper(timed, published, clock).sweep() == []

    assert published.keys() == []
    assert "retired" in caplog.text and "providers file" in caplog.text
    row = timed.find("retired", "gone")
    assert row is not None and row.swept_at is None
