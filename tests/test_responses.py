"""The third wire API, OpenAI Responses, through the real openai SDK and the loopback server."""

from __future__ import annotations

import asyncio
from typing import Any

import openai
import pytest

from lifecycle import RetryPolicy, StreamEngine, Timeouts
from providers import OpenAIResponses
from providers.loopback import DropAfterEvents, Healthy, LoopbackServer, StallAfterEvents

MESSAGES = [{"role": "user", "content": "Weather in Paris?"}]


@pytest.fixture(scope="module")
def server() -> Any:
    with LoopbackServer() as srv:
        yield srv


def _engine(server: LoopbackServer, model: str, *, is_async: bool = False) -> StreamEngine:
    factory: Any = openai.AsyncOpenAI if is_async else openai.OpenAI
    route = OpenAIResponses(
        lambda: factory(base_url=server.openai_base_url, api_key="test"), model=model
    )
    return StreamEngine(
        routes=[route],
        timeouts=Timeouts(first_token=1.0, stale=0.5, total=20),
        retry=RetryPolicy(max_attempts=3, initial_backoff=0.0),
    )


def test_text_and_usage(server: LoopbackServer) -> None:
    server.script("resp-text", [Healthy()])
    with (
        _engine(server, "resp-text") as engine,
        engine.stream(messages=MESSAGES, max_tokens=50) as run,
    ):
        kinds = [event.type for event in run]
    assert run.state == "completed" and kinds[-1] == "stop"
    assert run.message is not None
    assert run.message.text == "The weather in Paris is sunny and 18°C."
    assert run.message.stop_reason == "stop"
    assert run.message.usage is not None and run.message.usage.output_tokens == 10
    assert run.attempts[0].api_mode == "responses"


def test_function_call_with_call_id(server: LoopbackServer) -> None:
    server.script("resp-tool", [Healthy(recording="tool_call")])
    with (
        _engine(server, "resp-tool") as engine,
        engine.stream(messages=MESSAGES, max_tokens=50) as run,
    ):
        for _ in run:
            pass
    assert run.message is not None
    (call,) = run.message.tool_calls
    assert (call.id, call.name, call.arguments) == (
        "call_loopback_0001",
        "get_weather",
        '{"location":"Paris, France"}',
    )
    assert run.message.stop_reason == "tool_calls"


@pytest.mark.parametrize(
    "fault", [StallAfterEvents(n=2), DropAfterEvents(n=3)], ids=["stale", "dropped"]
)
def test_stall_and_drop_recover_with_a_restart(server: LoopbackServer, fault: Any) -> None:
    key = f"resp-{type(fault).__name__}"
    server.script(key, [fault])
    with _engine(server, key) as engine, engine.stream(messages=MESSAGES, max_tokens=50) as run:
        kinds = [event.type for event in run]
    assert run.state == "completed"
    assert "restart" in kinds
    assert run.attempts[0].outcome in ("stale", "dropped")
    assert {s.step for s in run.attempts[0].diagnostics.cleanup} >= {"abort", "close", "rebuild"}
    assert server.wait_idle(2.0)


def test_response_failed_is_classified_like_a_500_and_retried(server: LoopbackServer) -> None:
    server.script("resp-failed", [Healthy(recording="failed")])
    with (
        _engine(server, "resp-failed") as engine,
        engine.stream(messages=MESSAGES, max_tokens=50) as run,
    ):
        for _ in run:
            pass
    first, second = run.attempts
    assert (first.outcome, first.diagnostics.http_status) == ("error", 500)
    assert second.outcome == "completed"


def test_async_driver_on_responses(server: LoopbackServer) -> None:
    server.script("resp-async", [StallAfterEvents(n=1)])

    async def main() -> Any:
        async with _engine(server, "resp-async", is_async=True) as engine:
            async with engine.astream(messages=MESSAGES, max_tokens=50) as run:
                async for _ in run:
                    pass
            return run

    run = asyncio.run(main())
    assert [a.outcome for a in run.attempts] == ["stale", "completed"]
