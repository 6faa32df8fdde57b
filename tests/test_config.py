"""Configuration is checked when it is built, and errors name the field at fault."""

from __future__ import annotations

import math
from typing import Any

import anthropic
import openai
import pytest

from lifecycle import RetryPolicy, StreamEngine, StreamFailed, Timeouts
from providers import AnthropicMessages, OpenAIChatCompletions

pytestmark = pytest.mark.timeout(30)

NAN = math.nan


@pytest.mark.parametrize("field", ["connect", "first_token", "stale", "total"])
@pytest.mark.parametrize(
    "value", [-1.0, 0, 0.0, NAN], ids=["negative", "zero", "zero-float", "nan"]
)
def test_timeouts_reject_non_positive_values(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=rf"Timeouts\.{field}\b"):
        Timeouts(**{field: value})


@pytest.mark.parametrize("field", ["connect", "first_token", "stale", "total"])
@pytest.mark.parametrize("value", ["1", None, True, [1]], ids=["str", "none", "bool", "list"])
def test_timeouts_reject_non_numbers(field: str, value: Any) -> None:
    with pytest.raises(TypeError, match=rf"Timeouts\.{field}\b"):
        Timeouts(**{field: value})


def test_first_token_may_not_exceed_total() -> None:
    with pytest.raises(ValueError, match=r"Timeouts\.first_token.*Timeouts\.total"):
        Timeouts(first_token=10, stale=5, total=5)


def test_connect_may_not_exceed_total() -> None:
    with pytest.raises(ValueError, match=r"Timeouts\.connect"):
        Timeouts(connect=10, first_token=1, stale=1, total=5)


def test_valid_timeouts() -> None:
    timeouts = Timeouts(connect=0.5, first_token=1, stale=0.25, total=1)
    assert (timeouts.connect, timeouts.first_token, timeouts.stale, timeouts.total) == (
        0.5,
        1,
        0.25,
        1,
    )
    with pytest.raises(AttributeError):
        timeouts.stale = 2  # type: ignore[misc]
    with pytest.raises(TypeError):
        Timeouts(1.0)  # type: ignore[misc]  # keyword-only


@pytest.mark.parametrize("value", [0, -1])
def test_max_attempts_must_be_at_least_one(value: int) -> None:
    with pytest.raises(ValueError, match=r"RetryPolicy\.max_attempts"):
        RetryPolicy(max_attempts=value)


@pytest.mark.parametrize("value", [1.5, "2", None, True])
def test_max_attempts_must_be_an_int(value: Any) -> None:
    with pytest.raises(TypeError, match=r"RetryPolicy\.max_attempts"):
        RetryPolicy(max_attempts=value)


@pytest.mark.parametrize("field", ["initial_backoff", "max_backoff", "max_retry_after"])
@pytest.mark.parametrize("value", [-0.1, NAN], ids=["negative", "nan"])
def test_retry_durations_reject_bad_values(field: str, value: float) -> None:
    kwargs: dict[str, Any] = {field: value}
    if field == "initial_backoff" and not math.isnan(value):
        kwargs["max_backoff"] = 1.0
    with pytest.raises(ValueError, match=rf"RetryPolicy\.{field}\b"):
        RetryPolicy(**kwargs)


@pytest.mark.parametrize("field", ["initial_backoff", "max_backoff", "max_retry_after", "jitter"])
@pytest.mark.parametrize("value", ["1", None], ids=["str", "none"])
def test_retry_numbers_reject_non_numbers(field: str, value: Any) -> None:
    with pytest.raises(TypeError, match=rf"RetryPolicy\.{field}\b"):
        RetryPolicy(**{field: value})


@pytest.mark.parametrize("value", [-0.1, 1.5, NAN])
def test_jitter_must_be_a_fraction(value: float) -> None:
    with pytest.raises(ValueError, match=r"RetryPolicy\.jitter"):
        RetryPolicy(jitter=value)


def test_max_backoff_below_initial_backoff() -> None:
    with pytest.raises(ValueError, match=r"RetryPolicy\.max_backoff"):
        RetryPolicy(initial_backoff=2.0, max_backoff=1.0)


def test_on_partial_values() -> None:
    with pytest.raises(ValueError, match=r"RetryPolicy\.on_partial"):
        RetryPolicy(on_partial="ignore")  # type: ignore[arg-type]
    assert RetryPolicy(on_partial="fail").on_partial == "fail"


def test_zero_backoff_is_allowed() -> None:
    policy = RetryPolicy(max_attempts=1, initial_backoff=0, max_backoff=0, jitter=0)
    assert policy.max_attempts == 1


