"""``os.fork()`` while the parent streams (gunicorn and celery preloading), with the real
SDKs over HTTP to the loopback server; a real fork, and ``multiprocessing`` with the
fork start method.

The child inherits the parent's engine: its watchdog starts with no inherited watch (an
inherited one comes due in the child and shuts down the parent's socket), its first
request goes out on a connection of its own (never on the parent's pooled keep-alive
one), and the parent's stream runs on unaffected: one attempt, completed.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import multiprocessing
import os
import select
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from conftest import REQUEST

from lifecycle import (
    BreakerChange,
    BreakerPolicy,
    LifecycleHooks,
    RetryPolicy,
    StreamEngine,
    Timeouts,
)
from lifecycle._drivers.client_slots import BUILDER_THREAD
from lifecycle._drivers.watchdog import watchdog
from lifecycle._observe.hooks import HookDispatcher
from lifecycle.health import RouteHealth
from providers.loopback import Healthy

pytestmark = pytest.mark.timeout(60)

# A stale clock shorter than the streams: a parent's watch inherited by the child comes
# due there while both streams still run.
TIMEOUTS = Timeouts(connect=5, first_token=10, stale=1.0, total=30)
RETRY = RetryPolicy(max_attempts=3, initial_backoff=0.0, max_backoff=0.0)
DRIP = 0.3
"""Seconds between SSE blocks: each stream lasts a few seconds, longer than the stale
clock, so parent and child stream at the same time."""


@dataclass
class ParentStream:
    """The parent's runs, iterated on a thread of the parent (sync), or as tasks of an
    event loop running on that thread (async): a finished run first, which leaves a
    pooled keep-alive connection, then one that streams while the child runs."""

    engine: StreamEngine
    use_async: bool
    first_event: threading.Event = field(default_factory=threading.Event)
    run: Any = None
    error: BaseException | None = None

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self._main, name="parent-stream")
        thread.start()
        assert self.first_event.wait(10), f"the parent's run never started: {self.error!r}"
        return thread

    def _main(self) -> None:
        try:
            if self.use_async:
                asyncio.run(self._async_main())
            else:
                self._sync_main()
        except BaseException as exc:
            self.error = exc
            self.first_event.set()

    def _sync_main(self) -> None:
        with self.engine.stream(**REQUEST) as run:
            for _ in run:
                pass
        with self.engine.stream(**REQUEST) as run:
            self.run = run
            for _ in run:
                self.first_event.set()

    async def _async_main(self) -> None:
        async with self.engine.astream(**REQUEST) as run:
            async for _ in run:
                pass
        async with self.engine.astream(**REQUEST) as run:
            self.run = run
            async for _ in run:
                self.first_event.set()
        # This loop ends with the thread: its clients are closed on it, now.
        await self.engine.aclose()


def child_key(engine: StreamEngine) -> str:
    """The script key (``x-loopback-key``) of the child's requests: the server's log
    tells them from the parent's."""
    return f"child-{engine.routes[0].model}"


def child_run(engine: StreamEngine, *, use_async: bool) -> dict[str, Any]:
    """What the child reports of one run on the engine it inherited."""
    request = REQUEST | {"extra_headers": {"x-loopback-key": child_key(engine)}}
    inherited_heap = len(watchdog._heap)
    if use_async:

        async def main() -> tuple[str, list[str | None]]:
            async with engine.astream(**request) as run:
                async for _ in run:
                    pass
            await engine.aclose()
            return run.state, [a.outcome for a in run.attempts]

        state, outcomes = asyncio.run(main())
    else:
        with engine.stream(**request) as run:
            for _ in run:
                pass
        engine.close()
        state, outcomes = run.state, [a.outcome for a in run.attempts]
    return {"state": state, "outcomes": outcomes, "inherited_heap": inherited_heap}


