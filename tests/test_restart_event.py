"""A fallback to another route after output reached the caller, under the default
``on_partial="restart"``: the caller gets a ``restart`` event just before the new
route's first event, and exactly the new route's answer after it (README, "Retries,
fallback and partial output"). Both drivers, both providers as the primary.

A retry on the same route is covered by tests/test_driver_faults.py and a fallback under
``on_partial="continue"`` by tests/test_continue.py; this is the default policy's
fallback, where a machine that restarted only retries would hand the caller the second
model's answer glued to the first one's partial text.
"""

from __future__ import annotations

from typing import Any

import pytest

from lifecycle import RetryPolicy, Timeouts
from providers.loopback import DropAfterEvents, HttpError

pytestmark = pytest.mark.timeout(30)

TIMEOUTS = Timeouts(connect=5, first_token=5, stale=5, total=30)
DELIVERED = 2
"""Meaningful events the primary delivers before its connection drops (both text)."""


def shown(events: list[Any]) -> list[tuple[str, str]]:
    return [(e.type, e.text) for e in events]


def reference_events(provider: Any, route: Any) -> list[tuple[str, str]]:
    """What a healthy run of ``route`` alone hands the caller."""
    engine = provider.make_engine([route], timeouts=TIMEOUTS)
    run, seen = provider.run_to_end(engine)
    assert seen.error is None and run.state == "completed", repr(seen.error)
    return shown(seen.events)


@pytest.mark.parametrize(
    ("max_attempts", "primary_faults", "outcomes"),
    [
        (1, [DropAfterEvents(n=DELIVERED)], [(0, "dropped"), (1, "completed")]),
        (
            2,
            [DropAfterEvents(n=DELIVERED), HttpError(status=529)],
            [(0, "dropped"), (0, "error"), (1, "completed")],
        ),
    ],
    ids=["fallback-at-once", "fallback-after-a-silent-retry"],
)
def test_a_fallback_after_delivered_output_restarts_first(
    provider: Any, max_attempts: int, primary_faults: list[Any], outcomes: list[Any]
) -> None:
    """After a silent retry (a 529, before any event) the restart is still owed: it comes
    before the first event of the attempt that has one, the fallback's."""
    primary = reference_events(provider, provider.route())
    fallback = reference_events(provider, provider.other_route())
    assert [kind for kind, _ in primary[:DELIVERED]] == ["text"] * DELIVERED

    retry = RetryPolicy(max_attempts=max_attempts, initial_backoff=0.0, max_backoff=0.0)
    engine = provider.engine(timeouts=TIMEOUTS, retry=retry)
    provider.script(primary_faults)
    run, seen = provider.run_to_end(engine)

    assert seen.error is None, repr(seen.error)
    assert run.state == "completed"
    assert [(a.route_index, a.outcome) for a in run.attempts] == outcomes
    assert shown(seen.events) == [*primary[:DELIVERED], ("restart", ""), *fallback]
    restart = seen.events[DELIVERED].restart
    assert restart is not None
    last = run.attempts[-1]
    assert (restart.attempt, restart.route_index, restart.api_mode) == (
        len(outcomes),
        1,
        provider.other_api_mode,
    )
    assert last.api_mode == provider.other_api_mode
    assert restart.reason == run.attempts[-2].reason
    # The message is the fallback's answer alone, not the primary's partial text plus it.
    assert run.message is not None
    assert (run.message.api_mode, run.message.text) == (
        provider.other_api_mode,
        provider.text_of_other(),
    )
    # One request per attempt, after each reference run's one.
    assert len(provider.requests()) == 1 + max_attempts
    assert len(provider.requests(provider.other_model)) == 1 + 1
