"""An unparsable or negative ``Retry-After`` is no Retry-After at all.

Servers and proxies send ``soon``, ``120s``, broken HTTP dates and negative numbers. Such
a header must not raise out of the classification (leaving the run in ``connecting``,
the attempt without an outcome and the client lease held): the fault is classified like
its status without the header, and the computed backoff applies. One test per shape,
both providers (real SDKs against the loopback server), both drivers.
"""

from __future__ import annotations

from typing import Any

import pytest

from lifecycle import RetryPolicy, StreamFailed, Timeouts
from providers._sdk.classify import parse_retry_after, status_fault
from providers.loopback import Healthy, HttpError

pytestmark = pytest.mark.timeout(30)

TIMEOUTS = Timeouts(connect=5, first_token=5, stale=5, total=30)
BACKOFF = 0.3
"""The computed backoff (no jitter): what a retry waits when Retry-After is unusable."""
RETRY = RetryPolicy(max_attempts=2, initial_backoff=BACKOFF, max_backoff=BACKOFF, jitter=0.0)

UNUSABLE = ["soon", "120s", "Wed, 32 Foo 2026 99:61:00 GMT", "-5", "nan"]
UNUSABLE_IDS = ["word", "unit-suffix", "malformed-date", "negative", "nan"]


def leases_held(slot: Any) -> int:
    """Streams still counted on the slot's clients (0 once every attempt let go)."""
    return sum(generation.users for generation in (*slot._live, *slot._retired))


@pytest.mark.parametrize("value", UNUSABLE, ids=UNUSABLE_IDS)
def test_classified_like_the_status_without_retry_after(value: str) -> None:
    assert parse_retry_after({"retry-after": value}) is None
    fault = status_fault(503, api_mode="x", message="m", headers={"retry-after": value})
    plain = status_fault(503, api_mode="x", message="m")
    assert (fault.retry_after, fault.retryable, fault.fallback_eligible) == (
        plain.retry_after,
        plain.retryable,
        plain.fallback_eligible,
    )


@pytest.mark.parametrize("value", UNUSABLE, ids=UNUSABLE_IDS)
def test_run_retries_after_the_computed_backoff(provider: Any, value: str) -> None:
    engine = provider.engine(timeouts=TIMEOUTS, retry=RETRY, with_other=False)
    provider.script([HttpError(status=503, headers=(("retry-after", value),)), Healthy()])
    run, seen = provider.run_to_end(engine)
    assert seen.error is None, repr(seen.error)
    assert run.state == "completed"
    first, second = run.attempts
    assert (first.outcome, first.diagnostics.http_status) == ("error", 503)
    assert second.outcome == "completed"
    sent = provider.requests()
    assert len(sent) == 2
    # Neither at once (a negative value read as 0) nor after 120 s: the computed backoff.
    assert sent[1].received_at - sent[0].received_at >= BACKOFF
    assert leases_held(provider.clients()) == 0


@pytest.mark.parametrize("value", UNUSABLE, ids=UNUSABLE_IDS)
def test_last_attempt_fails_with_the_status_fault(provider: Any, value: str) -> None:
    retry = RetryPolicy(max_attempts=1)
    engine = provider.engine(timeouts=TIMEOUTS, retry=retry, with_other=False)
    provider.script([HttpError(status=503, headers=(("retry-after", value),))])
    run, seen = provider.run_to_end(engine)
    assert isinstance(seen.error, StreamFailed), repr(seen.error)
    assert run.state == "failed"
    assert [a.outcome for a in run.attempts] == ["error"]
    assert seen.error.http_status == 503
    assert seen.error.retryable is True
    assert seen.error.retry_after is None
    assert leases_held(provider.clients()) == 0
    assert len(provider.requests()) == 1
