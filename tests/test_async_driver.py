"""The asyncio driver against the real async SDKs and the loopback server."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import anthropic
import openai
import pytest

from lifecycle import Interrupted, RetryPolicy, StreamEngine, StreamFailed, Timeouts
from providers import AnthropicMessages, OpenAIChatCompletions
from providers.loopback import HttpError, LoopbackServer, StallAfterEvents, StallBeforeHeaders

MESSAGES = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def server() -> Any:
    with LoopbackServer() as srv:
        yield srv


def _routes(server: LoopbackServer, key: str, first: str) -> list[Any]:
    headers = {"x-loopback-key": key}
    a = AnthropicMessages(
        lambda: anthropic.AsyncAnthropic(
            base_url=server.anthropic_base_url, api_key="test", default_headers=headers
        ),
        model="claude-async",
    )
    o = OpenAIChatCompletions(
        lambda: openai.AsyncOpenAI(
            base_url=server.openai_base_url, api_key="test", default_headers=headers
        ),
        model="gpt-async",
    )
    return [a, o] if first == "anthropic" else [o, a]


def _engine(routes: list[Any], **retry: Any) -> StreamEngine:
    return StreamEngine(
        routes=routes,
        timeouts=Timeouts(first_token=1.5, stale=0.5, total=30),
        retry=RetryPolicy(**({"max_attempts": 2, "initial_backoff": 0.0} | retry)),
    )


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
@pytest.mark.parametrize("fault", [StallAfterEvents(n=1), StallBeforeHeaders()], ids=repr)
def test_async_stall_recovers_with_the_right_cleanup_inside_the_task(
    server: LoopbackServer, provider: str, fault: Any
) -> None:
    key = f"async-stall-{provider}-{type(fault).__name__}"
    server.script(key, [fault])
    routes = _routes(server, key, provider)

    async def main() -> Any:
        async with _engine(routes) as engine:
            async with engine.astream(messages=MESSAGES, max_tokens=64) as run:
                kinds = [event.type async for event in run]
            return run, kinds, asyncio.current_task()

    run, kinds, task = asyncio.run(main())
    assert run.state == "completed"
    assert [a.outcome for a in run.attempts] == ["stale", "completed"]
    assert kinds[-1] == "stop"
    stale = run.attempts[0]
    assert stale.api_mode == routes[0].api_mode
    steps = {s.step: s for s in stale.diagnostics.cleanup if s.thread.endswith(task.get_name())}
    assert {"close", "rebuild"} <= set(steps), stale.diagnostics.cleanup
    assert routes[1].async_clients.built_count == 0  # the other api_mode never noticed
    recovery = run.attempts[1].started_at - stale.diagnostics.stall_deadline
    assert recovery < 0.5  # generous; the benchmark reports the real figure
    assert server.wait_idle(2.0)


def test_caller_cancellation_propagates_and_ends_cancelled(server: LoopbackServer) -> None:
    key = "async-cancel"
    server.script(key, [StallAfterEvents(n=1)])
    routes = _routes(server, key, "anthropic")

    async def main() -> tuple[Any, float]:
        async with _engine(routes) as engine:
            run = engine.astream(messages=MESSAGES, max_tokens=64)

            async def consume() -> None:
                async with run:
                    async for _ in run:
                        pass

            task = asyncio.create_task(consume())
            await asyncio.sleep(0.2)
            started = time.monotonic()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return run, time.monotonic() - started

    run, took = asyncio.run(main())
    assert run.state == "cancelled"
    assert took < 1.0
    assert server.wait_idle(2.0)


def test_interrupt_from_another_thread(server: LoopbackServer) -> None:
    key = "async-interrupt"
    server.script(key, [StallAfterEvents(n=1)])
    routes = _routes(server, key, "openai")

    async def main() -> tuple[Any, float]:
        async with _engine(routes) as engine:
            run = engine.astream(messages=MESSAGES, max_tokens=64)
            timer = threading.Timer(0.2, run.interrupt)
            timer.start()
            try:
                with pytest.raises(Interrupted):
                    async with run:
                        async for _ in run:
                            pass
            finally:
                timer.join()
            return run, time.monotonic()

    run, _ = asyncio.run(main())
    assert run.state == "cancelled"
    assert server.wait_idle(2.0)


def test_529_then_fallback_and_400_fails_fast(server: LoopbackServer) -> None:
    key = "async-529"
    server.script(key, [HttpError(status=529), HttpError(status=529)])
    routes = _routes(server, key, "anthropic")

    async def main() -> Any:
        async with _engine(routes) as engine:
            async with engine.astream(messages=MESSAGES, max_tokens=64) as run:
                async for _ in run:
                    pass
            return run

    run = asyncio.run(main())
    assert [(a.api_mode, a.outcome) for a in run.attempts] == [
        ("anthropic_messages", "error"),
        ("anthropic_messages", "error"),
        ("chat_completions", "completed"),
    ]
    server.script(key, [HttpError(status=400)])

    async def bad() -> None:
        async with _engine(_routes(server, key, "anthropic")) as engine:
            async for _ in engine.astream(messages=MESSAGES, max_tokens=64):
                pass

    with pytest.raises(StreamFailed) as failed:
        asyncio.run(bad())
    assert len(failed.value.attempts) == 1


def test_a_sync_factory_with_astream_names_the_route(server: LoopbackServer) -> None:
    route = AnthropicMessages(
        lambda: anthropic.Anthropic(base_url=server.anthropic_base_url, api_key="test"),
        model="claude-sync-factory",
    )

    async def main() -> None:
        async with StreamEngine(routes=[route]) as engine:
            async for _ in engine.astream(messages=MESSAGES, max_tokens=64):
                pass

    with pytest.raises(StreamFailed, match="claude-sync-factory"):
        asyncio.run(main())
