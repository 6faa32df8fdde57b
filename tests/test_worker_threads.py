"""A run iterated one step at a time from worker threads, as web servers do.

Starlette's (and FastAPI's) ``StreamingResponse`` drives a sync generator with
``anyio.to_thread.run_sync(next, ...)``: every step runs on a pool thread, in a copy of
the event loop's context. A run must survive being stepped from different threads and
contexts (one step at a time, never concurrently), healthy and faulty streams alike,
with the real SDKs against the loopback server. The async driver has the same shape:
each ``anext()`` awaited in a task of its own runs in that task's context copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import threading
import time
from collections.abc import Iterator
from typing import Any

import anyio
import anyio.to_thread
import pytest
import uvicorn
from bounds import PROMPT
from conftest import REQUEST, ProviderKit
from starlette.applications import Starlette
from starlette.requests import Request as HttpRequest
from starlette.responses import StreamingResponse
from starlette.routing import Route as HttpRoute

from lifecycle import RetryPolicy, Run, StreamEngine, Timeouts
from providers.loopback import DropAfterEvents, Healthy, StallAfterEvents

pytestmark = pytest.mark.timeout(60)

STALE = 0.5
TIMEOUTS = Timeouts(connect=5, first_token=STALE, stale=STALE, total=30)
RETRY = RetryPolicy(max_attempts=2, initial_backoff=0.0, max_backoff=0.0)

# fault of the first attempt (the second is healthy), whether the caller sees a restart
SCRIPTS: list[tuple[list[Any], bool]] = [
    ([Healthy()], False),
    ([StallAfterEvents(n=2), Healthy()], True),
    ([DropAfterEvents(n=1), Healthy()], True),
]
SCRIPT_IDS = ["healthy", "stall-after-2", "drop-after-1"]


@contextlib.contextmanager
def served(app: Starlette) -> Iterator[int]:
    """``app`` served by a real uvicorn on 127.0.0.1, an OS-chosen port; yields the port."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="test-uvicorn")
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        yield int(server.servers[0].sockets[0].getsockname()[1])
    finally:
        server.should_exit = True
        thread.join(20)
        assert not thread.is_alive(), "uvicorn did not stop"


def fetch(port: int, path: str) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        assert response.status == 200, response.status
        return response.read()
    finally:
        conn.close()


class Recorder:
    """What each run did, seen from inside the web app's streaming body."""

    def __init__(self) -> None:
        self.runs: list[Run] = []
        self.errors: list[BaseException] = []
        self.step_threads: set[str] = set()


def streaming_app(engine: StreamEngine, recorder: Recorder) -> Starlette:
    def body(run: Run) -> Iterator[bytes]:
        try:
            with run:
                for event in run:
                    recorder.step_threads.add(threading.current_thread().name)
                    if event.type == "text":
                        yield event.text.encode()
                    elif event.type == "restart":
                        yield b"<restart>"
        except BaseException as exc:
            recorder.errors.append(exc)
            raise

    def chat(request: HttpRequest) -> StreamingResponse:
        run = engine.stream(**REQUEST)
        assert isinstance(run, Run)
        recorder.runs.append(run)
        return StreamingResponse(body(run), media_type="text/plain")

    return Starlette(routes=[HttpRoute("/chat", chat)])


def check_run(kit: ProviderKit, run: Run, text: bytes, restarted: bool) -> None:
    expected = kit.text().encode()
    assert run.state == "completed", [a.as_dict() for a in run.attempts]
    assert text == (b"<restart>" if restarted else b"") + expected or (
        restarted and text.endswith(b"<restart>" + expected)
    ), text
    assert run.message is not None and run.message.text == kit.text()
    assert len(run.attempts) == (2 if restarted else 1)
    assert run.attempts[-1].outcome == "completed"


@pytest.mark.parametrize("driver", ["sync"])
@pytest.mark.parametrize(("faults", "restarted"), SCRIPTS, ids=SCRIPT_IDS)
def test_starlette_streaming_response_under_uvicorn(
    provider: ProviderKit, faults: list[Any], restarted: bool
) -> None:
    engine = provider.engine(timeouts=TIMEOUTS, retry=RETRY, with_other=False)
    recorder = Recorder()
    provider.script(faults)
    with served(streaming_app(engine, recorder)) as port:
        text = fetch(port, "/chat")
    assert not recorder.errors, recorder.errors
    assert len(recorder.runs) == 1
    check_run(provider, recorder.runs[0], text, restarted)
    assert len(provider.requests()) == len(faults)