def in_forked_child(
    work: Callable[[], dict[str, Any]], *, within: float | None = None
) -> dict[str, Any]:
    """Run ``work`` in a child made by ``os.fork()``; returns what it reported.
    ``within``: seconds the child has to report, after which it is killed and the test
    fails (a child that hangs must fail the test, not hang it)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report through the pipe, never return into pytest
        code = 1
        try:
            os.close(read_end)
            try:
                report = work()
            except BaseException as exc:
                report = {"error": repr(exc)}
            os.write(write_end, json.dumps(report).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    if within is not None and not select.select([read_end], [], [], within)[0]:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(read_end)
        raise AssertionError(f"the forked child did not report within {within:g} s: it hangs")
    with os.fdopen(read_end, "rb") as reader:
        data = reader.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, data
    result: dict[str, Any] = json.loads(data)
    return result


def fork_context_child(engine: StreamEngine, use_async: bool, results: Any) -> None:
    try:
        results.put(child_run(engine, use_async=use_async))
    except BaseException as exc:
        results.put({"error": repr(exc)})


def in_multiprocessing_child(engine: StreamEngine, *, use_async: bool) -> dict[str, Any]:
    context = multiprocessing.get_context("fork")
    results = context.SimpleQueue()
    process = context.Process(target=fork_context_child, args=(engine, use_async, results))
    process.start()
    process.join(30)
    assert process.exitcode == 0, process.exitcode
    result: dict[str, Any] = results.get()
    results.close()
    return result


def engine_of(provider: Any) -> StreamEngine:
    provider.script([Healthy(), Healthy(drip=DRIP)])
    engine: StreamEngine = provider.make_engine(
        [provider.route(), provider.other_route()], timeouts=TIMEOUTS, retry=RETRY
    )
    provider.server.script(child_key(engine), [Healthy(drip=DRIP)])
    return engine


def check_fork(provider: Any, engine: StreamEngine, fork: Callable[[], dict[str, Any]]) -> None:
    parent = ParentStream(engine, use_async=provider.is_async)
    thread = parent.start()
    before_fork = [r.connection_id for r in provider.requests()]
    assert len(before_fork) == 2
    report = fork()
    thread.join(20)
    # The parent's stream ran on, untouched: one attempt, completed, nothing retried.
    assert parent.error is None, repr(parent.error)
    assert parent.run.state == "completed"
    assert [a.outcome for a in parent.run.attempts] == ["completed"]
    assert "error" not in report, report["error"]
    assert report["state"] == "completed" and report["outcomes"] == ["completed"], report
    assert report["inherited_heap"] == 0, "the child's watchdog inherited the parent's watches"
    key = child_key(engine)
    assert len([r for r in provider.requests() if r.key != key]) == 2
    # The child sent its request on a connection of its own.
    child_requests = [r for r in provider.server.requests if r.key == key]
    assert len(child_requests) == 1, child_requests
    assert child_requests[0].connection_id not in before_fork


def test_os_fork_while_the_parent_streams(provider: Any) -> None:
    engine = engine_of(provider)
    use_async = provider.is_async
    check_fork(
        provider, engine, lambda: in_forked_child(lambda: child_run(engine, use_async=use_async))
    )


def test_multiprocessing_fork_while_the_parent_streams(provider: Any) -> None:
    engine = engine_of(provider)
    check_fork(
        provider, engine, lambda: in_multiprocessing_child(engine, use_async=provider.is_async)
    )


@pytest.mark.parametrize("driver", ["sync"])
def test_the_child_starts_with_no_client_of_the_parent(provider: Any) -> None:
    """The parent's clients are abandoned in the child, not closed: the child's slot is
    empty (no spare, no build in flight), while in the parent the client, its pooled
    connection and its spare live on. The child's first lease builds its own client, on
    its own thread, and its own builder makes its spare."""
    engine = engine_of(provider)
    with engine.stream(**REQUEST) as run:
        for _ in run:
            pass
    slot = provider.clients()
    parent_client = slot.current_client
    assert parent_client is not None
    assert slot.wait_for_builder(10) and slot.has_spare
    parent_spare = provider.built[provider.model][-1]
    assert parent_spare is not parent_client

    def inspect_child() -> dict[str, Any]:
        empty = {"live": slot.live_clients, "spare": slot.has_spare, "building": slot.building}
        before = len(slot.builds_log)
        slot.release(slot.lease())
        slot.replenish()  # as the driver does once the request is out
        slot.wait_for_builder(10)
        return {
            **empty,
            "built_in_child": slot.builds_log[before:],
            "child_spare": slot.has_spare,
            "parent_clients_closed": (parent_client.is_closed(), parent_spare.is_closed()),
        }

    report = in_forked_child(inspect_child)
    assert report == {
        "live": 0,
        "spare": False,
        "building": None,
        "built_in_child": [threading.current_thread().name, BUILDER_THREAD],
        "child_spare": True,
        "parent_clients_closed": [False, False],
    }
    assert slot.current_client is parent_client and slot.has_spare
    assert not parent_client.is_closed() and not parent_spare.is_closed()


CHILD_BOUND = 10.0
"""Seconds a forked child has for a few breaker operations that take microseconds."""
DEAD_REDIS = "redis://127.0.0.1:1/0"
"""Nothing listens there: a shared store that refuses every call (the run degrades)."""


@contextlib.contextmanager
def held_by_another_thread(lock: Any) -> Iterator[None]:
    """``lock`` held by another thread of this process for the block: a fork in the block
    copies it held, with no thread in the child to release it."""
    taken, release = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            taken.set()
            release.wait(30)

    thread = threading.Thread(target=hold, name="lock-holder")
    thread.start()
    try:
        assert taken.wait(10), "the holder thread never took the lock"
        yield
    finally:
        release.set()
        thread.join(10)


def route_health_degrading() -> tuple[Any, Any, Callable[[], None]]:
    """A RouteHealth whose shared store refuses: a report degrades (``RouteHealth._lock``)."""
    from lifecycle.health import RedisHealthStore

    health = RouteHealth(policy=BreakerPolicy(), store=RedisHealthStore(url=DEAD_REDIS))
    return health, health._lock, lambda: health.report("r", "dropped", None)


def route_health_local() -> tuple[Any, Any, Callable[[], None]]:
    """The default store: every admission takes ``LocalHealthStore._lock``."""
    health = RouteHealth(policy=BreakerPolicy())
    return health, health.store._lock, lambda: health.admit("r", health.new_probe_id())


CHANGE = BreakerChange(
    route="r", source="closed", trigger="trip", dest="open", at=0.0, failures=5, reopen_at=30.0
)


class RaisingHook(LifecycleHooks):
    def on_breaker_change(self, change: BreakerChange) -> None:
        raise RuntimeError("a hook's bug")


def hook_dispatcher() -> tuple[Any, Any, Callable[[], None]]:
    """A hook that raises is reported once, under ``HookDispatcher._lock``."""
    dispatcher = HookDispatcher([RaisingHook()])
    return dispatcher, dispatcher._lock, lambda: dispatcher.breaker_changed(CHANGE)


def redis_health_store() -> tuple[Any, Any, Callable[[], None]]:
    """``RedisHealthStore._lock`` guards its per-loop async clients (and their closing)."""
    from lifecycle.health import RedisHealthStore

    store = RedisHealthStore(url=DEAD_REDIS)
    return store, store._lock, lambda: asyncio.run(store.aclose())


def otel_hooks() -> tuple[Any, Any, Callable[[], None]]:
    """Every run's hooks and every breaker change take ``OpenTelemetryHooks._lock``."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.trace import TracerProvider

    from lifecycle.otel import OpenTelemetryHooks

    hooks = OpenTelemetryHooks(tracer_provider=TracerProvider(), meter_provider=MeterProvider())
    return hooks, hooks._lock, lambda: hooks.on_breaker_change(CHANGE)


