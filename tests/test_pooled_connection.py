"""A connection that went back to its client's pool is no longer the attempt's.

An HTTP error answer (429, 500, 529...) is read whole by the SDK, and its keep-alive
connection goes back to the shared client's pool before the attempt's cleanup runs. If
the cleanup's abort then shut that socket down, it would shut down whatever run had
taken the connection from the pool meanwhile: that run's healthy stream would end
"dropped" ("Server disconnected without sending a response") and be retried, charged to
the route. Here run A gets HTTP 500 and its cleanup waits until run B, on the same
client, streams on A's very connection (the server says so); then A's cleanup goes on. B
must finish its one attempt whole.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from invariants import Flavor, check_run, drive_async, drive_sync, make_routes, start_run

from lifecycle import AsyncRun, RetryPolicy, StreamEngine, Timeouts
from lifecycle._drivers.run_base import RunBase
from lifecycle._drivers.run_steps import Abort
from providers.loopback import Healthy, HttpError, LoopbackServer

pytestmark = pytest.mark.timeout(60)

WAIT = 20.0
"""How long a step may take on a starved machine (only a failing run waits this long)."""


def _engine(server: LoopbackServer, flavor: Flavor, tag: str) -> StreamEngine:
    return StreamEngine(
        routes=make_routes(server, flavor, ("anthropic",), tag=tag),
        timeouts=Timeouts(connect=5, first_token=WAIT, stale=WAIT, total=4 * WAIT),
        retry=RetryPolicy(max_attempts=2, initial_backoff=0, max_backoff=0),
    )


def _same_connection(server: LoopbackServer, a_key: str, b_key: str) -> bool:
    requests = server.requests
    a_500 = [r.connection_id for r in requests if r.key == a_key and r.status == 500]
    b_first = [r.connection_id for r in requests if r.key == b_key][:1]
    return bool(a_500 and b_first and a_500[0] == b_first[0])


def test_a_sync_cleanup_never_shuts_a_connection_another_run_took_from_the_pool(
    server: LoopbackServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = _engine(server, "sync", "-pool-sync")
    a = start_run(engine, server, "pool-sync-a", "sync", [HttpError(status=500), Healthy()])
    b = start_run(engine, server, "pool-sync-b", "sync", [Healthy(drip=0.05)])
    a.exclusive = b.exclusive = False  # they share the route's client on purpose
    in_cleanup, streaming, done = threading.Event(), threading.Event(), threading.Event()
    abort = RunBase._cleanup_abort

    def abort_once_b_streams(self: RunBase, plan: Any, connection: Any) -> None:
        if self is a.run:
            in_cleanup.set()
            assert streaming.wait(WAIT), "run B never streamed"
        abort(self, plan, connection)

    def b_holds_its_first_event(record: Any, event: Any) -> None:
        streaming.set()

    monkeypatch.setattr(RunBase, "_cleanup_abort", abort_once_b_streams)
    try:
        with engine:
            first = threading.Thread(target=drive_sync, args=(a,), name="run-a")
            first.start()
            assert in_cleanup.wait(WAIT), "run A never reached its cleanup"
            second = threading.Thread(
                target=lambda: (drive_sync(b, b_holds_its_first_event), done.set()),
                name="run-b",
            )
            second.start()
            first.join(2 * WAIT)
            second.join(2 * WAIT)
            assert done.is_set(), "run B did not end"
    finally:
        streaming.set()
    assert _same_connection(server, a.key, b.key), "B did not reuse A's connection: no test"
    _assert_b_finished_whole(b)
    check_run(a)


def test_an_async_cleanup_never_shuts_a_connection_another_run_took_from_the_pool(
    server: LoopbackServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    carry_out = AsyncRun._carry_out

    async def main() -> None:
        engine = _engine(server, "async", "-pool-async")
        a = start_run(engine, server, "pool-async-a", "async", [HttpError(status=500), Healthy()])
        b = start_run(engine, server, "pool-async-b", "async", [Healthy(drip=0.05)])
        a.exclusive = b.exclusive = False
        in_cleanup, streaming = asyncio.Event(), asyncio.Event()

        async def abort_once_b_streams(self: AsyncRun, command: Any) -> Any:
            # The cleanup's first step (the abort) waits in the run's task, until B
            # streams on the connection A's failed attempt handed back to the pool.
            if self is a.run and isinstance(command, Abort):
                in_cleanup.set()
                await asyncio.wait_for(streaming.wait(), WAIT)
            return await carry_out(self, command)

        def b_holds_its_first_event(record: Any, event: Any) -> None:
            streaming.set()

        monkeypatch.setattr(AsyncRun, "_carry_out", abort_once_b_streams)
        async with engine:
            first = asyncio.create_task(drive_async(a))
            await asyncio.wait_for(in_cleanup.wait(), WAIT)
            await asyncio.wait_for(
                asyncio.gather(first, drive_async(b, b_holds_its_first_event)), 2 * WAIT
            )
        assert _same_connection(server, a.key, b.key), "B did not reuse A's connection"
        _assert_b_finished_whole(b)
        check_run(a)

    asyncio.run(main())


def _assert_b_finished_whole(b: Any) -> None:
    run = b.run
    assert run.state == "completed", (run.state, [x.outcome for x in run.attempts])
    assert [x.outcome for x in run.attempts] == ["completed"], [
        (x.outcome, x.diagnostics.error_type, str(x.exception)) for x in run.attempts
    ]
    assert not any(kind == "restart" for kind, _, _ in b.seen)
