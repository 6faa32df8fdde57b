"""A run closed before it was iterated (``with run: pass``) is cancelled: iterating it
afterwards raises ``Interrupted`` (as an interrupt before the loop does), sends nothing
and changes nothing; a run iterated to its end iterates empty the next time. Both
providers, both drivers, the real SDKs against the loopback server.
"""

from __future__ import annotations

from typing import Any

import pytest

from lifecycle import AsyncRun, Interrupted, Run, Timeouts

pytestmark = pytest.mark.timeout(30)

TIMEOUTS = Timeouts(connect=5, first_token=5, stale=5, total=30)


def iterate(provider: Any, run: Any) -> list[Any]:
    """Iterate ``run`` again with the driver's own loop; returns the events."""
    if provider.is_async:
        assert isinstance(run, AsyncRun)

        async def again() -> list[Any]:
            return [event async for event in run]

        return provider.run_coroutine(again())
    assert isinstance(run, Run)
    return list(run)


def test_iterating_after_an_empty_with_block_raises_interrupted(provider: Any) -> None:
    engine = provider.engine(timeouts=TIMEOUTS, with_other=False)
    run, _ = provider.run_to_end(engine, iterate=False)
    assert run.state == "cancelled"
    with pytest.raises(Interrupted) as raised:
        iterate(provider, run)
    assert raised.value.attempts == ()
    assert run.state == "cancelled"
    assert [(t.source, t.trigger, t.dest) for t in run.history] == [
        ("idle", "interrupt", "cancelled")
    ]
    assert provider.requests() == []


def test_a_completed_run_iterates_empty_again(provider: Any) -> None:
    engine = provider.engine(timeouts=TIMEOUTS, with_other=False)
    run, seen = provider.run_to_end(engine)
    assert seen.error is None and run.state == "completed"
    assert iterate(provider, run) == []
    assert run.state == "completed"
    assert len(provider.requests()) == 1
