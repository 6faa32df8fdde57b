"""``engine.close()`` while runs stream on other threads, with the real SDKs over HTTP.

Close aborts every run in flight by a socket shutdown from the closing thread, and only
that: no socket is closed by a thread other than the one that opened it (the
``socket.close`` of the process is wrapped to count them). Each run ends promptly with
``EngineClosed`` (an ``Interrupted``, so a ``LifecycleError``), the server sees no
request after the close (no retry, no fallback), each client is closed by its owner or
by the last run leaving it, and no connection stays open. Async clients are closed too,
by ``await engine.aclose()`` and by ``engine.close()`` called after the async runs.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from conftest import REQUEST, open_connections_of

from lifecycle import EngineClosed, Interrupted, LifecycleError, RetryPolicy, Timeouts
from providers.loopback import Healthy, StallAfterEvents

pytestmark = pytest.mark.timeout(60)

RUNS = 3
# Clocks far beyond the test's length: only the close may end these attempts.
TIMEOUTS = Timeouts(connect=5, first_token=20, stale=20, total=40)
RETRY = RetryPolicy(max_attempts=3, initial_backoff=0.0, max_backoff=0.0)
ENDED_WITHIN = 1.0
"""Seconds within which every run must have ended after close() (the issue's bound)."""
SETTLE = 0.5
"""How long to keep watching for a request that should never come."""


@dataclass
class SocketCloses:
    """Which thread connected each client socket, and closes from any other thread."""

    opened_by: dict[int, tuple[socket.socket, str]] = field(default_factory=dict)
    foreign: list[tuple[str, str]] = field(default_factory=list)
    """(thread that connected it, thread that closed it)."""
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture
def socket_closes(monkeypatch: pytest.MonkeyPatch) -> Iterator[SocketCloses]:
    seen = SocketCloses()
    connect, connect_ex, close = (
        socket.socket.connect,
        socket.socket.connect_ex,
        socket.socket.close,
    )

    def note(sock: socket.socket) -> None:
        with seen.lock:
            # The socket is kept referenced, so its id cannot be reused meanwhile.
            seen.opened_by.setdefault(id(sock), (sock, threading.current_thread().name))

    def tracked_connect(self: socket.socket, address: Any) -> None:
        note(self)
        connect(self, address)

    def tracked_connect_ex(self: socket.socket, address: Any) -> int:
        note(self)
        return connect_ex(self, address)

    def tracked_close(self: socket.socket) -> None:
        with seen.lock:
            opened = seen.opened_by.get(id(self))
        here = threading.current_thread().name
        if opened is not None and opened[1] != here and self.fileno() != -1:
            seen.foreign.append((opened[1], here))
        close(self)

    monkeypatch.setattr(socket.socket, "connect", tracked_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", tracked_connect_ex)
    monkeypatch.setattr(socket.socket, "close", tracked_close)
    yield seen


@dataclass
class Streamer:
    """A run iterated on a thread of its own until it ends."""

    streaming: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    ended_at: float | None = None
    run: Any = None


def stream_on_thread(engine: Any, streamer: Streamer) -> None:
    try:
        with engine.stream(**REQUEST) as run:
            streamer.run = run
            for _ in run:
                streamer.streaming.set()
    except BaseException as exc:
        streamer.error = exc
    streamer.ended_at = time.monotonic()


def check_closed_cleanly(
    provider: Any, streamers: list[Streamer], closed_at: float, seen: SocketCloses
) -> None:
    sent = len(provider.all_requests())
    for streamer in streamers:
        assert isinstance(streamer.error, EngineClosed), repr(streamer.error)
        assert isinstance(streamer.error, Interrupted | LifecycleError)
        assert streamer.ended_at is not None
        took = streamer.ended_at - closed_at
        assert took <= ENDED_WITHIN, f"a run ended {took:.2f} s after close()"
        assert streamer.run.state == "cancelled"
        assert [a.outcome for a in streamer.run.attempts] == ["interrupted"]
    time.sleep(SETTLE)
    after = len(provider.all_requests()) - sent
    assert after == 0, f"{after} request(s) reached the server after close()"
    models = {provider.model, provider.other_model}
    provider.server.wait_until(lambda: not open_connections_of(provider.server, models), 5)
    left_open = open_connections_of(provider.server, models)
    assert not left_open, f"{len(left_open)} connection(s) left open"
    assert not seen.foreign, f"sockets closed by a thread that did not open them: {seen.foreign}"
    built = provider.built[provider.model]
    assert built and all(client.is_closed() for client in built)


@pytest.mark.parametrize("driver", ["sync"])
def test_close_ends_sync_runs_streaming_on_other_threads(
    provider: Any, socket_closes: SocketCloses
) -> None:
    """Three stalled sync runs sharing one client, each on its own thread: close()
    from the test's thread ends all of them at once, with nothing sent after it."""
    engine = provider.engine(timeouts=TIMEOUTS, retry=RETRY)
    provider.script([StallAfterEvents(n=1)] * RUNS)
    streamers = [Streamer() for _ in range(RUNS)]
    threads = [
        threading.Thread(target=stream_on_thread, args=(engine, s), name=f"run-{i}")
        for i, s in enumerate(streamers)
    ]
    for thread in threads:
        thread.start()
    for streamer in streamers:
        assert streamer.streaming.wait(10), "a run never received its first event"
    assert len(provider.all_requests()) == RUNS
    closed_at = time.monotonic()
    engine.close()
    for thread in threads:
        thread.join(10)
    check_closed_cleanly(provider, streamers, closed_at, socket_closes)


@pytest.mark.parametrize("driver", ["async"])
def test_close_ends_async_runs_on_a_loop_of_another_thread(
    provider: Any, socket_closes: SocketCloses
) -> None:
    """Three stalled async runs on an event loop of another thread: close() from the
    test's thread ends them; their client is closed on its own loop by the last run."""
    engine = provider.engine(timeouts=TIMEOUTS, retry=RETRY)
    provider.script([StallAfterEvents(n=1)] * RUNS)
    streamers = [Streamer() for _ in range(RUNS)]

    async def one(streamer: Streamer) -> None:
        try:
            async with engine.astream(**REQUEST) as run:
                streamer.run = run
                async for _ in run:
                    streamer.streaming.set()
        except Exception as exc:
            streamer.error = exc
        streamer.ended_at = time.monotonic()

    async def every() -> None:
        await asyncio.gather(*(one(s) for s in streamers))

    loop_thread = threading.Thread(target=asyncio.run, args=(every(),), name="loop")
    loop_thread.start()
    for streamer in streamers:
        assert streamer.streaming.wait(10), "a run never received its first event"
    closed_at = time.monotonic()
    engine.close()
    loop_thread.join(10)
    check_closed_cleanly(provider, streamers, closed_at, socket_closes)


@pytest.mark.parametrize("driver", ["sync"])
def test_a_run_started_before_close_and_iterated_after_sends_nothing(provider: Any) -> None:
    engine = provider.engine(timeouts=TIMEOUTS, retry=RETRY)
    run = engine.stream(**REQUEST)
    engine.close()
    with run, pytest.raises(EngineClosed):
        for _ in run:
            pass
    assert run.state == "cancelled"
    with pytest.raises(EngineClosed, match="closed"):
        engine.stream(**REQUEST)
    assert provider.all_requests() == []


@pytest.mark.parametrize("driver", ["async"])
@pytest.mark.parametrize("closer", ["aclose", "close"])
def test_every_async_client_is_closed_after_async_runs(provider: Any, closer: str) -> None:
    """Async runs on the test's loop, one of them stalling (its client retired and a
    successor built): ``await engine.aclose()``, or ``engine.close()`` called from sync
    code once the runs are over, closes every async client built, and the server sees
    none of their connections open."""
    engine = provider.engine(
        timeouts=Timeouts(connect=5, first_token=0.5, stale=0.5, total=30), retry=RETRY
    )
    provider.script([Healthy(drip=0.02), StallAfterEvents(n=1), Healthy(drip=0.02)])
    runs = provider.run_at_once(engine, 3)
    assert [run.state for run in runs] == ["completed"] * 3
    if closer == "aclose":
        provider.run_coroutine(engine.aclose())
    else:
        engine.close()
    built = provider.built[provider.model]
    assert len(built) >= 2
    assert [client.is_closed() for client in built] == [True] * len(built)
    models = {provider.model, provider.other_model}
    provider.server.wait_until(lambda: not open_connections_of(provider.server, models), 5)
    assert not open_connections_of(provider.server, models)


@pytest.mark.parametrize("driver", ["sync", "async"])
def test_a_run_close_has_not_reached_yet_writes_no_request(
    provider: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """close() may be preempted between its start and the run it has to abort (another
    thread holds the GIL for a switch interval): a run whose request goes out in between
    must send nothing. Here close() is held there until the run has tried to write."""
    from lifecycle import StreamEngine
    from lifecycle._drivers.client_slots import ClientSlot

    engine = provider.engine(timeouts=TIMEOUTS, retry=RETRY, with_other=False)
    provider.script([Healthy()])
    leasing, lease_may_return = threading.Event(), threading.Event()
    lease = ClientSlot.lease

    alease = ClientSlot.alease

    def held_lease(self: ClientSlot) -> Any:
        leasing.set()
        assert lease_may_return.wait(10)
        return lease(self)

    async def held_alease(self: ClientSlot) -> Any:
        leasing.set()
        assert lease_may_return.wait(10)  # holds the loop, as the run's own step would
        return await alease(self)

    end_runs = StreamEngine._end_runs
    connections: list[Any] = []

    def end_runs_after_the_write(self: StreamEngine) -> None:
        lease_may_return.set()
        # Until the request reached the server, or the run's transport refused it.
        provider.server.wait_until(
            lambda: (
                bool(provider.all_requests())
                or any(c is not None and c.aborted_at is not None for c in connections)
            ),
            5,
        )
        end_runs(self)

    monkeypatch.setattr(ClientSlot, "lease", held_lease)
    monkeypatch.setattr(ClientSlot, "alease", held_alease)
    monkeypatch.setattr(StreamEngine, "_end_runs", end_runs_after_the_write)
    streamer = Streamer()
    if provider.is_async:

        async def one() -> None:
            try:
                async with engine.astream(**REQUEST) as run:
                    streamer.run = run
                    async for _ in run:
                        pass
            except Exception as exc:
                streamer.error = exc

        thread = threading.Thread(target=asyncio.run, args=(one(),), name="loop")
    else:
        thread = threading.Thread(target=stream_on_thread, args=(engine, streamer), name="run")
    thread.start()
    assert leasing.wait(10), "the run never leased its client"
    connections.append(streamer.run._connection if streamer.run is not None else None)
    engine.close()
    thread.join(10)
    assert not thread.is_alive()
    assert provider.all_requests() == [], "a request reached the server after close()"
    assert isinstance(streamer.error, EngineClosed), repr(streamer.error)
    assert [a.outcome for a in streamer.run.attempts] == ["interrupted"]
