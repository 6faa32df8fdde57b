"""The attempt's clocks count from the request sent, and each clock is its own.

``ttfb`` / ``ttft`` and the ``first_token`` deadline measure the provider, so they start
when the request is sent, not when the attempt started: building the attempt's client
(TLS set-up, a caller's slow factory) is not provider latency, and must neither read as
such nor make the attempt stale. ``first_token`` and ``stale`` are set far apart here,
so a clock that took the other's value (or started at the other's moment) fails.
"""

from __future__ import annotations

import time
from typing import Any

import anthropic
import openai
import pytest
from conftest import ProviderKit

from lifecycle import RetryPolicy, Timeouts
from providers.loopback import Healthy, StallAfterEvents, StallAfterHeaders

SERVER_DELAY = 0.3
"""Seconds the server holds the status line back (``Healthy(head_delay=...)``)."""
FACTORY_DELAY = 0.8
"""Seconds the route's client factory takes: the bound below allows half of it, so
scheduling noise passes and a clock that counts the build does not."""
SHORT = 0.5
LONG = 10.0
DETECTION = 1.0
"""How late past its deadline a stall may be seen on a busy host (a hung clock, or the
other clock's deadline, is seconds away)."""
RETRY = RetryPolicy(max_attempts=2, initial_backoff=0.0, max_backoff=0.0)


def slow_factory(provider: ProviderKit, delay: float) -> Any:
    server = provider.server
    if provider.name == "anthropic":
        cls: Any = anthropic.AsyncAnthropic if provider.is_async else anthropic.Anthropic
        base = server.anthropic_base_url
    else:
        cls = openai.AsyncOpenAI if provider.is_async else openai.OpenAI
        base = server.openai_base_url

    def build() -> Any:
        time.sleep(delay)  # a caller's factory doing slow set-up (on the run's thread)
        return cls(base_url=base, api_key="test")

    return build


def one_run(provider: ProviderKit, timeouts: Timeouts, script: list[Any], **route: Any) -> Any:
    provider.script(script)
    engine = provider.make_engine([provider.route(**route)], timeouts=timeouts, retry=RETRY)
    run, seen = provider.run_to_end(engine)
    assert seen.error is None, (seen.error, run.attempts)
    assert run.state == "completed"
    return run


def test_ttfb_and_ttft_count_from_the_request_sent(provider: ProviderKit) -> None:
    timeouts = Timeouts(connect=5, first_token=5.0, stale=5.0, total=30)
    run = one_run(
        provider,
        timeouts,
        [Healthy(head_delay=SERVER_DELAY)],
        factory=slow_factory(provider, FACTORY_DELAY),
    )
    (attempt,) = run.attempts
    diag = attempt.diagnostics
    assert diag.request_sent_at is not None and diag.request_sent_at >= FACTORY_DELAY
    assert diag.ttfb is not None and diag.ttft is not None
    bound = SERVER_DELAY + FACTORY_DELAY / 2
    assert SERVER_DELAY <= diag.ttfb < bound, f"ttfb {diag.ttfb:.3f}"
    assert SERVER_DELAY <= diag.ttft < bound, f"ttft {diag.ttft:.3f}"
    assert diag.ttfb <= diag.ttft


def test_a_client_build_slower_than_first_token_is_not_a_stall(provider: ProviderKit) -> None:
    """The first_token clock starts when the request is sent: a factory that takes
    longer than it does not make the attempt stale."""
    # 1 s: a first event is milliseconds away, even on a busy host; the build takes 1.5 s.
    timeouts = Timeouts(connect=5, first_token=1.0, stale=1.0, total=30)
    run = one_run(provider, timeouts, [Healthy()], factory=slow_factory(provider, 1.5))
    assert [(a.outcome, a.diagnostics.stall_clock) for a in run.attempts] == [("completed", None)]


@pytest.mark.parametrize(
    ("clock", "first_token", "stale", "fault"),
    [
        ("first_token", SHORT, LONG, StallAfterHeaders()),
        ("stale", LONG, SHORT, StallAfterEvents(n=1)),
    ],
    ids=["first_token", "stale"],
)
def test_each_stall_clock_fires_on_its_own_deadline(
    provider: ProviderKit, clock: str, first_token: float, stale: float, fault: Any
) -> None:
    """Only ``clock`` can fire in time: the other is 10 s away. The deadline it fired at
    is its own value past its own start (the request sent; the first event)."""
    timeouts = Timeouts(connect=5, first_token=first_token, stale=stale, total=30)
    run = one_run(provider, timeouts, [fault, Healthy()])
    stalled, retried = run.attempts
    diag = stalled.diagnostics
    assert (stalled.outcome, diag.stall_clock) == ("stale", clock), stalled.reason
    assert stalled.reason == f"no meaningful event within Timeouts.{clock}"
    assert retried.outcome == "completed"
    assert diag.request_sent_at is not None and diag.stall_deadline is not None
    sent_at = stalled.started_at + diag.request_sent_at
    if clock == "first_token":
        assert diag.stall_deadline - sent_at == pytest.approx(SHORT, abs=0.01)
    else:
        assert diag.ttft is not None
        # From the first event on (plus the caller's time with it: a few ms, or a wait
        # for the GIL on a busy host).
        since_first_event = diag.stall_deadline - (sent_at + diag.ttft)
        assert SHORT <= since_first_event < SHORT + DETECTION / 2, since_first_event
    assert diag.detection_lateness is not None and 0 <= diag.detection_lateness < DETECTION