@pytest.mark.parametrize("driver", ["sync"])
def test_consecutive_requests_share_the_engine(provider: ProviderKit) -> None:
    """Several requests in a row through the app: each run completes and the pooled
    connection of one run's thread serves the next run's, on another thread."""
    engine = provider.engine(timeouts=TIMEOUTS, retry=RETRY, with_other=False)
    recorder = Recorder()
    with served(streaming_app(engine, recorder)) as port:
        texts = [fetch(port, "/chat") for _ in range(3)]
    assert not recorder.errors, recorder.errors
    for run, text in zip(recorder.runs, texts, strict=True):
        check_run(provider, run, text, False)


@pytest.mark.parametrize("driver", ["sync"])
@pytest.mark.parametrize(("faults", "restarted"), SCRIPTS, ids=SCRIPT_IDS)
def test_anyio_to_thread_one_step_at_a_time(
    provider: ProviderKit, faults: list[Any], restarted: bool
) -> None:
    engine = provider.engine(timeouts=TIMEOUTS, retry=RETRY, with_other=False)
    provider.script(faults)
    run = engine.stream(**REQUEST)
    assert isinstance(run, Run)
    parts: list[bytes] = []

    async def main() -> None:
        with run:
            steps = iter(run)
            while (event := await anyio.to_thread.run_sync(next, steps, None)) is not None:
                if event.type == "text":
                    parts.append(event.text.encode())
                elif event.type == "restart":
                    parts.append(b"<restart>")

    anyio.run(main)
    check_run(provider, run, b"".join(parts), restarted)


@pytest.mark.parametrize("driver", ["sync"])
def test_each_step_on_a_new_thread(provider: ProviderKit) -> None:
    """A new thread starts in an empty context: the harshest case of a pool."""
    engine = provider.engine(timeouts=TIMEOUTS, retry=RETRY, with_other=False)
    provider.script([StallAfterEvents(n=2), Healthy()])
    run = engine.stream(**REQUEST)
    assert isinstance(run, Run)
    steps = iter(run)
    seen: list[Any] = []
    errors: list[BaseException] = []

    def step() -> None:
        try:
            seen.append(next(steps, None))
        except BaseException as exc:
            errors.append(exc)
            seen.append(None)

    with run:
        while True:
            thread = threading.Thread(target=step, name=f"step-{len(seen)}")
            thread.start()
            thread.join(10)
            assert not errors, errors
            if seen[-1] is None:
                break
    types = [e.type for e in seen if e is not None]
    assert "restart" in types and types[-1] == "stop"
    assert run.state == "completed"
    assert run.message is not None and run.message.text == provider.text()


@pytest.mark.parametrize("driver", ["async"])
@pytest.mark.parametrize(("faults", "restarted"), SCRIPTS, ids=SCRIPT_IDS)
def test_async_run_stepped_from_a_task_per_event(
    provider: ProviderKit, faults: list[Any], restarted: bool
) -> None:
    """Each ``anext()`` in a task of its own (its own context copy), one at a time."""
    engine = provider.engine(timeouts=TIMEOUTS, retry=RETRY, with_other=False)
    provider.script(faults)
    parts: list[bytes] = []

    async def main() -> Any:
        run = engine.astream(**REQUEST)
        async with run:
            steps = aiter(run)
            while True:
                event = await asyncio.ensure_future(anext(steps, None))
                if event is None:
                    return run
                if event.type == "text":
                    parts.append(event.text.encode())
                elif event.type == "restart":
                    parts.append(b"<restart>")

    run = provider.run_coroutine(main())
    check_run(provider, run, b"".join(parts), restarted)


@pytest.mark.parametrize("driver", ["sync"])
def test_interrupt_while_stepped_from_a_pool(provider: ProviderKit) -> None:
    """interrupt() from another thread still ends a pool-stepped run promptly."""
    engine = provider.engine(timeouts=Timeouts(first_token=30, stale=30, total=60))
    provider.script([StallAfterEvents(n=1)])
    run = engine.stream(**REQUEST)
    assert isinstance(run, Run)
    outcome: list[BaseException] = []

    async def main() -> None:
        with run:
            steps = iter(run)
            try:
                while await anyio.to_thread.run_sync(next, steps, None) is not None:
                    pass
            except BaseException as exc:
                outcome.append(exc)

    interrupted_at: list[float] = []

    def interrupt() -> None:
        interrupted_at.append(time.monotonic())
        run.interrupt()

    timer = threading.Timer(0.5, interrupt)
    timer.start()
    try:
        anyio.run(main)
    finally:
        timer.cancel()
        timer.join()
    # Far below the 30 s stall clock it would otherwise wait for; a pool hop is allowed.
    assert time.monotonic() - interrupted_at[0] < 4 * PROMPT
    assert [type(e).__name__ for e in outcome] == ["Interrupted"]
    assert run.state == "cancelled"