def transition_recorder() -> tuple[Any, Any, Callable[[], None]]:
    """Every record is written under ``TransitionRecorder._lock``."""
    from lifecycle.record import TransitionRecorder

    recorder = TransitionRecorder(file=io.StringIO())
    return recorder, recorder._lock, lambda: recorder.on_breaker_change(CHANGE)


LOCKED = {
    "route-health-degrading": route_health_degrading,
    "local-health-store": route_health_local,
    "hook-dispatcher": hook_dispatcher,
    "redis-health-store": redis_health_store,
    "otel-hooks": otel_hooks,
    "transition-recorder": transition_recorder,
}


@pytest.mark.parametrize("case", list(LOCKED))
def test_a_child_forked_while_a_lock_is_held_does_not_hang(case: str) -> None:
    """A pre-fork server forks while another thread of the parent (a run reporting) holds
    a lock: the child's copy of it is held by nobody, and its first use must not block."""
    owner, lock, use = LOCKED[case]()

    def child() -> dict[str, Any]:
        use()
        use()
        return {"used": True}

    with held_by_another_thread(lock):
        report = in_forked_child(child, within=CHILD_BOUND)
    assert report == {"used": True}, report
    use()  # the parent's lock, released by its holder, still works
    del owner


def test_parent_and_child_draw_different_probe_ids() -> None:
    """Workers forked from one engine share a fleet-wide store: a half-open breaker's probe
    is known by its id, so the child's ids must not repeat the parent's."""
    health = RouteHealth(policy=BreakerPolicy())
    health.new_probe_id()
    child_ids = in_forked_child(lambda: {"ids": [health.new_probe_id() for _ in range(3)]})
    parent_ids = [health.new_probe_id() for _ in range(3)]
    assert not set(child_ids["ids"]) & set(parent_ids), (child_ids, parent_ids)


@pytest.mark.parametrize("driver", ["sync"])
def test_a_forked_child_draws_run_ids_of_its_own(provider: Any) -> None:
    """Run ids come from a generator in the process's memory: a pre-fork server's
    workers inherit its state, and without a reseed in the child each worker's next runs
    would carry the parent's next ids (and each other's)."""
    engine = provider.make_engine([provider.route()], timeouts=TIMEOUTS, retry=RETRY)

    def next_ids() -> list[str]:
        ids = []
        for _ in range(3):
            run = engine.stream(**REQUEST)
            ids.append(run.id)
            run.close()  # never iterated: no request, the run ends cancelled
        return ids

    children = [in_forked_child(lambda: {"ids": next_ids()})["ids"] for _ in range(2)]
    parent = next_ids()
    assert all(len(run_id) == 16 for run_id in parent + children[0] + children[1])
    assert not set(children[0]) & set(parent), (children[0], parent)
    assert not set(children[0]) & set(children[1]), children
