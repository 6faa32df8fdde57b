"""The observer of real closes (``tests/real_closes.py``) sees what ran, so that the
``no_foreign_close`` invariant can fail: a stalled attempt's socket is shut down by the
watchdog and closed by the run's owner, and a close slipped into the abort is caught."""

from __future__ import annotations

import contextlib
import contextvars
import socket
from typing import Any

import anthropic._base_client
import pytest
import real_closes
from invariants import (
    WATCHDOG,
    InvariantViolation,
    check_run,
    drive_async,
    drive_sync,
    inv_no_foreign_close,
    start_run,
)

from lifecycle import RetryPolicy, Timeouts
from lifecycle._drivers import connection as _abort
from providers.loopback import Healthy, StallAfterEvents

TIMEOUTS = Timeouts(connect=5, first_token=2.0, stale=0.3, total=20)
RETRY = RetryPolicy(max_attempts=2, initial_backoff=0.0, max_backoff=0.0)


def drive(
    provider: Any,
    key: str,
    script: list[Any],
    timeouts: Timeouts = TIMEOUTS,
    interrupt_after: float | None = None,
) -> Any:
    engine = provider.engine(timeouts=timeouts, retry=RETRY, with_other=False)
    flavor = "async" if provider.is_async else "sync"
    record = start_run(engine, provider.server, key, flavor, script)
    if interrupt_after is not None:
        record.interrupt_later(interrupt_after)  # from a timer thread of its own
    if provider.is_async:
        provider.run_coroutine(drive_async(record))
    else:
        drive_sync(record)
    return record


def test_the_watchdog_shuts_the_stalled_socket_and_the_owner_closes_it(provider: Any) -> None:
    record = drive(provider, f"observed-{provider.model}", [StallAfterEvents(n=1), Healthy()])
    check_run(record)
    run = record.run
    assert [a.outcome for a in run.attempts] == ["stale", "completed"]
    holdings = real_closes.trace_of(run).holdings
    stalled = [h for h in holdings if h.connection.cleaned_seq is not None]
    assert len(stalled) == 1, [h.socket.description for h in holdings]
    calls = stalled[0].socket.calls
    shutdowns = [c for c in calls if c.kind == "socket.shutdown" and c.was_open]
    closes = [c for c in calls if c.closes]
    # The first shutdown is the watchdog's abort; the owner's cleanup shuts it again.
    if provider.is_async:
        assert shutdowns[0].foreign == "the loop watchdog's timer", shutdowns[0]
        # asyncio closes the socket itself, in a callback of the loop's own, after its
        # transport's close (or abort): from the owner's task, or from the loop's reader
        # seeing the shutdown's EOF first (no task). Never off the loop's thread.
        owner_thread, _, owner_task = run.owner.partition("/")
        assert any(c.kind.startswith("transport.") for c in closes), closes
        assert all(c.thread == owner_thread and c.task in (None, owner_task) for c in closes)
    else:
        assert shutdowns[0].thread == WATCHDOG, shutdowns[0]
        assert [(c.kind, c.thread) for c in closes] == [("socket.close", run.owner)]
    assert shutdowns[0].seq < closes[0].seq
    assert not [c for c in calls if c.foreign is not None and c.kind != "socket.shutdown"]


@pytest.mark.parametrize("aborter", ["watchdog", "interrupter"])
def test_a_close_slipped_into_the_abort_is_caught(
    provider: Any, monkeypatch: pytest.MonkeyPatch, aborter: str
) -> None:
    """The fd-reuse hazard itself: the abort (watchdog thread, loop timer, a thread calling
    interrupt()) also closes the socket. The cleanup records are the same as without it;
    only the observer sees."""
    shutdown = _abort._shutdown

    def shutdown_and_close(sock: Any) -> None:
        shutdown(sock)
        real = getattr(sock, "_sock", sock)
        if isinstance(real, socket.socket):
            with contextlib.suppress(OSError):
                real.close()

    monkeypatch.setattr(_abort, "_shutdown", shutdown_and_close)
    # Under asyncio the closed socket leaves its transport waiting: a short total ends it.
    stale = 0.3 if aborter == "watchdog" else 5.0
    short = Timeouts(connect=2, first_token=1.0, stale=stale, total=2.0)
    script = [StallAfterEvents(n=1), Healthy()]
    interrupt_after = 0.3 if aborter == "interrupter" else None
    record = drive(provider, f"closing-{aborter}-{provider.model}", script, short, interrupt_after)
    with pytest.raises(InvariantViolation) as caught:
        inv_no_foreign_close(record)
    if aborter == "interrupter":
        where = "AsyncRun.interrupt()" if provider.is_async else "Run.interrupt()"
    else:
        where = "the loop watchdog's timer" if provider.is_async else "the watchdog thread"
    assert f"closed from {where}" in str(caught.value), record.describe()


def test_a_sync_close_counts_without_setting_a_context_variable() -> None:
    """The garbage collector runs a sync httpx client's close (the SDKs' ``__del__``); a
    close wrapper that set a context variable there would re-enter ``ContextVar.set`` when
    the collection was triggered inside another set, which frees the HAMT that set is
    still walking on CPython < 3.12 (python/cpython#148891: the lowest leg's segfaults)."""
    real_closes.install()
    base = anthropic._base_client
    http = getattr(base, "httpx", None) or base.httpx2  # anthropic 2.x is on httpx2
    inside: list[tuple[bool, set[Any]]] = []

    class Recording(http.BaseTransport):  # type: ignore[misc, name-defined]
        def close(self) -> None:
            inside.append((real_closes.in_client_close(), set(contextvars.copy_context())))

    client = base.SyncHttpxClientWrapper(transport=Recording())
    before = set(contextvars.copy_context())
    client.close()
    assert inside == [(True, before)], "seen inside the close, and no context variable set"
    assert not real_closes.in_client_close()
