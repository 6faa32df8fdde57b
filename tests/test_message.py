"""The answer in one vocabulary (issue 11 item 5) and ``Message.to_dict()``.

``stop_reason`` is one of ``STOP_REASONS`` on every route, the provider's own word in
``provider_stop_reason``; ``Usage.input_tokens`` counts all input on every route, cached
included, beside the cache and reasoning counts. Each row runs a recording (or an edit of
one) through the real SDK over HTTP to the loopback server.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from one_answer import one_answer

from lifecycle import (
    STOP_REASONS,
    Message,
    ProviderArtifact,
    ToolCall,
    Usage,
)
from providers.loopback import Healthy, LoopbackServer, RawResponse, recordings

FOLDER = {
    "anthropic_messages": "anthropic",
    "chat_completions": "openai",
    "responses": "openai_responses",
}


@pytest.fixture(scope="module")
def server() -> Any:
    with LoopbackServer() as srv:
        yield srv


def edited(api_mode: str, recording: str, *changes: tuple[str, str]) -> RawResponse:
    """The recording with some text replaced, for a stop reason no capture has."""
    folder: Any = FOLDER[api_mode]
    body = b"".join(b.raw for b in recordings.load(folder, recording).blocks)
    for old, new in changes:
        assert old.encode() in body, (recording, old)
        body = body.replace(old.encode(), new.encode())
    return RawResponse(body=body)


def incomplete(reason: str) -> RawResponse:
    """Responses' text_basic ending in response.incomplete for ``reason``."""
    return edited(
        "responses",
        "text_basic",
        ("response.completed", "response.incomplete"),
        ('"incomplete_details": null', '"incomplete_details": ' + json.dumps({"reason": reason})),
    )


# (api_mode, what the server sends, neutral stop_reason, provider_stop_reason)
STOPS: list[tuple[str, Any, str, str]] = [
    ("anthropic_messages", Healthy(recording="text_basic"), "stop", "end_turn"),
    (
        "anthropic_messages",
        edited("anthropic_messages", "text_basic", ('"end_turn"', '"stop_sequence"')),
        "stop",
        "stop_sequence",
    ),
    ("anthropic_messages", Healthy(recording="tool_use"), "tool_calls", "tool_use"),
    ("anthropic_messages", Healthy(recording="thinking_tool_use"), "tool_calls", "tool_use"),
    ("anthropic_messages", Healthy(recording="incomplete_partial_json"), "length", "max_tokens"),
    ("anthropic_messages", Healthy(recording="refusal"), "content_filter", "refusal"),
    (
        "anthropic_messages",
        edited("anthropic_messages", "text_basic", ('"end_turn"', '"pause_turn"')),
        "pause",
        "pause_turn",
    ),
    ("chat_completions", Healthy(recording="text_basic"), "stop", "stop"),
    ("chat_completions", Healthy(recording="length_cutoff"), "length", "length"),
    ("chat_completions", Healthy(recording="tool_calls_cached"), "tool_calls", "tool_calls"),
    (
        "chat_completions",
        edited("chat_completions", "tool_calls_a", ('"tool_calls"}', '"function_call"}')),
        "tool_calls",
        "function_call",
    ),
    (
        "chat_completions",
        edited(
            "chat_completions",
            "text_basic",
            ('"finish_reason":"stop"', '"finish_reason":"content_filter"'),
        ),
        "content_filter",
        "content_filter",
    ),
    ("responses", Healthy(recording="text_basic"), "stop", "completed"),
    ("responses", Healthy(recording="tool_call"), "tool_calls", "completed"),
    ("responses", Healthy(recording="reasoning_tool_call"), "tool_calls", "completed"),
    ("responses", incomplete("max_output_tokens"), "length", "max_output_tokens"),
    ("responses", incomplete("content_filter"), "content_filter", "content_filter"),
]


@pytest.mark.parametrize(
    ("api_mode", "fault", "stop_reason", "provider_stop_reason"),
    STOPS,
    ids=[f"{row[0]}-{row[3]}-{i}" for i, row in enumerate(STOPS)],
)
def test_stop_reason_is_one_vocabulary_on_every_route(
    server: LoopbackServer, api_mode: str, fault: Any, stop_reason: str, provider_stop_reason: str
) -> None:
    model = f"stop-{api_mode}-{STOPS.index((api_mode, fault, stop_reason, provider_stop_reason))}"
    message = one_answer(server, api_mode, fault, model=model, driver="sync")
    assert (message.stop_reason, message.provider_stop_reason) == (
        stop_reason,
        provider_stop_reason,
    )
    assert message.stop_reason in STOP_REASONS


def test_the_vocabulary() -> None:
    assert STOP_REASONS == ("stop", "length", "tool_calls", "content_filter", "pause")


