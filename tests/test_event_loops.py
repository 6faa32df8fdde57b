"""One engine used from more than one event loop, with the real async SDK clients over
HTTP to the loopback server: one loop after another (``asyncio.run`` twice), and two
loops at once on two threads.

An async client belongs to the loop it first ran on (its pool's connections and locks
are that loop's): each loop gets clients of its own, built lazily by its first run,
and closed on that loop by ``close()`` or ``aclose()``; a loop that is gone takes its
clients with it (abandoned, never touched from another loop).
"""

from __future__ import annotations

import asyncio
import gc
import threading
from typing import Any

import pytest
from conftest import REQUEST, open_connections_of

from lifecycle import RetryPolicy, StreamEngine, Timeouts
from lifecycle._drivers.client_slots import BUILDER_THREAD

pytestmark = [pytest.mark.timeout(60), pytest.mark.parametrize("driver", ["async"])]

TIMEOUTS = Timeouts(connect=5, first_token=10, stale=10, total=30)
RETRY = RetryPolicy(max_attempts=2, initial_backoff=0.0, max_backoff=0.0)


async def one_run(engine: StreamEngine) -> list[str | None]:
    async with engine.astream(**REQUEST) as run:
        async for _ in run:
            pass
    return [attempt.outcome for attempt in run.attempts]


def engine_of(provider: Any) -> StreamEngine:
    engine: StreamEngine = provider.make_engine([provider.route()], timeouts=TIMEOUTS, retry=RETRY)
    return engine


def check_nothing_open(provider: Any) -> None:
    built = provider.built[provider.model]
    assert [client.is_closed() for client in built] == [True] * len(built)
    models = {provider.model}
    provider.server.wait_until(lambda: not open_connections_of(provider.server, models), 5)
    assert not open_connections_of(provider.server, models)


def test_asyncio_run_twice(provider: Any) -> None:
    """The second ``asyncio.run`` gets a client of its own: the first one's loop is
    closed, and a request on its client would fail with "Event loop is closed"."""
    engine = engine_of(provider)
    assert asyncio.run(one_run(engine)) == ["completed"]
    provider.settle()

    async def second() -> list[str | None]:
        outcomes = await one_run(engine)
        await engine.aclose()
        return outcomes

    assert asyncio.run(second()) == ["completed"]
    built = provider.built[provider.model]
    assert len(built) == 4, "each loop: its client and that client's spare"
    assert built[2].is_closed() and built[3].is_closed(), "aclose() closes its own loop's"
    # The first loop's clients were abandoned with its loop (its spare never opened a
    # connection); collecting them frees the first one's socket.
    del built[0:2]
    gc.collect()
    check_nothing_open(provider)


def test_close_after_two_loops_closes_each_loops_clients_on_it(provider: Any) -> None:
    """Two loops, still open, used one after the other: each built its own client, and
    ``engine.close()`` from sync code closes both, each on its own loop."""
    engine = engine_of(provider)
    loops = [asyncio.new_event_loop(), asyncio.new_event_loop()]
    try:
        for loop in loops:
            assert loop.run_until_complete(one_run(engine)) == ["completed"]
        provider.settle()
        assert len(provider.built[provider.model]) == 4, "two clients and their spares"
        engine.close()
        check_nothing_open(provider)
    finally:
        for loop in loops:
            loop.close()


def test_two_loops_in_two_threads_at_once(provider: Any) -> None:
    """Two threads, each running its own loop with two runs, all streaming at the same
    time: every run completes at its first attempt, each loop has a slot of its own with
    one client and its spare (built off the loop, on the builder thread), and
    ``engine.close()`` afterwards closes all four on their loops."""
    engine = engine_of(provider)
    together = threading.Barrier(2, timeout=10)
    results: dict[str, Any] = {}
    loops: list[asyncio.AbstractEventLoop] = []

    def on_thread() -> None:
        loop = asyncio.new_event_loop()
        loops.append(loop)

        async def main() -> list[list[str | None]]:
            together.wait()
            return list(await asyncio.gather(one_run(engine), one_run(engine)))

        try:
            results[threading.current_thread().name] = loop.run_until_complete(main())
        except BaseException as exc:
            results[threading.current_thread().name] = exc

    threads = [threading.Thread(target=on_thread, name=f"loop-{i}") for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    try:
        assert results == {
            "loop-0": [["completed"], ["completed"]],
            "loop-1": [["completed"], ["completed"]],
        }
        slots = engine._route_clients(provider.route()).async_slots()
        assert {slot.loop for slot in slots} == set(loops) and len(slots) == 2
        for slot in slots:
            assert slot.wait_for_builder()
            assert slot.builds_log == [BUILDER_THREAD, BUILDER_THREAD]
        engine.close()
        check_nothing_open(provider)
    finally:
        for loop in loops:
            loop.close()
