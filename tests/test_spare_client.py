"""The successor client is ready before it is needed: each used client slot keeps one
spare, built on the builder thread (never on a run's thread after the slot's first
client, never on an event loop), so the attempt after a fault sends its request without
any factory call on its path. Real SDKs over loopback HTTP, both drivers and providers."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from conftest import REQUEST

from lifecycle import RetryPolicy, StreamFailed, Timeouts
from lifecycle._drivers.client_slots import BUILDER_THREAD
from providers.loopback import Healthy, StallAfterEvents

RETRY_ONCE = RetryPolicy(max_attempts=2, initial_backoff=0.0, max_backoff=0.0)
STALL = Timeouts(connect=5, first_token=2.0, stale=0.5, total=30)
SLOW_BUILD = 0.2
"""Seconds a slow factory sleeps: above any loop lag the suite allows (LOOP_LAG)."""
LOOP_LAG = 0.1
"""Longest pause of the event loop allowed while a slow factory runs: a factory run on
the loop would pause it SLOW_BUILD at least; a busy two-core host pauses it far less."""


class Calls:
    """Each factory call: (thread name, monotonic time at its start)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float]] = []
        self.lock = threading.Lock()

    def wrap(self, factory: Callable[[], Any], *, sleep: float = 0.0) -> Callable[[], Any]:
        def recorded() -> Any:
            with self.lock:
                self.calls.append((threading.current_thread().name, time.monotonic()))
            if sleep:
                time.sleep(sleep)
            return factory()

        return recorded

    def __repr__(self) -> str:
        return f"factory calls on {self.threads()}"

    def threads(self) -> list[str]:
        return [name for name, _ in self.calls]


def observed_route(provider: Any, calls: Calls, *, sleep: float = 0.0) -> Any:
    route = provider.route()
    route.client_factory = calls.wrap(route.client_factory, sleep=sleep)
    return route


def test_after_a_stall_the_next_request_goes_out_without_a_factory_call(provider: Any) -> None:
    calls = Calls()
    route = observed_route(provider, calls)
    engine = provider.make_engine([route], timeouts=STALL, retry=RETRY_ONCE)
    provider.script([StallAfterEvents(n=1), Healthy()])
    run, seen = provider.run_to_end(engine)
    assert run.state == "completed", seen.error
    stale, retry = run.attempts
    stalled_at = stale.diagnostics.stall_deadline
    sent_at = retry.started_at + retry.diagnostics.request_sent_at
    caller = threading.current_thread().name
    between = [name for name, at in calls.calls if stalled_at <= at <= sent_at]
    assert caller not in between, f"factory called on the run's thread during recovery: {calls}"
    provider.settle()
    # The slot's first client (on the caller's thread for sync, never on the loop for
    # async), its spare, and the spare that replaced the one moved in after the stall.
    first = BUILDER_THREAD if provider.is_async else caller
    assert calls.threads() == [first, BUILDER_THREAD, BUILDER_THREAD]
    assert provider.clients(route).builds_log == [first, BUILDER_THREAD, BUILDER_THREAD]
    rebuild = [s for s in stale.diagnostics.cleanup if s.step == "rebuild"]
    assert [s.detail for s in rebuild] == [f"{provider.api_mode} client generation 2"]


@pytest.mark.parametrize("driver", ["async"])
def test_an_async_factory_that_sleeps_never_blocks_the_loop(provider: Any) -> None:
    calls = Calls()
    route = observed_route(provider, calls, sleep=SLOW_BUILD)
    engine = provider.make_engine([route], timeouts=STALL, retry=RETRY_ONCE)
    provider.script([StallAfterEvents(n=1), Healthy()])
    longest = [0.0]

    async def ticker(stop: asyncio.Event) -> None:
        last = time.monotonic()
        while not stop.is_set():
            await asyncio.sleep(0.005)
            at = time.monotonic()
            longest[0] = max(longest[0], at - last)
            last = at

    async def main() -> Any:
        stop = asyncio.Event()
        ticking = asyncio.create_task(ticker(stop))
        await asyncio.sleep(0.01)
        try:
            async with engine.astream(**REQUEST) as run:
                async for _ in run:
                    pass
            # Three slow builds: the first, its spare, the spare after the stall (awaited
            # here, as a join would pause the loop).
            building = provider.clients(route).building
            if building is not None:
                await asyncio.wrap_future(building)
            await engine.aclose()
        finally:
            stop.set()
            await ticking
        return run

    run = provider.run_coroutine(main())
    assert run.state == "completed"
    assert longest[0] < LOOP_LAG, f"the loop paused {longest[0] * 1e3:.0f} ms ({calls})"
    assert calls.threads() == [BUILDER_THREAD] * 3


