"""Provider artifacts (issue 11 item 3, capture side): Anthropic's signed thinking and
redacted_thinking blocks and the Responses API's reasoning items are kept on the message,
byte-identical and in stream order, tagged with the api_mode that issued them.

The expected artifacts are read from the recordings themselves (the documented event
schemas), independently of the adapters; the runs go through the real SDKs over HTTP to
the loopback server, on both drivers.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from one_answer import one_answer

from lifecycle import Message, ProviderArtifact
from providers.loopback import Healthy, LoopbackServer, recordings

REASONING_INPUT_KEYS = {"type", "id", "summary", "content", "encrypted_content", "status"}


@pytest.fixture(scope="module")
def server() -> Any:
    with LoopbackServer() as srv:
        yield srv


def streamed_message(
    server: LoopbackServer, api_mode: str, recording: str, *, driver: str, model: str
) -> Message:
    """The message of one healthy replay of ``recording`` on a route of ``api_mode``."""
    return one_answer(server, api_mode, Healthy(recording=recording), model=model, driver=driver)


def anthropic_artifacts_of(recording: str) -> list[dict[str, Any]]:
    """The thinking and redacted_thinking blocks as the recording streams them."""
    blocks: dict[int, dict[str, Any]] = {}
    for block in recordings.load("anthropic", recording).blocks:
        payload = block.json()
        if payload["type"] == "content_block_start":
            content = payload["content_block"]
            if content["type"] in ("thinking", "redacted_thinking"):
                blocks[payload["index"]] = dict(content)
        elif payload["type"] == "content_block_delta" and payload["index"] in blocks:
            delta = payload["delta"]
            target = blocks[payload["index"]]
            if delta["type"] == "thinking_delta":
                target["thinking"] += delta["thinking"]
            elif delta["type"] == "signature_delta":
                target["signature"] += delta["signature"]
    return [blocks[index] for index in sorted(blocks)]


def responses_artifacts_of(recording: str) -> list[dict[str, Any]]:
    """The reasoning items of the recording's response.output_item.done events."""
    items = []
    for block in recordings.load("openai_responses", recording).blocks:
        payload = block.json()
        if payload["type"] == "response.output_item.done" and payload["item"]["type"] == (
            "reasoning"
        ):
            items.append({k: v for k, v in payload["item"].items() if k in REASONING_INPUT_KEYS})
    return items


@pytest.mark.parametrize("driver", ["sync", "async"])
def test_anthropic_thinking_and_redacted_blocks_are_kept_byte_identical_in_stream_order(
    server: LoopbackServer, driver: str
) -> None:
    message = streamed_message(
        server,
        "anthropic_messages",
        "thinking_tool_use",
        driver=driver,
        model=f"claude-artifacts-{driver}",
    )
    expected = anthropic_artifacts_of("thinking_tool_use")
    assert [a["type"] for a in expected] == ["thinking", "redacted_thinking", "thinking"]
    assert message.provider_artifacts == tuple(
        ProviderArtifact(api_mode="anthropic_messages", item=item) for item in expected
    )
    raw = b"".join(b.raw for b in recordings.load("anthropic", "thinking_tool_use").blocks)
    for artifact in message.provider_artifacts:
        for key in ("signature", "data"):
            if key in artifact.item:
                # The exact bytes the provider sent, as JSON text on the wire.
                assert json.dumps(artifact.item[key]).encode() in raw
    assert message.thinking == "".join(a["thinking"] for a in expected if a["type"] == "thinking")
    (call,) = message.tool_calls
    assert (call.id, call.name, json.loads(call.arguments)) == (
        "toolu_01ThinkLoopbackWeather01",
        "get_weather",
        {"location": "Paris", "unit": "celsius"},
    )
    assert message.to_dict() == {
        "role": "assistant",
        "content": "I'll look up the weather in Paris.",
        "tool_calls": [
            {
                "id": "toolu_01ThinkLoopbackWeather01",
                "type": "function",
                "function": {"name": "get_weather", "arguments": call.arguments},
            }
        ],
        "provider_artifacts": [{"api_mode": "anthropic_messages", "item": i} for i in expected],
    }


@pytest.mark.parametrize("driver", ["sync", "async"])
def test_responses_reasoning_item_is_kept_as_the_done_event_delivered_it(
    server: LoopbackServer, driver: str
) -> None:
    message = streamed_message(
        server, "responses", "reasoning_tool_call", driver=driver, model=f"o4-artifacts-{driver}"
    )
    (expected,) = responses_artifacts_of("reasoning_tool_call")
    assert set(expected) == {"type", "id", "summary", "encrypted_content"}
    assert message.provider_artifacts == (ProviderArtifact(api_mode="responses", item=expected),)
    # Not the output_item.added one, whose encrypted_content is a partial placeholder.
    added = next(
        b.json()["item"]
        for b in recordings.load("openai_responses", "reasoning_tool_call").blocks
        if b.json()["type"] == "response.output_item.added"
    )
    assert added["encrypted_content"] != expected["encrypted_content"]
    assert message.thinking == expected["summary"][0]["text"]
    (call,) = message.tool_calls
    assert (call.id, call.name) == ("call_Reason0001Weather", "get_weather")
    turn = message.to_dict()
    assert turn["provider_artifacts"] == [{"api_mode": "responses", "item": expected}]
    assert turn["tool_calls"][0]["id"] == "call_Reason0001Weather"


@pytest.mark.parametrize(
    ("api_mode", "recording"),
    [
        ("anthropic_messages", "tool_use"),
        ("chat_completions", "tool_calls_cached"),
        ("responses", "tool_call"),
    ],
)
def test_a_turn_without_thinking_carries_no_artifacts(
    server: LoopbackServer, api_mode: str, recording: str
) -> None:
    message = streamed_message(
        server, api_mode, recording, driver="sync", model=f"plain-{api_mode}"
    )
    assert message.provider_artifacts == ()
    assert "provider_artifacts" not in message.to_dict()
    assert message.to_dict()["tool_calls"]


def test_to_dict_hands_out_copies(server: LoopbackServer) -> None:
    message = streamed_message(
        server, "anthropic_messages", "thinking_tool_use", driver="sync", model="claude-copies"
    )
    turn = message.to_dict()
    turn["provider_artifacts"][0]["item"]["signature"] = "edited"
    assert message.to_dict()["provider_artifacts"][0]["item"]["signature"] != "edited"
    json.dumps(turn)  # the neutral turn is plain JSON
