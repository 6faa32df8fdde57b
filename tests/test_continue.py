"""on_partial="continue": a text-only answer cut mid-stream is continued on the same
route from the delivered text (an assistant prefix) and stitched, with no restart."""

from __future__ import annotations

from typing import Any

import anthropic
import pytest

from lifecycle import RetryPolicy, StreamEngine, Timeouts
from lifecycle.adapters import Request
from providers import AnthropicMessages, OpenAIChatCompletions
from providers.loopback import DropAfterEvents, Healthy, LoopbackServer, recordings

MESSAGES = [{"role": "user", "content": "Tell me a story"}]


class RecordingRoute(AnthropicMessages):
    """The real adapter, remembering the requests it was asked to send."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent: list[Request] = []

    def open(self, client: Any, request: Request, timeouts: Timeouts, **kwargs: Any) -> Any:
        self.sent.append(request)
        return super().open(client, request, timeouts, **kwargs)


@pytest.fixture(scope="module")
def server() -> Any:
    with LoopbackServer() as srv:
        yield srv


def _route(server: LoopbackServer, model: str) -> RecordingRoute:
    return RecordingRoute(
        lambda: anthropic.Anthropic(base_url=server.anthropic_base_url, api_key="t"), model=model
    )


def test_cut_text_is_continued_and_stitched(server: LoopbackServer) -> None:
    server.script("continue-text", [DropAfterEvents(n=2), Healthy()])
    route = _route(server, "continue-text")
    engine = StreamEngine(
        routes=[route],
        retry=RetryPolicy(max_attempts=2, initial_backoff=0.0, on_partial="continue"),
    )
    with engine, engine.stream(messages=MESSAGES, max_tokens=64) as run:
        events = list(run)
    assert [e.type for e in events].count("restart") == 0
    shown = "".join(e.text for e in events if e.type == "text")
    assert run.message is not None and run.message.text == shown
    first, second = route.sent
    delivered = recordings.load("anthropic", "text_basic")
    assert len(first.messages) == 1
    assert second.messages[-1]["role"] == "assistant"
    prefix = second.messages[-1]["content"]
    assert prefix and delivered.text().startswith(prefix)
    # The loopback replays the whole recording as the "continuation", so the stitched
    # answer is exactly: what was delivered before the drop + what came after.
    assert shown.endswith(delivered.text())
    assert shown[: len(shown) - len(delivered.text())].rstrip() == prefix


def test_continue_falls_back_to_restart_for_tool_calls(server: LoopbackServer) -> None:
    server.script(
        "continue-tool", [DropAfterEvents(n=4, recording="tool_use"), Healthy(recording="tool_use")]
    )
    route = _route(server, "continue-tool")
    engine = StreamEngine(
        routes=[route],
        retry=RetryPolicy(max_attempts=2, initial_backoff=0.0, on_partial="continue"),
    )
    with engine, engine.stream(messages=MESSAGES, max_tokens=64) as run:
        kinds = [e.type for e in run]
    assert "restart" in kinds
    assert all(len(r.messages) == 1 for r in route.sent)  # no prefix sent


def test_continue_never_crosses_to_another_route(server: LoopbackServer) -> None:
    import openai

    server.script("continue-cross", [DropAfterEvents(n=2)])
    server.script("continue-cross-b", [Healthy()])
    routes = [
        _route(server, "continue-cross"),
        OpenAIChatCompletions(
            lambda: openai.OpenAI(base_url=server.openai_base_url, api_key="t"),
            model="continue-cross-b",
        ),
    ]
    engine = StreamEngine(
        routes=routes, retry=RetryPolicy(max_attempts=1, initial_backoff=0.0, on_partial="continue")
    )
    with engine, engine.stream(messages=MESSAGES, max_tokens=64) as run:
        kinds = [e.type for e in run]
    assert "restart" in kinds  # another model does not continue this one's text
    assert run.attempts[-1].api_mode == "chat_completions"