def test_a_factory_error_in_the_builder_reaches_the_attempt_that_needed_it(
    provider: Any,
) -> None:
    """The spare's build fails (a secret in the error's text): the stall's cleanup
    records the failed rebuild, and the next attempt fails with that error, classified as
    a client build fault, its text redacted, as when the factory ran on its own thread.
    The builder does not retry: one more factory call per attempt that needs a client."""
    calls = Calls()
    secret = "sk-spare-0123456789abcdef0123456789abcdef"
    route = provider.route()
    good = route.client_factory

    def flaky() -> Any:
        if len(calls.calls) == 1:
            return good()
        raise RuntimeError(f"vault refused api_key={secret}")

    route.client_factory = calls.wrap(flaky)
    engine = provider.make_engine([route], timeouts=STALL, retry=RETRY_ONCE)
    provider.script([StallAfterEvents(n=1), Healthy()])
    run, seen = provider.run_to_end(engine)
    assert isinstance(seen.error, StreamFailed)
    stale, second = run.attempts
    rebuild = [s.detail for s in stale.diagnostics.cleanup if s.step == "rebuild"]
    assert len(rebuild) == 1 and "rebuild failed: RuntimeError" in rebuild[0]
    # As when the factory raised on the attempt's own thread (client_build_fault).
    assert second.outcome == "dropped" and second.diagnostics.error_type == "RuntimeError"
    assert f"client factory of {route.name} failed: RuntimeError: vault refused" in str(seen.error)
    everything = str(seen.error) + repr(run.attempts) + " ".join(rebuild)
    assert secret not in everything
    provider.settle()
    time.sleep(0.3)  # a builder retrying in a loop would call the factory meanwhile
    # The first client, the failed spare, and the build the second attempt's cleanup asked for.
    first = BUILDER_THREAD if provider.is_async else threading.current_thread().name
    assert calls.threads() == [first, BUILDER_THREAD, BUILDER_THREAD]


def test_engine_close_closes_the_spare(provider: Any) -> None:
    route = provider.route()
    engine = provider.make_engine([route])
    provider.script([Healthy()])
    run, _ = provider.run_to_end(engine)
    assert run.state == "completed"
    if provider.is_async:
        provider.run_coroutine(engine.aclose())
    else:
        engine.close()
    built = provider.built[provider.model]
    assert len(built) == 2, "the run's client and its spare"
    assert [client.is_closed() for client in built] == [True, True]
    assert not [t for t in threading.enumerate() if t.name == BUILDER_THREAD]


def test_engine_close_waits_for_a_spare_in_flight(provider: Any) -> None:
    """close() right after a run, while its spare is still being built: no builder thread
    outlives close(), and the spare is closed."""
    calls = Calls()
    route = observed_route(provider, calls, sleep=SLOW_BUILD)
    engine = provider.make_engine([route])
    provider.script([Healthy()])
    run, _ = provider.run_to_end(engine)
    assert run.state == "completed"
    assert provider.clients(route).building is not None, "the spare is still being built"
    if provider.is_async:
        provider.run_coroutine(engine.aclose())
    else:
        engine.close()
    assert not [t for t in threading.enumerate() if t.name == BUILDER_THREAD]
    built = provider.built[provider.model]
    assert len(built) == 2 and [client.is_closed() for client in built] == [True, True]


def close_engine(provider: Any, engine: Any) -> None:
    if provider.is_async:
        provider.run_coroutine(engine.aclose())
    else:
        engine.close()


def after_close_move_in(provider: Any, slot: Any) -> None:
    """A cleanup's successor, as a run's cleanup asks for it (its driver's flavour)."""
    with contextlib.suppress(Exception):  # no successor after close: the point is no build
        if provider.is_async:
            provider.run_coroutine(slot.asuccessor())
        else:
            slot.successor()


AFTER_CLOSE: dict[str, Callable[[Any, Any], None]] = {
    "replenish": lambda provider, slot: slot.replenish(),
    "successor": after_close_move_in,
}


@pytest.mark.parametrize("call", list(AFTER_CLOSE))
def test_no_spare_is_built_after_engine_close(provider: Any, call: str) -> None:
    """A run whose request went out (``replenish``), or whose cleanup asked for the retired
    client's successor, just as another thread closed the engine, calls the slot after
    close() took its clients: the slot must not start a build then, or the client built
    after close() is never closed (its connection pool leaks)."""
    route = provider.route()
    engine = provider.make_engine([route])
    provider.script([Healthy()])
    run, _ = provider.run_to_end(engine)
    assert run.state == "completed"
    close_engine(provider, engine)
    built = provider.built[provider.model]
    assert len(built) == 2, "the run's client and its spare"
    slot = provider.clients(route)
    AFTER_CLOSE[call](provider, slot)
    provider.settle()
    assert len(built) == 2, f"{len(built) - 2} client(s) built after close()"
    assert [client.is_closed() for client in built] == [True, True]
    assert not slot.has_spare and slot.building is None


def test_a_route_given_to_another_engine_gets_clients_of_its_own(provider: Any) -> None:
    """A route object is configuration: the second engine over it builds its own client
    and spare, and leaves the first engine's (closed, empty) slot alone; each engine's
    close closes its own clients."""
    route = provider.route()
    first = provider.make_engine([route])
    provider.script([Healthy()])
    run, _ = provider.run_to_end(first)
    assert run.state == "completed"
    close_engine(provider, first)
    second = provider.make_engine([route])
    provider.script([Healthy()])
    run, _ = provider.run_to_end(second)
    assert run.state == "completed"
    provider.settle()
    slot = provider.clients(route, second)
    assert slot.built_count == 2 and slot.has_spare, "its client and its spare"
    closed = provider.clients(route, first)
    assert closed.built_count == 2 and closed.live_clients == 0 and not closed.has_spare
    built = provider.built[provider.model]
    assert len(built) == 4, "each engine's run: its client and its spare"
    assert [client.is_closed() for client in built] == [True, True, False, False]
    close_engine(provider, second)
    assert [client.is_closed() for client in built] == [True] * 4
