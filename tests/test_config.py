"""Configuration is checked when it is built, and errors name the field at fault."""

from __future__ import annotations

import dataclasses
import math
import random
from typing import Any

import anthropic
import openai
import pytest

from lifecycle import BreakerPolicy, RetryPolicy, StreamEngine, StreamFailed, Timeouts
from lifecycle._core.policy import backoff_delay
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


@pytest.mark.parametrize(
    "kwargs",
    [
        {"connect": 1, "first_token": 5, "stale": 5, "total": 5},
        {"connect": 5, "first_token": 5, "stale": 9, "total": 5},
        {"connect": 1e-9, "first_token": 1e-9, "stale": 1e-9, "total": 1e-9},
        {"connect": 1, "first_token": 2, "stale": 3, "total": 4},
    ],
    ids=["first_token-equals-total", "connect-equals-total", "tiny", "ints"],
)
def test_timeouts_boundaries_are_allowed(kwargs: dict[str, float]) -> None:
    """The limits are inclusive (a clock may equal total) and only non-positive values
    are refused; stale is not bounded by total (a run's total ends it anyway)."""
    Timeouts(**kwargs)


def test_first_token_over_total_hints_at_the_default_only_when_it_is_the_default() -> None:
    with pytest.raises(ValueError, match=r"\(60 is the default: set first_token too\)"):
        Timeouts(total=30)
    with pytest.raises(ValueError) as caught:
        Timeouts(first_token=40, total=30)
    assert str(caught.value) == "Timeouts.first_token (40) must not exceed Timeouts.total (30)"


@pytest.mark.parametrize(
    "config",
    [Timeouts(), RetryPolicy(), BreakerPolicy()],
    ids=["timeouts", "retry", "breaker"],
)
def test_configuration_is_frozen_keyword_only_and_hashable(config: Any) -> None:
    first = dataclasses.fields(config)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(config, first, getattr(config, first))
    with pytest.raises((AttributeError, TypeError)):
        config.surprise = 1  # slots: no attribute the class does not declare
    with pytest.raises(TypeError):
        type(config)(getattr(config, first))  # keyword-only
    same = dataclasses.replace(config)
    assert same is not config and same == config and hash(same) == hash(config)
    changed = dataclasses.replace(config, **{first: getattr(config, first) + 1})
    assert changed != config


def test_the_defaults_are_the_documented_ones() -> None:
    """README and the docstrings quote these figures: changing one is a release note."""
    assert dataclasses.astuple(Timeouts()) == (10.0, 60.0, 180.0, 900.0)
    assert dataclasses.astuple(RetryPolicy()) == (3, 0.5, 30.0, 1.0, 60.0, "restart", 1)
    assert dataclasses.astuple(BreakerPolicy()) == (5, 30.0, 2.0, 600.0, 900.0, False)


def test_backoff_doubles_from_initial_up_to_max_backoff() -> None:
    policy = RetryPolicy(initial_backoff=0.5, max_backoff=3.0, jitter=0.0)
    rng = random.Random(0)
    assert [backoff_delay(policy, n, rng) for n in range(1, 7)] == [0.5, 1, 2, 3, 3, 3]
    zero = RetryPolicy(initial_backoff=0, max_backoff=0, jitter=0)
    assert [backoff_delay(zero, n, rng) for n in range(1, 4)] == [0, 0, 0]


def test_jitter_takes_up_to_its_fraction_off_the_backoff() -> None:
    rng = random.Random(7)
    half = RetryPolicy(initial_backoff=2.0, max_backoff=2.0, jitter=0.5)
    delays = [backoff_delay(half, 1, rng) for _ in range(200)]
    assert all(1.0 <= d <= 2.0 for d in delays), (min(delays), max(delays))
    # Spread over the whole range, not stuck at one end.
    assert min(delays) < 1.1 and max(delays) > 1.9
    full = RetryPolicy(initial_backoff=2.0, max_backoff=2.0, jitter=1.0)
    delays = [backoff_delay(full, 1, rng) for _ in range(200)]
    assert all(0.0 <= d <= 2.0 for d in delays) and min(delays) < 0.2


def test_the_sdk_gets_connect_and_total_as_its_timeouts(
    server: Any, make_engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watchdog enforces first_token and stale; what the SDK request is handed is
    connect for connect, write and pool, and the run's total as its read backstop (each
    figure distinct, so a field handed in the wrong place shows)."""
    seen: list[Any] = []
    create = anthropic.resources.messages.Messages.create

    def observed_create(self: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs.get("timeout"))
        return create(self, *args, **kwargs)

    monkeypatch.setattr(anthropic.resources.messages.Messages, "create", observed_create)
    route = AnthropicMessages(
        lambda: anthropic.Anthropic(base_url=server.url, api_key="test"), model="claude-timeouts"
    )
    engine = make_engine([route], timeouts=Timeouts(connect=1.5, first_token=2, stale=3, total=7))
    with engine.stream(messages=[{"role": "user", "content": "Hi"}], max_tokens=16) as run:
        for _ in run:
            pass
    assert run.state == "completed"
    (timeout,) = seen
    assert (timeout.connect, timeout.read, timeout.write, timeout.pool) == (1.5, 7, 1.5, 1.5)


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
    for value in ("restart", "fail", "continue"):
        RetryPolicy(on_partial=value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 1, "initial_backoff": 0, "max_backoff": 0, "jitter": 0},
        {"initial_backoff": 2.0, "max_backoff": 2.0, "jitter": 1.0, "max_retry_after": 0},
        {"stale_before_fallback": 1},
    ],
    ids=["no-retry-no-backoff", "equal-backoffs-full-jitter", "stale-fallback-at-once"],
)
def test_retry_boundaries_are_allowed(kwargs: dict[str, Any]) -> None:
    RetryPolicy(**kwargs)


@pytest.mark.parametrize("value", [0, True, 1.0], ids=["zero", "bool", "float"])
def test_stale_before_fallback_is_a_positive_int(value: Any) -> None:
    with pytest.raises((TypeError, ValueError), match=r"RetryPolicy\.stale_before_fallback"):
        RetryPolicy(stale_before_fallback=value)


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
