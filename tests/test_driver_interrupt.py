"""``run.interrupt()`` from another thread, and callers that leave the loop early, with
both drivers; and, for async runs, the caller's own cancellation of its task.

The loop raises ``Interrupted`` promptly after the interrupt call (``bounds.PROMPT``),
whatever the run was doing (waiting for headers, reading a stalled stream, sleeping
through a backoff). No request is sent after it, the run ends ``cancelled``, and the
server sees the attempt's connection closed. Cancelling the task that iterates an async
run ends it ``cancelled`` too, re-raises ``CancelledError``, and the server sees the
connection closed promptly after the cancel.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from bounds import PROMPT
from conftest import BREAK, CONSUMER_TASK

from lifecycle import Interrupted, RetryPolicy, Timeouts
from providers.loopback import Healthy, HttpError, StallAfterEvents, StallBeforeHeaders

pytestmark = pytest.mark.timeout(30)

BOUND = PROMPT
# Clocks far beyond the test's length: only interrupt() may end these attempts.
TIMEOUTS = Timeouts(connect=5, first_token=10, stale=10, total=30)
RETRY = RetryPolicy(max_attempts=3, initial_backoff=0.0, max_backoff=0.0)
SETTLE = 0.3
"""How long to keep watching for a request that should never come."""


def run_until_interrupted(provider: Any, engine: Any, delay: float) -> tuple[Any, Any, float]:
    run, seen = provider.run_to_end(engine, interrupt_after=delay)
    assert isinstance(seen.error, Interrupted), f"the loop ended with {seen.error!r}"
    assert seen.interrupt_called_at is not None
    return run, seen, seen.ended_at - seen.interrupt_called_at


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
    assert provider.clients(provider.other_route()).built_count == 0
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
    run, seen = provider.run_to_end(engine, interrupt_after=0.2)
    assert isinstance(seen.error, Interrupted)
    steps = run.attempts[0].diagnostics.cleanup
    aborts = [s for s in steps if s.step == "abort"]
    assert aborts and aborts[0].thread == seen.interrupter == "test-interrupter"
    assert "interrupt" in aborts[0].detail
    for step in steps:
        if step.step != "abort":
            assert step.thread == provider.owner, step


def test_interrupt_before_iterating_sends_nothing(provider: Any) -> None:
    engine = provider.engine(timeouts=TIMEOUTS, retry=RETRY)
    run, seen = provider.run_to_end(engine, interrupt_first=True)
    assert isinstance(seen.error, Interrupted), repr(seen.error)
    assert seen.events == [], "an event after interrupt()"
    assert run.state == "cancelled"
    assert run.attempts == ()
    time.sleep(0.1)
    assert provider.requests() == []
    assert provider.clients().built_count == 0


def test_run_closed_without_iterating_is_cancelled(provider: Any) -> None:
    engine = provider.engine(timeouts=TIMEOUTS, retry=RETRY)
    run, _ = provider.run_to_end(engine, iterate=False)
    assert run.state == "cancelled"
    assert provider.requests() == []


@pytest.mark.parametrize(
    "fault", [Healthy(drip=0.05), StallAfterEvents(n=1)], ids=["dripping", "stalled"]
)
def test_break_out_of_the_loop(provider: Any, fault: Any) -> None:
    engine = provider.engine(timeouts=TIMEOUTS, retry=RETRY)
    provider.script([fault])
    started = time.monotonic()
    run, seen = provider.run_to_end(engine, lambda event: BREAK)
    assert seen.types == ["text"]
    assert seen.state_after_loop == "streaming"
    assert time.monotonic() - started < 2.0, "leaving the loop waited for the stream"
    assert run.state == "cancelled"
    assert [a.outcome for a in run.attempts] == ["interrupted"]
    sent = provider.requests()
    assert len(sent) == 1
    assert provider.server.wait_for_request_closed(sent[0].index, timeout=2.0)
    time.sleep(0.1)
    assert len(provider.requests()) == 1
    assert all(s.thread == provider.owner for s in run.attempts[0].diagnostics.cleanup)


def test_exception_in_the_loop_body_propagates_and_cancels(provider: Any) -> None:
    engine = provider.engine(timeouts=TIMEOUTS, retry=RETRY)
    provider.script([StallAfterEvents(n=1)])

    class Boom(Exception):
        pass

    def boom(event: Any) -> None:
        raise Boom

    run, seen = provider.run_to_end(engine, boom, catch=(Boom,))
    assert isinstance(seen.error, Boom), "the loop body's exception left the loop"
    assert run.state == "cancelled"
    sent = provider.requests()
    assert len(sent) == 1
    assert provider.server.wait_for_request_closed(sent[0].index, timeout=2.0)


def test_interrupt_after_completion_changes_nothing(provider: Any) -> None:
    engine = provider.engine(timeouts=TIMEOUTS, retry=RETRY)
    run, seen = provider.run_to_end(engine)
    assert run.state == "completed"
    run.interrupt()
    assert run.state == "completed"
    assert run.message is not None and run.message.text == seen.text() == provider.text()


# -- async only: the caller cancels the task that iterates the run --------------------------
BACKOFF = RetryPolicy(max_attempts=3, initial_backoff=5.0, max_backoff=5.0, jitter=0.0)
CANCEL_AT: dict[str, tuple[list[Any], RetryPolicy]] = {
    # what the run is doing when its task is cancelled: its faults, its retry policy
    "streaming": ([StallAfterEvents(n=1)], RETRY),
    "connecting": ([StallBeforeHeaders()], RETRY),
    "retrying": ([HttpError(status=529), Healthy()], BACKOFF),
}


def waiting_on_the_server(provider: Any, run: Any, events: list[Any], state: str) -> bool:
    """The run is where the test cancels it: a stalled stream after its first event, a
    request with no headers yet, or (the 529 in) the backoff before a retry."""
    if state == "streaming":
        return bool(events)
    if state == "connecting":
        return bool(provider.requests())
    return bool(run.state == "retrying")


@pytest.mark.parametrize("driver", ["async"])
@pytest.mark.parametrize("state", list(CANCEL_AT))
def test_cancelling_the_consuming_task(provider: Any, driver: str, state: str) -> None:
    """Cancellation is the caller's, never swallowed: the run ends ``cancelled``, its
    connection is closed (as the server sees it) promptly after ``task.cancel()``, and
    ``CancelledError`` reaches the caller promptly too."""
    faults, retry = CANCEL_AT[state]
    engine = provider.engine(timeouts=TIMEOUTS, retry=retry)
    provider.script(faults)
    events: list[Any] = []

    async def main() -> tuple[Any, asyncio.Task[None], float, float]:
        run = engine.astream(messages=[{"role": "user", "content": "Hi"}], max_tokens=64)

        async def consume() -> None:
            async with run:
                async for event in run:
                    events.append(event)

        task = asyncio.create_task(consume(), name="cancelled-caller")
        while not waiting_on_the_server(provider, run, events, state):
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.05)
        assert run.state == state
        cancelled_at = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return run, task, cancelled_at, time.monotonic()

    run, task, cancelled_at, returned_at = provider.run_coroutine(main())
    assert task.cancelled()
    assert run.state == "cancelled"
    assert run.history[-1].dest == "cancelled"
    assert returned_at - cancelled_at <= BOUND, (
        f"CancelledError reached the caller {1000 * (returned_at - cancelled_at):.1f} ms "
        "after task.cancel()"
    )
    (request,) = provider.requests()
    assert provider.server.wait_for_request_closed(request.index, timeout=2.0)
    closed_at = provider.connection_of(request).closed_at
    assert closed_at is not None
    steps = run.attempts[0].diagnostics.cleanup
    if state == "retrying":
        # The 529's cleanup closed its connection before the backoff began.
        assert [a.outcome for a in run.attempts] == ["error"]
        assert closed_at < cancelled_at
    else:
        assert [a.outcome for a in run.attempts] == ["interrupted"]
        assert cancelled_at <= closed_at <= cancelled_at + BOUND, (
            f"the server saw the connection closed {1000 * (closed_at - cancelled_at):.1f} "
            f"ms after task.cancel(); cleanup: {steps}"
        )
    # The cleanup ran in the cancelled task itself, and nothing more is sent.
    assert {"abort", "close"} <= {s.step for s in steps}, steps
    owner = provider.owner.replace(CONSUMER_TASK, "cancelled-caller")
    assert all(s.thread == owner for s in steps), steps
    time.sleep(SETTLE)
    assert len(provider.requests()) == 1
    assert provider.requests(provider.other_model) == []
    assert provider.clients(provider.other_route()).built_count == 0
