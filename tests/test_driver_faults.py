"""Runs against real faults on the loopback server, with both providers' real SDKs and
both drivers (``engine.stream`` on a thread, ``engine.astream`` in a task).

Timing: a stalled stream is given up ``Timeouts.stale`` (or ``first_token``) after the
last meaningful event, never earlier, and the next attempt starts promptly after that
threshold; the server sees the stalled connection closed promptly too. "Promptly" is
``bounds.PROMPT``, generous so that a busy machine passes and a hang fails; the real
figures (a few milliseconds) are printed by ``tests/benchmarks/bench_lifecycle.py``.
Both sides use ``time.monotonic()`` in this one process.
"""

from __future__ import annotations

from typing import Any

import pytest
from bounds import PROMPT

from lifecycle import RetryPolicy, StreamFailed, Timeouts
from lifecycle._drivers.client_slots import BUILDER_THREAD
from providers.loopback import (
    DropAfterEvents,
    Healthy,
    MalformedEvent,
    PingsOnly,
    StallAfterEvents,
    StallBeforeHeaders,
    recordings,
)

pytestmark = pytest.mark.timeout(30)

STALE = 0.5
BOUND = PROMPT
"""Allowance over the threshold: prompt, not hung (see tests/bounds.py)."""
TIMEOUTS = Timeouts(connect=5, first_token=STALE, stale=STALE, total=30)
RETRY = RetryPolicy(
    max_attempts=2, initial_backoff=0.0, max_backoff=0.0, stale_before_fallback=None
)
"""No backoff: the time to the next attempt is the engine's own (detection and cleanup).
Stalls are retried on their route (the default falls back at once: test_stall_fallback),
so that each fault's recovery shows on the one route, the other provider untouched."""

# fault, attempt 1 outcome, its clock (None: not a stall), meaningful events delivered
FAULTS: list[tuple[Any, str, str | None, int]] = [
    (StallAfterEvents(n=1), "stale", "stale", 1),
    (StallBeforeHeaders(), "stale", "first_token", 0),
    (PingsOnly(interval=0.05), "stale", "first_token", 0),
    (DropAfterEvents(n=2), "dropped", None, 2),
    (MalformedEvent(after_events=0), "dropped", None, 0),
]
FAULT_IDS = ["stall-after-1", "stall-before-headers", "pings-only", "drop-after-2", "malformed-0"]


def stall_threshold(first: Any, before: list[tuple[float, Any]]) -> float:
    """When the stall clock ran out: ``stale`` after the last meaningful event the caller
    received, or ``first_token`` after the request was sent if none was."""
    if before:
        return float(before[-1][0]) + STALE
    return float(first.started_at + first.diagnostics.request_sent_at) + STALE