def _anthropic_route(model: str = "claude-x") -> AnthropicMessages:
    return AnthropicMessages(
        lambda: anthropic.Anthropic(base_url="http://127.0.0.1:9", api_key="test"), model=model
    )


def test_engine_needs_at_least_one_route() -> None:
    with pytest.raises(ValueError, match="routes"):
        StreamEngine(routes=[])


@pytest.mark.parametrize("routes", [None, "claude", [object()]], ids=["none", "str", "object"])
def test_engine_rejects_what_is_not_a_route_list(routes: Any) -> None:
    with pytest.raises(TypeError, match="routes"):
        StreamEngine(routes=routes)


def test_engine_rejects_a_single_route_not_in_a_list() -> None:
    with pytest.raises(TypeError, match="routes"):
        StreamEngine(routes=_anthropic_route())  # type: ignore[arg-type]


def test_engine_rejects_wrong_config_types() -> None:
    with pytest.raises(TypeError, match="timeouts"):
        StreamEngine(routes=[_anthropic_route()], timeouts={"stale": 1})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="retry"):
        StreamEngine(routes=[_anthropic_route()], retry=3)  # type: ignore[arg-type]


def test_route_arguments_are_checked() -> None:
    with pytest.raises(TypeError, match="client_factory"):
        AnthropicMessages(anthropic.Anthropic(api_key="test"), model="claude-x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="model"):
        OpenAIChatCompletions(lambda: None, model="")


def test_stream_arguments_are_checked() -> None:
    engine = StreamEngine(routes=[_anthropic_route()])
    with pytest.raises(ValueError, match="messages"):
        engine.stream(messages=[], max_tokens=16)
    with pytest.raises(ValueError, match="max_tokens"):
        engine.stream(messages=[{"role": "user", "content": "Hi"}], max_tokens=0)
    engine.close()
    with pytest.raises(RuntimeError, match="closed"):
        engine.stream(messages=[{"role": "user", "content": "Hi"}], max_tokens=16)


WRONG_FACTORIES = [
    ("anthropic", lambda server: openai.OpenAI(base_url=server.openai_base_url, api_key="test")),
    ("openai", lambda server: anthropic.Anthropic(base_url=server.url, api_key="test")),
    ("anthropic", lambda server: object()),
]


@pytest.mark.parametrize(
    ("name", "wrong"),
    WRONG_FACTORIES,
    ids=["anthropic-gets-openai", "openai-gets-anthropic", "anthropic-gets-object"],
)
def test_factory_returning_the_wrong_client_fails_the_attempt_clearly(
    server: Any, make_engine: Any, name: str, wrong: Any
) -> None:
    cls: Any = AnthropicMessages if name == "anthropic" else OpenAIChatCompletions
    expected = "anthropic.Anthropic" if name == "anthropic" else "openai.OpenAI"
    route = cls(lambda: wrong(server), model=f"{name}-wrong-factory")
    engine = make_engine([route], timeouts=Timeouts(first_token=5, stale=5, total=10))
    run = engine.stream(messages=[{"role": "user", "content": "Hi"}], max_tokens=16)
    with run, pytest.raises(StreamFailed) as caught:
        for _ in run:
            pytest.fail("no event can come from a client that could not be built")
    error = caught.value
    assert run.state == "failed"
    (attempt,) = run.attempts
    assert attempt.diagnostics.error_type == "TypeError"
    for text in (str(error), attempt.reason or "", error.fault.reason if error.fault else ""):
        assert "TypeError" in text, text
        assert expected in text, text
    assert not [r for r in server.requests if r.model == route.model]


def test_wrong_client_on_the_first_route_falls_back(server: Any, make_engine: Any) -> None:
    bad = AnthropicMessages(
        lambda: openai.OpenAI(base_url=server.openai_base_url, api_key="test"),
        model="claude-wrong-factory-fallback",
    )
    good = OpenAIChatCompletions(
        lambda: openai.OpenAI(base_url=server.openai_base_url, api_key="test"),
        model="gpt-after-wrong-factory",
    )
    engine = make_engine([bad, good], timeouts=Timeouts(first_token=5, stale=5, total=10))
    with engine.stream(messages=[{"role": "user", "content": "Hi"}], max_tokens=16) as run:
        for _ in run:
            pass
    assert run.state == "completed"
    assert [(a.route_index, a.outcome) for a in run.attempts] == [(0, "dropped"), (1, "completed")]
