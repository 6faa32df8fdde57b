"""OpenAI-compatible servers: keep-alive comments, base_url routes, no stream_options."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from lifecycle import RetryPolicy, StreamEngine, StreamFailed, Timeouts
from providers import OpenAIChatCompletions
from providers.loopback import Healthy, HttpError, LoopbackServer, PingsOnly
from providers.openai_chat_completions import WITHOUT_STREAM_OPTIONS

MESSAGES = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def server() -> Any:
    with LoopbackServer() as srv:
        yield srv


def _route(server: LoopbackServer, model: str) -> OpenAIChatCompletions:
    return OpenAIChatCompletions(
        lambda: openai.OpenAI(base_url=server.openai_base_url, api_key="local"), model=model
    )


def test_a_server_without_stream_options_is_retried_once_without_and_remembered(
    server: LoopbackServer,
) -> None:
    refusal = HttpError(
        status=400,
        body=b'{"error": {"message": "Unrecognized request argument supplied: stream_options",'
        b' "type": "invalid_request_error", "code": null}}',
    )
    server.script("compat-no-options", [refusal, Healthy(), Healthy()])
    route = _route(server, "compat-no-options")
    engine = StreamEngine(routes=[route], retry=RetryPolicy(max_attempts=2, initial_backoff=0.0))
    with engine, engine.stream(messages=MESSAGES, max_tokens=16) as run:
        for _ in run:
            pass
        assert run.state == "completed"
        assert [a.outcome for a in run.attempts] == ["error", "completed"]
        assert engine._route_clients(route).learned == {WITHOUT_STREAM_OPTIONS}
        with engine.stream(messages=MESSAGES, max_tokens=16) as second:
            for _ in second:
                pass
        assert [a.outcome for a in second.attempts] == ["completed"]
    # What one engine learned is its own: another engine over the same route object
    # still asks for usage first (and is refused, as the first was).
    server.script("compat-no-options", [refusal, Healthy()])
    other = StreamEngine(routes=[route], retry=RetryPolicy(max_attempts=2, initial_backoff=0.0))
    with other, other.stream(messages=MESSAGES, max_tokens=16) as third:
        for _ in third:
            pass
    assert [a.outcome for a in third.attempts] == ["error", "completed"]
    assert engine._route_clients(route).learned == other._route_clients(route).learned
    asked_for_usage = [
        "stream_options" in body for body in server.bodies() if body["model"] == route.model
    ]
    assert asked_for_usage == [True, False, False, True, False]


def test_another_400_still_fails_fast(server: LoopbackServer) -> None:
    server.script("compat-400", [HttpError(status=400)])
    route = _route(server, "compat-400")
    engine = StreamEngine(routes=[route], retry=RetryPolicy(max_attempts=3))
    with (
        engine,
        engine.stream(messages=MESSAGES, max_tokens=16) as run,
        pytest.raises(StreamFailed),
    ):
        for _ in run:
            pass
    assert len(run.attempts) == 1 and not engine._route_clients(route).learned


def test_sse_comment_keepalives_are_not_progress(server: LoopbackServer) -> None:
    """`: OPENROUTER PROCESSING`-style comments keep bytes flowing; the stream is stale."""
    server.script("compat-comments", [PingsOnly(interval=0.05)])
    engine = StreamEngine(
        routes=[_route(server, "compat-comments")],
        timeouts=Timeouts(first_token=0.4, stale=0.4, total=10),
        retry=RetryPolicy(max_attempts=2, initial_backoff=0.0),
    )
    with engine, engine.stream(messages=MESSAGES, max_tokens=16) as run:
        for _ in run:
            pass
    first = run.attempts[0]
    assert first.outcome == "stale" and first.diagnostics.stall_clock == "first_token"
    assert first.diagnostics.bytes > 0  # bytes arrived; progress did not
