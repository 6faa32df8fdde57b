"""Delivery semantics: a tool call cut mid-stream never reaches the caller as a tool call."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import pytest

from lifecycle import RetryPolicy, StreamEngine, StreamFailed, Timeouts
from providers import AnthropicMessages
from providers.loopback import DropAfterEvents, Healthy, LoopbackServer

MESSAGES = [{"role": "user", "content": "What's the weather?"}]


@pytest.fixture(scope="module")
def server() -> Any:
    with LoopbackServer() as srv:
        yield srv


def _engine(server: LoopbackServer, key: str, **retry: Any) -> StreamEngine:
    route = AnthropicMessages(
        lambda: anthropic.Anthropic(
            base_url=server.anthropic_base_url,
            api_key="test",
            default_headers={"x-loopback-key": key},
        ),
        model="claude-delivery",
    )
    return StreamEngine(
        routes=[route],
        timeouts=Timeouts(first_token=5, stale=5, total=20),
        retry=RetryPolicy(**({"max_attempts": 2, "initial_backoff": 0.0} | retry)),
    )


def test_a_tool_call_cut_by_a_drop_is_retried_and_only_the_whole_one_surfaces(
    server: LoopbackServer,
) -> None:
    key = "delivery-restart"
    # Meaningful events 3-7 of tool_use are the call's argument deltas: drop after 4.
    server.script(key, [DropAfterEvents(n=4, recording="tool_use"), Healthy(recording="tool_use")])
    with _engine(server, key) as engine, engine.stream(messages=MESSAGES, max_tokens=64) as run:
        kinds = [event.type for event in run]
    assert run.state == "completed"
    assert [a.outcome for a in run.attempts] == ["dropped", "completed"]
    assert "restart" in kinds
    assert run.message is not None and not run.message.incomplete_tool_calls
    (call,) = run.message.tool_calls
    assert call.name and isinstance(json.loads(call.arguments), dict)


def test_on_partial_fail_carries_the_cut_call_as_incomplete(server: LoopbackServer) -> None:
    key = "delivery-fail"
    server.script(key, [DropAfterEvents(n=4, recording="tool_use")])
    with (
        _engine(server, key, on_partial="fail") as engine,
        pytest.raises(StreamFailed) as failed,
        engine.stream(messages=MESSAGES, max_tokens=64) as run,
    ):
        for _ in run:
            pass
    partial = failed.value.partial_message
    assert partial is not None and partial.tool_calls == ()
    (cut,) = partial.incomplete_tool_calls
    assert cut.name and "connection lost" in cut.reason
    assert run.state == "failed"


def test_a_call_cut_by_max_tokens_is_incomplete_not_a_tool_call(server: LoopbackServer) -> None:
    key = "delivery-max-tokens"
    # Recorded from the API: the tool input stops mid-JSON, then stop_reason max_tokens.
    server.script(key, [Healthy(recording="incomplete_partial_json")])
    with _engine(server, key) as engine, engine.stream(messages=MESSAGES, max_tokens=64) as run:
        for _ in run:
            pass
    assert run.state == "completed"
    assert run.message is not None and run.message.stop_reason == "length"
    assert run.message.provider_stop_reason == "max_tokens"
    assert run.message.tool_calls == ()
    (cut,) = run.message.incomplete_tool_calls
    assert cut.name == "make_file" and "max_tokens" in cut.reason
