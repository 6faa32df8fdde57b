"""The default policy after a stall: a stall is the provider's, not the request's, so a
stale attempt falls back to the next route at once, and the same route is retried after
a stall only when it is the last route or when the caller asks for it
(``RetryPolicy(stale_before_fallback=...)``). Faults that fail fast (a drop, 5xx, 529,
429) keep their own rule: retried on the route up to ``max_attempts``.

Both drivers, both providers, the real SDKs over the loopback server, the default
``RetryPolicy()`` unless a test says otherwise."""

from __future__ import annotations

import time
from typing import Any

import pytest

from lifecycle import RetryPolicy, StreamFailed, Timeouts
from providers.loopback import (
    DropAfterEvents,
    Healthy,
    HttpError,
    StallAfterEvents,
    StallAfterHeaders,
)

pytestmark = pytest.mark.timeout(60)

BUDGET = 1.0
"""The stall clocks (first_token and stale) of these tests, in seconds."""
TIMEOUTS = Timeouts(connect=5, first_token=BUDGET, stale=BUDGET, total=30)
SLACK = 1.0
"""Time to the answer beyond the one stall budget: a client build (~60 ms of TLS set-up),
the healthy stream and a busy machine fit in it many times over; a second stall on the
first route (another whole budget) does not."""

STALLS = {
    "after_headers": (StallAfterHeaders(), "first_token"),
    "after_first_event": (StallAfterEvents(n=1), "stale"),
}


@pytest.mark.parametrize("stall", list(STALLS))
def test_a_stall_falls_back_at_once_by_default(provider: Any, stall: str) -> None:
    fault, clock = STALLS[stall]
    engine = provider.engine(timeouts=TIMEOUTS, retry=RetryPolicy())
    provider.script([fault, fault, fault])  # a provider that keeps stalling
    provider.script([Healthy()], model=provider.other_model)
    started = time.monotonic()
    run, seen = provider.run_to_end(engine)
    took = seen.ended_at - started
    assert seen.error is None, repr(seen.error)
    assert [(a.route_index, a.outcome) for a in run.attempts] == [(0, "stale"), (1, "completed")]
    assert run.attempts[0].diagnostics.stall_clock == clock
    assert len(provider.requests()) == 1
    assert len(provider.requests(provider.other_model)) == 1
    assert run.message is not None and run.message.text == provider.text_of_other()
    # Output delivered before the stall is announced as discarded; none, no restart.
    assert seen.types.count("restart") == (1 if stall == "after_first_event" else 0)
    assert [t.dest for t in run.history].count("retrying") == 0
    assert BUDGET <= took < BUDGET + SLACK, f"answered {took:.3f}s after the run began"


def test_a_stall_on_the_last_route_is_retried_there(provider: Any) -> None:
    engine = provider.engine(timeouts=TIMEOUTS, retry=RetryPolicy())
    provider.script([StallAfterHeaders()])
    provider.script([StallAfterHeaders(), Healthy()], model=provider.other_model)
    run, seen = provider.run_to_end(engine)
    assert seen.error is None, repr(seen.error)
    assert [(a.route_index, a.outcome) for a in run.attempts] == [
        (0, "stale"),
        (1, "stale"),
        (1, "completed"),
    ]
    assert len(provider.requests()) == 1
    assert len(provider.requests(provider.other_model)) == 2


def test_a_single_route_that_stalls_is_retried_per_max_attempts(provider: Any) -> None:
    engine = provider.engine(
        timeouts=Timeouts(connect=5, first_token=0.5, stale=0.5, total=30),
        retry=RetryPolicy(),
        with_other=False,
    )
    provider.script([StallAfterHeaders()] * 4)
    run, seen = provider.run_to_end(engine)
    assert isinstance(seen.error, StreamFailed), repr(seen.error)
    assert run.state == "failed"
    assert [(a.route_index, a.outcome) for a in run.attempts] == [(0, "stale")] * 3
    assert len(provider.requests()) == RetryPolicy().max_attempts == 3


@pytest.mark.parametrize(("stale_before_fallback", "stale_on_route_0"), [(None, 3), (2, 2), (1, 1)])
def test_same_route_retries_after_a_stall_when_the_caller_asks(
    provider: Any, stale_before_fallback: int | None, stale_on_route_0: int
) -> None:
    retry = RetryPolicy(
        initial_backoff=0.0, max_backoff=0.0, stale_before_fallback=stale_before_fallback
    )
    engine = provider.engine(
        timeouts=Timeouts(connect=5, first_token=0.5, stale=0.5, total=30), retry=retry
    )
    provider.script([StallAfterHeaders()] * 3)
    run, seen = provider.run_to_end(engine)
    assert seen.error is None, repr(seen.error)
    assert [(a.route_index, a.outcome) for a in run.attempts] == [(0, "stale")] * (
        stale_on_route_0
    ) + [(1, "completed")]
    assert len(provider.requests()) == stale_on_route_0


# Faults that end an attempt at once cost a retry nothing but its backoff: the default
# keeps retrying them on the route, up to max_attempts, before the next route.
OWN_RULE = {
    "drop": (DropAfterEvents(n=1), "dropped"),
    "503": (HttpError(status=503), "error"),
    "529": (HttpError(status=529), "error"),
    "429_retry_after": (HttpError(status=429, headers=(("retry-after", "0"),)), "error"),
}


@pytest.mark.parametrize("fault_name", list(OWN_RULE))
def test_a_fast_fault_is_still_retried_on_its_route(provider: Any, fault_name: str) -> None:
    fault, outcome = OWN_RULE[fault_name]
    engine = provider.engine(timeouts=TIMEOUTS, retry=RetryPolicy())
    provider.script([fault, Healthy()])
    run, seen = provider.run_to_end(engine)
    assert seen.error is None, repr(seen.error)
    assert [(a.route_index, a.outcome) for a in run.attempts] == [(0, outcome), (0, "completed")]
    assert provider.requests(provider.other_model) == []