# (api_mode, recording, the usage it reports), the counts read off the recordings.
USAGES: list[tuple[str, str, Usage]] = [
    # Anthropic's input_tokens is the uncached part: 24 + 3500 read + 1200 written.
    (
        "anthropic_messages",
        "thinking_tool_use",
        Usage(
            input_tokens=4724,
            output_tokens=187,
            cache_read_tokens=3500,
            cache_write_tokens=1200,
            reasoning_tokens=112,
        ),
    ),
    (
        "anthropic_messages",
        "tool_use",
        Usage(input_tokens=377, output_tokens=65, cache_read_tokens=0, cache_write_tokens=0),
    ),
    ("anthropic_messages", "text_basic", Usage(input_tokens=11, output_tokens=6)),
    (
        "anthropic_messages",
        "stream_a_refusal",
        Usage(
            input_tokens=28,
            output_tokens=106,
            cache_read_tokens=0,
            cache_write_tokens=0,
            reasoning_tokens=67,
        ),
    ),
    # prompt_tokens already counts the cached part.
    (
        "chat_completions",
        "tool_calls_cached",
        Usage(input_tokens=2006, output_tokens=18, cache_read_tokens=1920, reasoning_tokens=0),
    ),
    (
        "chat_completions",
        "text_basic",
        Usage(input_tokens=79, output_tokens=14, reasoning_tokens=0),
    ),
    (
        "responses",
        "reasoning_tool_call",
        Usage(input_tokens=2048, output_tokens=320, cache_read_tokens=1536, reasoning_tokens=256),
    ),
    (
        "responses",
        "text_basic",
        Usage(input_tokens=12, output_tokens=10, cache_read_tokens=0, reasoning_tokens=0),
    ),
]


@pytest.mark.parametrize("driver", ["sync", "async"])
@pytest.mark.parametrize(
    ("api_mode", "recording", "usage"), USAGES, ids=[f"{r[0]}-{r[1]}" for r in USAGES]
)
def test_usage_means_the_same_on_every_route(
    server: LoopbackServer, api_mode: str, recording: str, usage: Usage, driver: str
) -> None:
    message = one_answer(
        server,
        api_mode,
        Healthy(recording=recording),
        model=f"usage-{api_mode}-{recording}-{driver}",
        driver=driver,
    )
    assert message.usage == usage


def test_cached_input_is_part_of_input_on_every_route(server: LoopbackServer) -> None:
    """The recordings with cache hits: a budget computed from input_tokens is the same
    whichever route answered."""
    for api_mode, recording in [
        ("anthropic_messages", "thinking_tool_use"),
        ("chat_completions", "tool_calls_cached"),
        ("responses", "reasoning_tool_call"),
    ]:
        usage = one_answer(
            server,
            api_mode,
            Healthy(recording=recording),
            model=f"cached-{api_mode}",
            driver="sync",
        ).usage
        assert usage is not None and usage.input_tokens is not None
        assert usage.cache_read_tokens
        assert usage.input_tokens >= usage.cache_read_tokens + (usage.cache_write_tokens or 0)


# -- to_dict -------------------------------------------------------------------------


def test_to_dict_of_a_text_answer() -> None:
    message = Message(text="Sunny.", stop_reason="stop", api_mode="chat_completions")
    assert message.to_dict() == {"role": "assistant", "content": "Sunny."}


def test_to_dict_of_a_tool_call_turn_without_text() -> None:
    message = Message(
        tool_calls=(
            ToolCall(id="call_1", name="get_weather", arguments='{"city":"Paris"}'),
            ToolCall(id="call_2", name="get_time", arguments="{}"),
        ),
        stop_reason="tool_calls",
    )
    assert message.to_dict() == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
            },
            {
                "id": "call_2",
                "type": "function",
                "function": {"name": "get_time", "arguments": "{}"},
            },
        ],
    }


def test_to_dict_keeps_artifacts_in_order_with_their_issuer() -> None:
    thinking = {"type": "thinking", "thinking": "Hm.", "signature": "c2ln"}
    redacted = {"type": "redacted_thinking", "data": "ZGF0YQ=="}
    message = Message(
        text="Done.",
        provider_artifacts=(
            ProviderArtifact(api_mode="anthropic_messages", item=thinking),
            ProviderArtifact(api_mode="anthropic_messages", item=redacted),
        ),
    )
    turn = message.to_dict()
    assert turn["provider_artifacts"] == [
        {"api_mode": "anthropic_messages", "item": thinking},
        {"api_mode": "anthropic_messages", "item": redacted},
    ]
    assert json.loads(json.dumps(turn)) == turn
    assert "tool_calls" not in turn


def test_incomplete_tool_calls_stay_out_of_the_history() -> None:
    """A call cut mid-stream must never be executed, so it is not handed back either."""
    from lifecycle import IncompleteToolCall

    message = Message(
        incomplete_tool_calls=(
            IncompleteToolCall(id="c", name="f", arguments='{"a": ', reason="cut"),
        ),
    )
    assert message.to_dict() == {"role": "assistant", "content": None}
