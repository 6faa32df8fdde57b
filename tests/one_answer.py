"""One answer from one route of the loopback server, on either driver: the message the
engine built, for tests about what a turn leaves for the next one."""

from __future__ import annotations

import asyncio
from typing import Any

import anthropic
import openai

from lifecycle import Message, RetryPolicy, StreamEngine, Timeouts
from providers import AnthropicMessages, OpenAIChatCompletions, OpenAIResponses
from providers.loopback import LoopbackServer

MESSAGES = [{"role": "user", "content": "Weather in Paris?"}]
ROUTES: dict[str, Any] = {
    "anthropic_messages": AnthropicMessages,
    "chat_completions": OpenAIChatCompletions,
    "responses": OpenAIResponses,
}


def one_answer(
    server: LoopbackServer, api_mode: str, fault: Any, *, model: str, driver: str
) -> Message:
    """The message of one run on a route of ``api_mode`` that the server answers with
    ``fault``; the run must complete in one attempt."""
    server.script(model, [fault])
    is_async = driver == "async"
    if api_mode == "anthropic_messages":
        anthropic_cls: Any = anthropic.AsyncAnthropic if is_async else anthropic.Anthropic
        base = server.anthropic_base_url

        def factory() -> Any:
            return anthropic_cls(base_url=base, api_key="test")
    else:
        openai_cls: Any = openai.AsyncOpenAI if is_async else openai.OpenAI
        base = server.openai_base_url

        def factory() -> Any:
            return openai_cls(base_url=base, api_key="test")

    engine = StreamEngine(
        routes=[ROUTES[api_mode](factory, model=model)],
        timeouts=Timeouts(first_token=10, stale=10, total=60),
        retry=RetryPolicy(max_attempts=1),
    )
    if is_async:

        async def consume() -> Message | None:
            async with engine:
                async with engine.astream(messages=MESSAGES, max_tokens=1024) as run:
                    async for _ in run:
                        pass
                assert run.state == "completed", run.attempts
                return run.message

        message = asyncio.run(consume())
    else:
        with engine, engine.stream(messages=MESSAGES, max_tokens=1024) as run:
            for _ in run:
                pass
        assert run.state == "completed", run.attempts
        message = run.message
    assert message is not None
    return message
