"""What every adapter's stream (``providers._sdk.stream``) hands the engine once it is
closed: the response's id and model as its wire named them, sync and async, for each of
the three wire APIs (the ids and models of the recordings the loopback server replays)."""

from __future__ import annotations

import asyncio
from typing import Any

import anthropic
import openai
import pytest

from lifecycle import RetryPolicy, StreamEngine, Timeouts
from providers import AnthropicMessages, OpenAIChatCompletions, OpenAIResponses
from providers.loopback import Healthy, LoopbackServer

MESSAGES = [{"role": "user", "content": "Hi"}]

CASES: dict[str, tuple[str, str, str]] = {
    # api: (recording, its response id, its model)
    "anthropic": ("tool_use", "msg_019Q1hrJbZG26Fb9BQhrkHEr", "claude-sonnet-4-20250514"),
    "chat": ("text_basic", "chatcmpl-ABfw1e5abtU8OwGr15vOreYVb2MiF", "gpt-4o-2024-08-06"),
    "responses": ("text_basic", "resp_loopback_0001", "gpt-4o-2024-08-06"),
}


@pytest.fixture(scope="module")
def server() -> Any:
    with LoopbackServer() as srv:
        yield srv


def _engine(server: LoopbackServer, api: str, key: str, *, is_async: bool) -> StreamEngine:
    headers = {"x-loopback-key": key}
    route: Any
    if api == "anthropic":
        sdk: Any = anthropic.AsyncAnthropic if is_async else anthropic.Anthropic
        route = AnthropicMessages(
            lambda: sdk(base_url=server.anthropic_base_url, api_key="t", default_headers=headers),
            model="claude-x",
        )
    else:
        sdk = openai.AsyncOpenAI if is_async else openai.OpenAI
        route_class: Any = OpenAIChatCompletions if api == "chat" else OpenAIResponses
        route = route_class(
            lambda: sdk(base_url=server.openai_base_url, api_key="t", default_headers=headers),
            model="gpt-x",
        )
    return StreamEngine(
        routes=[route],
        timeouts=Timeouts(first_token=5, stale=5, total=20),
        retry=RetryPolicy(max_attempts=1),
    )


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("api", sorted(CASES))
def test_the_closed_stream_names_the_response_and_its_model(
    server: LoopbackServer, api: str, is_async: bool
) -> None:
    recording, response_id, model = CASES[api]
    key = f"sdk-stream-{api}-{is_async}"
    server.script(key, [Healthy(recording=recording)])
    engine = _engine(server, api, key, is_async=is_async)
    if is_async:

        async def main() -> Any:
            async with engine:
                run = engine.astream(messages=MESSAGES, max_tokens=16)
                async for _ in run:
                    pass
                return run

        run = asyncio.run(main())
    else:
        with engine:
            run = engine.stream(messages=MESSAGES, max_tokens=16)
            with run:
                kinds = [event.type for event in run]
            assert kinds[-1] == "stop"
    assert run.state == "completed"
    (attempt,) = run.attempts
    assert attempt.diagnostics.response_id == response_id
    assert attempt.diagnostics.response_model == model
    assert attempt.diagnostics.unknown_events == 0
    assert server.wait_idle(3.0), f"leaked connections: {server.open_connections}"
