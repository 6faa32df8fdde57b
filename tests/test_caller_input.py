"""Hostile input from the caller: each a clear error naming the field, before any request."""

from __future__ import annotations

import math
from typing import Any

import anthropic
import openai
import pytest

from lifecycle import RetryPolicy, StreamEngine, StreamFailed, Timeouts
from providers import AnthropicMessages, OpenAIChatCompletions, OpenAIResponses
from providers.loopback import LoopbackServer


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"stale": -1}, "stale"),
        ({"stale": 0}, "stale"),
        ({"connect": math.nan}, "connect"),
        ({"first_token": 100, "total": 50}, "first_token"),
        ({"total": "10"}, "total"),
    ],
)
def test_invalid_timeouts_name_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises((ValueError, TypeError), match=f"Timeouts.{field}"):
        Timeouts(**kwargs)


def test_max_attempts_zero_is_refused() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)


def test_an_empty_route_list_is_refused() -> None:
    with pytest.raises(ValueError, match="routes"):
        StreamEngine(routes=[])


@pytest.mark.parametrize(
    ("route_class", "wrong"),
    [
        (AnthropicMessages, openai.OpenAI),
        (OpenAIChatCompletions, anthropic.Anthropic),
        (OpenAIResponses, anthropic.AsyncAnthropic),
    ],
)
def test_a_client_class_of_the_wrong_sdk_is_refused_at_construction(
    route_class: Any, wrong: Any
) -> None:
    with pytest.raises(TypeError, match="client_factory"):
        route_class(wrong, model="m")


def test_a_non_callable_factory_is_refused() -> None:
    with pytest.raises(TypeError, match="client_factory"):
        AnthropicMessages(anthropic.Anthropic(api_key="k"), model="m")  # type: ignore[arg-type]


def test_a_factory_that_raises_fails_before_any_request_naming_the_route() -> None:
    """A function factory is only called when the route is first needed (a route that
    is never used never builds a client); when it raises, no request is sent and the
    failure names the route and the cause."""

    def no_key() -> anthropic.Anthropic:
        raise anthropic.AnthropicError("The api_key client option must be set")

    with LoopbackServer() as server:
        engine = StreamEngine(routes=[AnthropicMessages(no_key, model="claude-nokey")])
        with engine, pytest.raises(StreamFailed, match="claude-nokey") as failed:
            for _ in engine.stream(messages=[{"role": "user", "content": "Hi"}], max_tokens=8):
                pass
        assert server.requests_received == 0
    assert "api_key" in str(failed.value)


def test_check_factories_fails_at_construction_naming_the_route() -> None:
    def no_key() -> anthropic.Anthropic:
        raise anthropic.AnthropicError("The api_key client option must be set")

    with pytest.raises(ValueError, match=r"routes=\.\.\.\)\[1\].*client_factory raised"):
        StreamEngine(
            routes=[
                OpenAIChatCompletions(lambda: openai.OpenAI(api_key="k"), model="gpt"),
                AnthropicMessages(no_key, model="claude"),
            ],
            check_factories=True,
        )
    with pytest.raises(TypeError, match=r"routes=\.\.\.\)\[0\].*anthropic.Anthropic"):
        StreamEngine(
            routes=[AnthropicMessages(lambda: openai.OpenAI(api_key="k"), model="claude")],
            check_factories=True,
        )


def test_check_factories_keeps_the_clients_it_built() -> None:
    route = AnthropicMessages(lambda: anthropic.Anthropic(api_key="k"), model="claude")
    with StreamEngine(routes=[route], check_factories=True) as engine:
        slot = engine._route_clients(route).sync
        assert slot.built_count == 1
        assert slot.current_client is not None