def check_recovery(
    kit: Any, run: Any, seen: Any, *, outcome: str, clock: str | None, delivered: int
) -> None:
    """Everything the issue asks of one recovered fault, for either provider and driver."""
    me = kit.owner
    expected_text = kit.text()

    # The caller's loop went on, and the retry delivered the right answer.
    assert seen.error is None, f"the loop raised {seen.error!r}"
    assert run.state == "completed"
    assert run.message is not None and run.message.text == expected_text
    assert len(run.attempts) == 2, [(a.outcome, a.reason) for a in run.attempts]
    first, second = run.attempts
    assert (first.outcome, second.outcome) == (outcome, "completed")
    assert first.route_index == second.route_index == 0
    assert first.api_mode == second.api_mode == kit.api_mode
    if clock is not None:
        assert first.diagnostics.stall_clock == clock

    # What the caller saw: the first attempt's events, then (only if some were
    # delivered) a restart just before the second attempt's first event.
    before = seen.received_before(second.started_at)
    assert [e.type for _, e in before] == ["text"] * delivered
    if delivered:
        assert seen.types.count("restart") == 1
        restart_at = seen.types.index("restart")
        assert restart_at == delivered
        restart = seen.events[restart_at].restart
        assert restart is not None and restart.attempt == 2 and restart.api_mode == kit.api_mode
        after = seen.events[restart_at + 1 :]
    else:
        assert "restart" not in seen.types
        after = seen.events
    assert "".join(e.text for e in after if e.type == "text") == expected_text
    assert after[-1].type == "stop"

    # The next attempt started after the threshold (never early) and, for faults that
    # are not stalls, within the stale allowance of the last meaningful event.
    # (How promptly it starts is test_next_attempt_starts_promptly_after_the_stall.)
    threshold = stall_threshold(first, before)
    if clock is not None:
        assert second.started_at >= threshold
    else:
        sent_at = first.started_at + first.diagnostics.request_sent_at
        reference = before[-1][0] if delivered else sent_at
        assert second.started_at - reference <= STALE + BOUND

    # Cleanup: closed and rebuilt by the run's owner (the caller's thread, or its task);
    # only the watchdog (the loop's timer, for an async run) may abort from elsewhere.
    steps = first.diagnostics.cleanup
    names = [s.step for s in steps]
    assert "close" in names and "rebuild" in names, steps
    for step in steps:
        if step.step == "abort":
            assert step.thread in (me, kit.watchdog), step
        else:
            assert step.thread == me, step
    close = next(s for s in steps if s.step == "close")
    assert "retired" not in close.detail, close  # closed now, not left to another run
    if clock is not None:
        assert any(s.step == "abort" and s.thread == kit.watchdog for s in steps), steps
    assert names.index("close") < names.index("rebuild")

    # The stale client itself is closed; its successor (the spare, built on the builder
    # thread once attempt 1's request was out) serves attempt 2, and attempt 2's request
    # had the builder make the next spare.
    kit.settle()
    clients = kit.built[kit.model]
    assert len(clients) == 3
    assert [client.is_closed() for client in clients] == [True, False, False]
    assert kit.clients().built_count == 3
    assert kit.clients().builds_log == [kit.builder, BUILDER_THREAD, BUILDER_THREAD]
    assert kit.clients().current_client is not None and kit.clients().has_spare
    # Nothing of the other provider was touched.
    assert kit.clients(kit.other_route()).built_count == 0
    assert kit.built.get(kit.other_model, []) == []
    assert kit.requests(kit.other_model) == []

    # The server saw exactly two requests, and the first one's connection closed.
    requests = kit.requests()
    assert len(requests) == 2
    assert kit.server.wait_for_request_closed(requests[0].index, timeout=2.0)
    conn = kit.connection_of(requests[0])
    assert conn.closed_at is not None
    if clock is not None:
        assert conn.closed_by in ("fin", "rst")
        assert threshold <= conn.closed_at <= threshold + BOUND, (
            f"the server saw the stalled connection closed "
            f"{1000 * (conn.closed_at - threshold):.1f} ms after the threshold"
        )
    else:
        detected = first.started_at + (first.diagnostics.elapsed or 0.0)
        assert conn.closed_at <= detected + BOUND
    assert requests[1].connection_id != requests[0].connection_id


@pytest.mark.parametrize(("fault", "outcome", "clock", "delivered"), FAULTS, ids=FAULT_IDS)
def test_fault_is_recovered_on_the_same_route(
    provider: Any, fault: Any, outcome: str, clock: str | None, delivered: int
) -> None:
    engine = provider.engine(timeouts=TIMEOUTS, retry=RETRY)
    provider.script([fault, Healthy()])
    run, seen = provider.run_to_end(engine)
    check_recovery(provider, run, seen, outcome=outcome, clock=clock, delivered=delivered)


STALLS = [row for row in FAULTS if row[2] is not None]
STALL_IDS = [i for row, i in zip(FAULTS, FAULT_IDS, strict=True) if row[2] is not None]


@pytest.mark.parametrize(("fault", "outcome", "clock", "delivered"), STALLS, ids=STALL_IDS)
def test_next_attempt_starts_promptly_after_the_stall(
    provider: Any, fault: Any, outcome: str, clock: str, delivered: int
) -> None:
    """The next attempt starts promptly after the stall threshold: detection, the socket
    shutdown waking the reader and cleanup, with zero backoff. Building the successor
    client (TLS set-up: tens of milliseconds, more on a busy machine) is reported apart
    and bounded on its own: it is real work, not waiting."""
    engine = provider.engine(timeouts=TIMEOUTS, retry=RETRY)
    provider.script([fault, Healthy()])
    run, seen = provider.run_to_end(engine)
    assert seen.error is None and run.state == "completed"
    first, second = run.attempts
    threshold = stall_threshold(first, seen.received_before(second.started_at))
    late = second.started_at - threshold
    steps = {s.step: s.at for s in first.diagnostics.cleanup if s.step != "abort"}
    build = steps["rebuild"] - steps["close"]
    timeline = (
        f"attempt 2 started {1000 * late:.1f} ms after the {clock} threshold; cleanup "
        f"(ms after attempt 1 started): "
        + ", ".join(f"{s.step}@{1000 * s.at:.1f} ({s.thread})" for s in first.diagnostics.cleanup)
        + f"; the client build took {1000 * build:.1f} ms"
    )
    assert late >= 0, timeline
    assert late - build <= BOUND, timeline
    assert build <= 2 * BOUND, timeline


