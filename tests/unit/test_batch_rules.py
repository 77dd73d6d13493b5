"""The rules of batch operations, as pure functions over item states."""

from __future__ import annotations

import pytest

from integrations import batch
from integrations.batch import BatchItem, ItemResult
from integrations.errors import ErrorInfo, ErrorType, ProviderRejected, TransientError
from integrations.ledger.models import OperationStatus
from integrations.ledger.records import Items, ItemState, ItemStatus, dump_items, load_items
from integrations.resilience.backoff import ExponentialBackoff
from integrations.resilience.retry import RetryPolicy

WHERE = "crm.batch_create"


POLICY = RetryPolicy(max_attempts=3, backoff=ExponentialBackoff(base=1.0, cap=10.0))


def states(*spec: tuple[str, int]) -> Items:
    return tuple(
        ItemState(key=f"k{i}", status=ItemStatus(status), attempts=n) for i, (status, n) in enumerate(spec)
    )


def test_invalid_items_fail_at_once_and_the_others_are_queued() -> None:
    items = [BatchItem("a", 0, None, "payload.items.0.email: bad"), BatchItem("b", 1, None)]
    first, second = batch.initial_states(items, WHERE)
    assert (first.status, first.attempts, first.error and first.error.type) == (
        ItemStatus.FAILED,
        0,
        ErrorType.INVALID_REQUEST,
    )
    assert (second.status, second.attempts, second.error) == (ItemStatus.QUEUED, 0, None)


def test_a_chunk_takes_the_items_sent_the_fewest_times_in_order_up_to_the_batch_size() -> None:
    found = states(
        ("succeeded", 1), ("queued", 1), ("queued", 0), ("failed", 1), ("queued", 0), ("queued", 0)
    )
    assert batch.next_chunk(found, 2) == [2, 4]
    assert batch.next_chunk(found, 10) == [2, 4, 5]
    assert batch.next_chunk(states(("succeeded", 1), ("queued", 2), ("queued", 1)), 10) == [2]
    assert batch.next_chunk(states(("succeeded", 1), ("failed", 3)), 10) == []


def test_starting_a_chunk_counts_an_attempt_for_its_items_only() -> None:
    started = batch.start_chunk(states(("queued", 0), ("queued", 1), ("queued", 0)), [0, 2])
    assert [(s.status, s.attempts) for s in started] == [
        (ItemStatus.RUNNING, 1),
        (ItemStatus.QUEUED, 1),
        (ItemStatus.RUNNING, 1),
    ]


def test_results_end_items_or_queue_them_again_while_attempts_remain() -> None:
    running = states(("running", 1), ("running", 1), ("running", 3), ("running", 2), ("succeeded", 1))
    results = {
        "k0": ItemResult("k0", response={"id": "7"}),
        "k1": ItemResult("k1", ProviderRejected(f"{WHERE}: item 'k1': CONFLICT: exists")),
        "k2": ItemResult("k2", TransientError(f"{WHERE}: item 'k2': busy")),
        "k3": ItemResult("k3", TransientError(f"{WHERE}: item 'k3': busy")),
    }
    after = batch.record_results(running, results, policy=POLICY, where=WHERE)
    assert [(s.status, s.attempts) for s in after] == [
        (ItemStatus.SUCCEEDED, 1),
        (ItemStatus.FAILED, 1),
        (ItemStatus.FAILED, 3),
        (ItemStatus.QUEUED, 2),
        (ItemStatus.SUCCEEDED, 1),
    ]
    assert after[0].response == {"id": "7"} and after[0].error is None
    assert after[1].error is not None and after[1].error.type is ErrorType.PROVIDER_REJECTED
    assert after[2].error is not None and after[2].error.type is ErrorType.RETRIES_EXHAUSTED
    assert after[2].error.message == (
        f"{WHERE}: item 'k2': gave up after 3 attempts; last error: {WHERE}: item 'k2': busy"
    )
    assert after[3].error is not None and after[3].error.type is ErrorType.PROVIDER_UNAVAILABLE


def test_items_of_a_lost_call_go_again_together_or_fail_if_it_was_their_last_attempt() -> None:
    found = states(("queued", 0), ("running", 1), ("running", 3), ("running", 1), ("succeeded", 1))
    reopened, chunk = batch.plan(found, max_items=10, max_attempts=3, where=WHERE)
    assert [s.status for s in reopened] == [
        ItemStatus.QUEUED,
        ItemStatus.QUEUED,
        ItemStatus.FAILED,
        ItemStatus.QUEUED,
        ItemStatus.SUCCEEDED,
    ]
    assert chunk == [1, 3]  # the lost call's items, before the fresh one
    assert reopened[2].error is not None and reopened[2].error.type is ErrorType.RETRIES_EXHAUSTED
    assert "the worker of the last one was lost" in reopened[2].error.message
    assert batch.sent_unanswered(reopened[1]) and not batch.sent_unanswered(reopened[0])
    # With nothing lost, the plan is the next chunk.
    assert batch.plan(reopened, max_items=10, max_attempts=3, where=WHERE)[1] == [0]


