"""What cleanup does when the run is ending, and the total clock while the caller holds.

- A run that is ending (cancelled, or out of ``Timeouts.total``) does not build the
  successor of the client it retired: that would only delay its caller by a client build
  (TLS set-up); the next run on the route builds one on its own thread or task.
- A caller that leaves mid-stream (``break``) leaves a live socket: cleanup shuts it down
  before the stream is closed, and says so.
- ``Timeouts.total`` is the caller's budget: it runs on while the caller holds an event
  in its loop body (the first_token and stale clocks do not), on the watchdog thread and
  on the event loop's timer alike.
"""

from __future__ import annotations

from typing import Any

import pytest
from conftest import BREAK, ProviderKit

from lifecycle import RetryPolicy, Timeouts
from providers.loopback import Healthy, StallAfterEvents

pytestmark = pytest.mark.timeout(60)

RETRY = RetryPolicy(max_attempts=2, initial_backoff=0.0, max_backoff=0.0)
LATE = 1.0
"""How late past its deadline a clock may be seen on a busy host; a clock held off by the
caller is seen only when the caller resumes, 1.5 s late here."""


def _steps(attempt: Any, step: str) -> list[str]:
    return [s.detail for s in attempt.diagnostics.cleanup if s.step == step]


def test_a_cancelled_run_does_not_rebuild_its_retired_client(provider: ProviderKit) -> None:
    provider.script([StallAfterEvents(n=1)])
    timeouts = Timeouts(connect=5, first_token=10, stale=10, total=30)
    engine = provider.make_engine([provider.route()], timeouts=timeouts, retry=RETRY)
    run, seen = provider.run_to_end(engine, interrupt_after=0.5)
    assert run.state == "cancelled", (run.state, seen.error)
    (attempt,) = run.attempts
    assert _steps(attempt, "rebuild") == [
        f"{provider.api_mode}: deferred to the next run (this one is cancelled)"
    ]
    provider.settle()
    # The first client and its spare; the spare was not moved in: the next run takes it.
    assert provider.clients().built_count == 2
    assert provider.clients().current_client is None and provider.clients().has_spare


def test_a_run_out_of_time_does_not_rebuild_its_retired_client(provider: ProviderKit) -> None:
    provider.script([StallAfterEvents(n=1)])
    timeouts = Timeouts(connect=1, first_token=1.0, stale=10, total=1.0)
    engine = provider.make_engine([provider.route()], timeouts=timeouts, retry=RETRY)
    run, _ = provider.run_to_end(engine)
    assert run.state == "failed"
    (attempt,) = run.attempts
    assert (attempt.outcome, attempt.diagnostics.stall_clock) == ("deadline", "total")
    assert _steps(attempt, "rebuild") == [
        f"{provider.api_mode}: deferred to the next run (Timeouts.total ran out)"
    ]
    provider.settle()
    assert provider.clients().built_count == 2
    assert provider.clients().current_client is None and provider.clients().has_spare


def test_a_caller_leaving_mid_stream_has_its_socket_shut_before_the_stream_closes(
    provider: ProviderKit,
) -> None:
    provider.script([Healthy(drip=0.05)])
    timeouts = Timeouts(connect=5, first_token=10, stale=10, total=30)
    engine = provider.make_engine([provider.route()], timeouts=timeouts, retry=RETRY)
    run, _ = provider.run_to_end(engine, lambda event: BREAK)
    assert run.state == "cancelled"
    (attempt,) = run.attempts
    steps = [(s.step, s.detail, s.thread) for s in attempt.diagnostics.cleanup]
    assert [step for step, _, _ in steps[:2]] == ["abort", "close_stream"], steps
    assert steps[0][1:] == ("socket shutdown", provider.owner), steps


def test_the_total_clock_runs_on_while_the_caller_holds_an_event(provider: ProviderKit) -> None:
    provider.script([StallAfterEvents(n=1)])
    timeouts = Timeouts(connect=1, first_token=1.0, stale=10, total=1.0)
    engine = provider.make_engine([provider.route()], timeouts=timeouts, retry=RETRY)
    held: list[Any] = []

    def hold_the_first_event(event: Any) -> float | None:
        if held:
            return None
        held.append(event)
        return 2.5

    run, _ = provider.run_to_end(engine, hold_the_first_event)
    assert run.state == "failed"
    (attempt,) = run.attempts
    diag = attempt.diagnostics
    assert (attempt.outcome, diag.stall_clock) == ("deadline", "total")
    assert diag.detection_lateness is not None and diag.detection_lateness < LATE, (
        f"the total clock was seen {diag.detection_lateness:.2f} s after it ran out"
    )
