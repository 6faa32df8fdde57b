"""A retry's wait that would pass ``Timeouts.total`` moves to the next route, if any.

The wait (a provider's Retry-After, or the computed backoff) is the request's to lose,
not the run's: another route may answer within the budget at once. So a wait reaching
the deadline falls back to the next route, like a Retry-After above
``max_retry_after``; only on the last route does it fail the run. ``decide`` is checked
on both sides of the deadline, with and without a next route, for both kinds of wait;
then one run end to end (real SDKs against the loopback server): a 429 whose
Retry-After outlasts the remaining budget on route 1 and a healthy route 2.
"""

from __future__ import annotations

import random
import time
from typing import Any

import pytest
from bounds import PROMPT

from lifecycle import Fault, RetryPolicy, Timeouts
from lifecycle._core.policy import decide
from providers._sdk.classify import status_fault
from providers.loopback import HttpError

pytestmark = pytest.mark.timeout(30)

NOW = 100.0
WAIT = 5.0
"""The wait in every case: the Retry-After, or the backoff (no jitter)."""
POLICY = RetryPolicy(max_attempts=3, initial_backoff=WAIT, max_backoff=WAIT, jitter=0.0)


def fault(retry_after: float | None) -> Fault:
    headers = {} if retry_after is None else {"retry-after": f"{retry_after:g}"}
    return status_fault(429, api_mode="x", message="rate limited", headers=headers)


CASES = [
    # (retry_after, deadline, has_next, expected kind, expected route)
    pytest.param(WAIT, NOW + WAIT + 1, True, "retry", 0, id="retry-after-fits-next"),
    pytest.param(WAIT, NOW + WAIT + 1, False, "retry", 0, id="retry-after-fits-last"),
    pytest.param(WAIT, NOW + WAIT - 1, True, "fallback", 1, id="retry-after-passes-next"),
    pytest.param(WAIT, NOW + WAIT - 1, False, "fail", 0, id="retry-after-passes-last"),
    pytest.param(WAIT, NOW + WAIT, True, "fallback", 1, id="retry-after-reaches-next"),
    pytest.param(WAIT, NOW + WAIT, False, "fail", 0, id="retry-after-reaches-last"),
    pytest.param(None, NOW + WAIT + 1, True, "retry", 0, id="backoff-fits-next"),
    pytest.param(None, NOW + WAIT + 1, False, "retry", 0, id="backoff-fits-last"),
    pytest.param(None, NOW + WAIT - 1, True, "fallback", 1, id="backoff-passes-next"),
    pytest.param(None, NOW + WAIT - 1, False, "fail", 0, id="backoff-passes-last"),
]


@pytest.mark.parametrize(("retry_after", "deadline", "has_next", "kind", "route"), CASES)
def test_a_wait_past_the_deadline_falls_back_when_a_route_is_left(
    retry_after: float | None, deadline: float, has_next: bool, kind: str, route: int
) -> None:
    decision = decide(
        policy=POLICY,
        fault=fault(retry_after),
        route_index=0,
        route_count=2 if has_next else 1,
        attempts_on_route=1,
        committed=False,
        interrupted=False,
        total_expired=False,
        now=NOW,
        deadline=deadline,
        rng=random.Random(0),
    )
    assert (decision.kind, decision.route_index) == (kind, route), decision
    if kind == "retry":
        assert decision.delay == WAIT
    else:
        assert decision.delay == 0.0, "a fallback or a failure waits for nothing"
    if kind == "fail":
        assert "Timeouts.total" in decision.reason


RETRY_AFTER = 20
"""Longer than the run's whole budget, within max_retry_after (60 s by default)."""


def test_a_429_whose_retry_after_outlasts_the_budget_is_answered_by_the_next_route(
    provider: Any,
) -> None:
    timeouts = Timeouts(connect=5, first_token=5, stale=5, total=10)
    engine = provider.engine(timeouts=timeouts, retry=RetryPolicy(max_attempts=3))
    provider.script([HttpError(status=429, headers=(("retry-after", str(RETRY_AFTER)),))])
    started = time.monotonic()
    run, seen = provider.run_to_end(engine)
    elapsed = time.monotonic() - started
    assert seen.error is None, repr(seen.error)
    assert run.state == "completed"
    assert [(a.route_index, a.outcome) for a in run.attempts] == [(0, "error"), (1, "completed")]
    assert run.attempts[0].diagnostics.http_status == 429
    assert seen.text() == provider.text_of_other()
    assert len(provider.requests()) == 1, "route 1 retried after its Retry-After"
    assert len(provider.requests(provider.other_model)) == 1
    # At once: no wait for the Retry-After, nor for the budget to run out.
    assert elapsed < timeouts.total / 2 + PROMPT
