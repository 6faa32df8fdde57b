"""``run.interrupt()`` from another thread, and callers that leave the loop early.

The issue's bound: the loop raises ``Interrupted`` within 50 ms of the interrupt call,
whatever the run was doing (waiting for headers, reading a stalled stream, sleeping
through a backoff). No request is sent after it, the run ends ``cancelled``, and the
server sees the attempt's connection closed.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from lifecycle import Interrupted, RetryPolicy, Timeouts
from providers.loopback import Healthy, HttpError, StallAfterEvents, StallBeforeHeaders

pytestmark = pytest.mark.timeout(30)

BOUND = 0.050
# Clocks far beyond the test's length: only interrupt() may end these attempts.
TIMEOUTS = Timeouts(connect=5, first_token=10, stale=10, total=30)
RETRY = RetryPolicy(max_attempts=3, initial_backoff=0.0, max_backoff=0.0)
SETTLE = 0.3
"""How long to keep watching for a request that should never come."""


class Interrupter:
    """Calls ``run.interrupt()`` from a timer thread and notes when it did."""

    def __init__(self, run: Any, delay: float) -> None:
        self.run = run
        self.called_at: float | None = None
        self.thread_name: str | None = None
        self.timer = threading.Timer(delay, self._fire)
        self.timer.name = "test-interrupter"

    def _fire(self) -> None:
        self.thread_name = threading.current_thread().name
        self.called_at = time.monotonic()
        self.run.interrupt()

    def __enter__(self) -> Interrupter:
        self.timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.timer.cancel()
        self.timer.join()


def run_until_interrupted(provider: Any, engine: Any, delay: float) -> tuple[Any, Any, float]:
    with provider.stream(engine) as run, Interrupter(run, delay) as interrupter:
        seen = provider.consume(run)
        raised_at = time.monotonic()
    assert isinstance(seen.error, Interrupted), f"the loop ended with {seen.error!r}"
    assert interrupter.called_at is not None
    return run, seen, raised_at - interrupter.called_at


def check_cancelled(provider: Any, run: Any, latency: float, *, requests: int) -> None:
    assert latency <= BOUND, (
        f"Interrupted raised {1000 * latency:.1f} ms after interrupt(); "
        f"cleanup: {run.attempts[-1].diagnostics.cleanup if run.attempts else None}"
    )
    assert run.state == "cancelled"
    assert run.history[-1].dest == "cancelled"
    # Nothing more is sent, now or a little later.
    time.sleep(SETTLE)
    sent = provider.requests()
    assert len(sent) == requests, [r.fault for r in sent]
    assert provider.requests(provider.other_model) == []
    assert provider.other_route().sync_clients.built_count == 0
    # The attempt's connection is closed, as the server sees it.
    last = sent[-1]
    assert provider.server.wait_for_request_closed(last.index, timeout=2.0)
    assert provider.connection_of(last).closed_at is not None


def test_interrupt_while_connecting(provider: Any) -> None:
    engine = provider.engine(timeouts=TIMEOUTS, retry=RETRY)
    provider.script([StallBeforeHeaders()])
    run, seen, latency = run_until_interrupted(provider, engine, 0.3)
    assert seen.events == []
    assert [a.outcome for a in run.attempts] == ["interrupted"]
    check_cancelled(provider, run, latency, requests=1)
    assert run.message is not None and run.message.text == ""


def test_interrupt_while_streaming(provider: Any) -> None:
    engine = provider.engine(timeouts=TIMEOUTS, retry=RETRY)
    provider.script([StallAfterEvents(n=1)])
    run, seen, latency = run_until_interrupted(provider, engine, 0.3)
    assert seen.types == ["text"]
    assert [a.outcome for a in run.attempts] == ["interrupted"]
    check_cancelled(provider, run, latency, requests=1)
    # What was delivered stays readable.
    assert run.message is not None and run.message.text == seen.text()


def test_interrupt_during_backoff(provider: Any) -> None:
    retry = RetryPolicy(max_attempts=3, initial_backoff=5.0, max_backoff=5.0, jitter=0.0)
    engine = provider.engine(timeouts=TIMEOUTS, retry=retry)
    provider.script([HttpError(status=529), Healthy()])
    started = time.monotonic()
    run, seen, latency = run_until_interrupted(provider, engine, 0.4)
    assert time.monotonic() - started < 2.0, "the backoff was slept through"
    assert seen.events == []
    assert [a.outcome for a in run.attempts] == ["error"]
    assert run.history[-2].dest == "retrying"
    check_cancelled(provider, run, latency, requests=1)


def test_interrupt_records_who_aborted(provider: Any) -> None:
    engine = provider.engine(timeouts=TIMEOUTS, retry=RETRY)
    provider.script([StallAfterEvents(n=1)])
    with provider.stream(engine) as run, Interrupter(run, 0.2) as interrupter:
        seen = provider.consume(run)
    assert isinstance(seen.error, Interrupted)
    steps = run.attempts[0].diagnostics.cleanup
    me = threading.current_thread().name
    aborts = [s for s in steps if s.step == "abort"]
    assert aborts and aborts[0].thread == interrupter.thread_name
    assert "interrupt" in aborts[0].detail
    for step in steps:
        if step.step != "abort":
            assert step.thread == me, step


def test_interrupt_before_iterating_sends_nothing(provider: Any) -> None:
    engine = provider.engine(timeouts=TIMEOUTS, retry=RETRY)
    run = provider.stream(engine)
    run.interrupt()
    with run, pytest.raises(Interrupted):
        for _ in run:
            pytest.fail("an event after interrupt()")
    assert run.state == "cancelled"
    assert run.attempts == ()
    time.sleep(0.1)
    assert provider.requests() == []
    assert provider.route().sync_clients.built_count == 0


def test_run_closed_without_iterating_is_cancelled(provider: Any) -> None:
    engine = provider.engine(timeouts=TIMEOUTS, retry=RETRY)
    with provider.stream(engine) as run:
        pass
    assert run.state == "cancelled"
    assert provider.requests() == []


@pytest.mark.parametrize(
    "fault", [Healthy(drip=0.05), StallAfterEvents(n=1)], ids=["dripping", "stalled"]
)
def test_break_out_of_the_loop(provider: Any, fault: Any) -> None:
    engine = provider.engine(timeouts=TIMEOUTS, retry=RETRY)
    provider.script([fault])
    started = time.monotonic()
    with provider.stream(engine) as run:
        for event in run:
            assert event.type == "text"
            break
        assert run.state == "streaming"
    assert time.monotonic() - started < 2.0, "leaving the loop waited for the stream"
    assert run.state == "cancelled"
    assert [a.outcome for a in run.attempts] == ["interrupted"]
    sent = provider.requests()
    assert len(sent) == 1
    assert provider.server.wait_for_request_closed(sent[0].index, timeout=2.0)
    time.sleep(0.1)
    assert len(provider.requests()) == 1
    me = threading.current_thread().name
    assert all(s.thread == me for s in run.attempts[0].diagnostics.cleanup)


def test_exception_in_the_loop_body_propagates_and_cancels(provider: Any) -> None:
    engine = provider.engine(timeouts=TIMEOUTS, retry=RETRY)
    provider.script([StallAfterEvents(n=1)])

    class Boom(Exception):
        pass

    with pytest.raises(Boom), provider.stream(engine) as run:
        for _ in run:
            raise Boom
    assert run.state == "cancelled"
    sent = provider.requests()
    assert len(sent) == 1
    assert provider.server.wait_for_request_closed(sent[0].index, timeout=2.0)


def test_interrupt_after_completion_changes_nothing(provider: Any) -> None:
    engine = provider.engine(timeouts=TIMEOUTS, retry=RETRY)
    with provider.stream(engine) as run:
        seen = provider.consume(run)
    assert run.state == "completed"
    run.interrupt()
    assert run.state == "completed"
    assert run.message is not None and run.message.text == seen.text() == provider.text()
