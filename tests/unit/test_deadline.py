"""The attempt's deadline: a timer signal cuts a call that drags on, and only that call."""

from __future__ import annotations

import signal
import threading
import time

import pytest

from integrations.guard import AttemptTimedOut, deadline


def test_a_block_that_outruns_its_deadline_is_cut() -> None:
    with pytest.raises(AttemptTimedOut, match=r"cut after 0\.05s"), deadline(0.05):
        time.sleep(30)  # what a slow trickle of bytes looks like to the worker: no read times out


def test_after_the_block_the_timer_is_off_and_the_previous_handler_back() -> None:
    before = signal.getsignal(signal.SIGALRM)
    with deadline(0.05):
        assert signal.getitimer(signal.ITIMER_REAL)[0] > 0
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    assert signal.getsignal(signal.SIGALRM) is before


def test_a_timer_someone_else_set_is_left_alone() -> None:
    signal.setitimer(signal.ITIMER_REAL, 30)
    try:
        with deadline(0.01):
            time.sleep(0.05)  # not cut: the other timer holds the signal
        assert 0 < signal.getitimer(signal.ITIMER_REAL)[0] <= 30
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def test_no_deadline_outside_the_main_thread_where_no_signal_arrives() -> None:
    finished: list[bool] = []

    def call() -> None:
        with deadline(0.01):
            time.sleep(0.05)
        finished.append(True)

    thread = threading.Thread(target=call)
    thread.start()
    thread.join()
    assert finished == [True]