def test_single_route_engine_needs_no_other_providers_key(
    provider: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An Anthropic-only engine must not need OPENAI_API_KEY (and vice versa): a cleanup
    aimed at the wrong provider would build that provider's client from the environment."""
    monkeypatch.delenv(provider.other_env_key, raising=False)
    engine = provider.engine(timeouts=TIMEOUTS, retry=RETRY, with_other=False)
    provider.script([StallAfterEvents(n=1), Healthy()])
    run, seen = provider.run_to_end(engine)
    assert seen.error is None, repr(seen.error)
    assert run.state == "completed"
    assert run.message is not None and run.message.text == provider.text()
    assert [a.outcome for a in run.attempts] == ["stale", "completed"]
    assert {a.api_mode for a in run.attempts} == {provider.api_mode}


def test_restart_comes_just_before_the_next_attempts_first_event(provider: Any) -> None:
    engine = provider.engine(timeouts=TIMEOUTS, retry=RETRY)
    provider.script([DropAfterEvents(n=2), Healthy()])
    run, seen = provider.run_to_end(engine)
    assert seen.error is None
    full = provider.text()
    partial = "".join(e.text for e in seen.events[:2])
    assert seen.types[:3] == ["text", "text", "restart"]
    assert full.startswith(partial) and partial != full
    # The message is the final attempt's alone, not the partial text plus the retry.
    assert run.message is not None and run.message.text == full
    assert "".join(e.text for e in seen.events[3:] if e.type == "text") == full
    restart = seen.events[2].restart
    assert restart is not None
    assert (restart.attempt, restart.route_index, restart.api_mode) == (2, 0, provider.api_mode)
    assert restart.reason == run.attempts[0].reason


def test_on_partial_fail_raises_with_the_partial_message(provider: Any) -> None:
    retry = RetryPolicy(max_attempts=3, initial_backoff=0.0, max_backoff=0.0, on_partial="fail")
    engine = provider.engine(timeouts=TIMEOUTS, retry=retry)
    provider.script([DropAfterEvents(n=2), Healthy()])
    run, seen = provider.run_to_end(engine)
    assert isinstance(seen.error, StreamFailed), repr(seen.error)
    assert seen.types == ["text", "text"]
    assert run.state == "failed"
    partial = seen.error.partial_message
    assert partial is not None
    assert partial.text == seen.text() and partial.text
    assert partial.stop_reason is None
    assert len(run.attempts) == 1 and run.attempts[0].outcome == "dropped"
    assert len(provider.requests()) == 1
    assert "on_partial" in str(seen.error)


def test_on_partial_fail_still_retries_invisibly_before_output(provider: Any) -> None:
    retry = RetryPolicy(max_attempts=2, initial_backoff=0.0, max_backoff=0.0, on_partial="fail")
    engine = provider.engine(timeouts=TIMEOUTS, retry=retry)
    provider.script([MalformedEvent(after_events=0), Healthy()])
    run, seen = provider.run_to_end(engine)
    assert seen.error is None
    assert "restart" not in seen.types
    assert run.state == "completed" and len(run.attempts) == 2


def slow_drip(provider: Any, seconds: float = 1.5) -> Healthy:
    """A healthy stream that lasts ``seconds``: longer than the caller holds an event
    below, so a wrongly running stale clock would cut it off mid-stream. Its blocks are
    less than ``stale`` apart (and, with ``HOLD_TIMEOUTS``, its first meaningful event
    comes well within ``first_token``)."""
    blocks = len(recordings.load(provider.name, "text_basic").blocks)
    return Healthy(drip=seconds / blocks)


HOLD_TIMEOUTS = Timeouts(connect=5, first_token=2.0, stale=STALE, total=30)


def test_time_in_the_callers_loop_body_is_not_silence(provider: Any) -> None:
    """The caller holds an event longer than ``stale``: that is not the provider's stall."""
    engine = provider.engine(timeouts=HOLD_TIMEOUTS, retry=RETRY)
    provider.script([slow_drip(provider)])
    held = []

    def slow(event: Any) -> float | None:
        if not held and event.type == "text":
            held.append(event)
            return STALE + 0.2  # the loop body takes that long with this event
        return None

    run, seen = provider.run_to_end(engine, slow)
    assert seen.error is None
    assert run.state == "completed"
    assert len(run.attempts) == 1, [(a.outcome, a.reason) for a in run.attempts]


def test_time_holding_the_restart_event_is_not_silence(provider: Any) -> None:
    """A caller that takes its time over ``restart`` (clearing what it showed) must not
    make the new attempt look stalled."""
    engine = provider.engine(timeouts=HOLD_TIMEOUTS, retry=RETRY)
    provider.script([DropAfterEvents(n=1), slow_drip(provider)])

    def slow(event: Any) -> float | None:
        return STALE + 0.3 if event.type == "restart" else None

    run, seen = provider.run_to_end(engine, slow)
    assert seen.error is None, repr(seen.error)
    assert run.state == "completed"
    assert [a.outcome for a in run.attempts] == ["dropped", "completed"], [
        (a.outcome, a.reason) for a in run.attempts
    ]
    assert run.message is not None and run.message.text == provider.text()