def test_items_that_failed_in_a_round_wait_the_backoff_and_never_less_than_retry_after() -> None:
    highest = RetryPolicy(3, ExponentialBackoff(base=1.0, cap=10.0, uniform=lambda _low, high: high))
    slow = {"a": ItemResult("a", TransientError("a: busy", retry_after=30.0)), "b": ItemResult("b")}
    assert batch.round_delay(highest, 1, slow) == 30.0
    assert batch.round_delay(highest, 2, {"b": ItemResult("b", TransientError("b: busy"))}) == 2.0
    assert batch.round_delay(highest, 1, TransientError("whole call", retry_after=5.0)) == 5.0


def test_a_round_goes_on_while_items_not_yet_sent_in_it_remain() -> None:
    # Chunk of round 1 just sent (attempts 1): an item with 0 attempts is still to go this round.
    assert batch.sent_this_round(states(("queued", 0), ("queued", 1)), 1)
    # Only items that failed in this round are left: they wait for the backoff.
    assert not batch.sent_this_round(states(("succeeded", 1), ("queued", 1)), 1)


@pytest.mark.parametrize(
    ("spec", "status"),
    [
        ((("succeeded", 1), ("succeeded", 2)), OperationStatus.SUCCEEDED),
        ((("succeeded", 1), ("failed", 1)), OperationStatus.PARTIAL),
        ((("failed", 0), ("failed", 3)), OperationStatus.FAILED),
        ((("succeeded", 1), ("queued", 1)), None),
        ((("succeeded", 1), ("running", 1)), None),
    ],
)
def test_how_a_batch_ends(spec: tuple[tuple[str, int], ...], status: OperationStatus | None) -> None:
    assert batch.final_status(states(*spec)) is status


def test_a_replay_queues_the_failed_items_again_except_invalid_ones() -> None:
    invalid = ItemState(
        key="bad",
        status=ItemStatus.FAILED,
        error=ErrorInfo(type=ErrorType.INVALID_REQUEST, message="x"),
    )
    done = ItemState(key="ok", status=ItemStatus.SUCCEEDED, attempts=1, response={"id": "1"})
    rejected = ItemState(
        key="no",
        status=ItemStatus.FAILED,
        attempts=3,
        error=ErrorInfo(type=ErrorType.RETRIES_EXHAUSTED, message="x"),
    )
    sent_and_refused = ItemState(
        key="no-2",
        status=ItemStatus.FAILED,
        attempts=1,
        error=ErrorInfo(type=ErrorType.INVALID_REQUEST, message="the request cannot be sent"),
    )
    assert batch.for_replay((invalid, done, rejected, sent_and_refused)) == (
        invalid,
        done,
        ItemState(key="no"),
        ItemState(key="no-2"),
    )


def test_each_chunk_has_its_own_idempotency_key_stable_for_the_same_items() -> None:
    first = batch.chunk_idempotency_key("import-1", ["a", "b"])
    assert first == batch.chunk_idempotency_key("import-1", ["a", "b"])
    assert first.startswith("import-1/")
    assert first != batch.chunk_idempotency_key("import-1", ["a", "c"])
    assert first != batch.chunk_idempotency_key("import-2", ["a", "b"])
    long = batch.chunk_idempotency_key("k" * 255, ["a"])
    assert len(long) <= 255 and long != batch.chunk_idempotency_key("k" * 254, ["a"])


def test_states_survive_the_ledgers_json() -> None:
    found = (
        ItemState(key="a", status=ItemStatus.SUCCEEDED, attempts=1, response={"id": "9"}),
        ItemState(
            key="b",
            status=ItemStatus.FAILED,
            attempts=2,
            error=ErrorInfo(type=ErrorType.TIMEOUT, message="t"),
        ),
    )
    dumped = dump_items(found)
    assert dumped == [
        {"key": "a", "status": "succeeded", "attempts": 1, "response": {"id": "9"}},
        {"key": "b", "status": "failed", "attempts": 2, "error": {"type": "timeout", "message": "t"}},
    ]
    assert load_items(dumped) == found
