"""Issue 11 (input side): one neutral history, translated per wire API; per-call options.

Every body checked here is the one the real SDK put on the wire to the loopback server
(captured by an httpx request hook on the SDK's own client), on both drivers where the
driver takes part: the adapters' ``request_kwargs`` run inside ``open``/``aopen``.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Sequence
from typing import Any

import anthropic
import openai
import pytest
from conftest import unique_model

from lifecycle import RetryPolicy, StreamEngine, Timeouts
from lifecycle.adapters import Route
from providers import AnthropicMessages, OpenAIChatCompletions, OpenAIResponses
from providers.loopback import Healthy, HttpError, LoopbackServer

ROUTE_CLASSES: dict[str, type[Route]] = {
    "anthropic": AnthropicMessages,
    "chat": OpenAIChatCompletions,
    "responses": OpenAIResponses,
}
KINDS = tuple(ROUTE_CLASSES)
ANTHROPIC_PATTERN = re.compile(r"^[a-zA-Z0-9_-]+$")
PNG = "data:image/png;base64,iVBORw0KGgo="
THINKING = {"type": "thinking", "thinking": "Paris first.", "signature": "c2lnLTE="}
REDACTED = {"type": "redacted_thinking", "data": "cmVkYWN0ZWQ="}
REASONING = {
    "type": "reasoning",
    "id": "rs_1",
    "summary": [{"type": "summary_text", "text": "Paris first."}],
    "encrypted_content": "ZW5j",
}
TOOLS = [
    {
        "name": "get_weather",
        "description": "Weather of a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
]


def _call(call_id: str, city: str) -> dict[str, Any]:
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": "get_weather", "arguments": json.dumps({"city": city})},
    }


def parallel_history(first: str = "call_a", second: str = "call_b") -> list[dict[str, Any]]:
    """Two parallel calls from a Chat turn, answered in the reverse order."""
    return [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [_call(first, "Paris"), _call(second, "Rome")],
            "provider_artifacts": [
                {"api_mode": "anthropic_messages", "item": THINKING},
                {"api_mode": "anthropic_messages", "item": REDACTED},
                {"api_mode": "responses", "item": REASONING},
            ],
        },
        {"role": "tool", "tool_call_id": second, "content": "Rome: 24C"},
        {
            "role": "tool",
            "tool_call_id": first,
            "content": [{"type": "text", "text": "Paris: 18C"}],
        },
    ]


class Captured:
    """The JSON bodies one route's SDK client sent, in order."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []

    def hook(self, request: Any) -> None:
        self.bodies.append(json.loads(request.content))

    async def ahook(self, request: Any) -> None:
        self.hook(request)


def make_route(
    kind: str, server: LoopbackServer, model: str, captured: Captured, *, is_async: bool
) -> Route:
    sdk: Any = anthropic if kind == "anthropic" else openai
    base = server.anthropic_base_url if kind == "anthropic" else server.openai_base_url
    name = "Anthropic" if kind == "anthropic" else "OpenAI"

    def factory() -> Any:
        if is_async:
            http = sdk.DefaultAsyncHttpxClient(event_hooks={"request": [captured.ahook]})
            return getattr(sdk, f"Async{name}")(base_url=base, api_key="test", http_client=http)
        http = sdk.DefaultHttpxClient(event_hooks={"request": [captured.hook]})
        return getattr(sdk, name)(base_url=base, api_key="test", http_client=http)

    return ROUTE_CLASSES[kind](factory, model=model)


def model_for(kind: str) -> str:
    return unique_model("anthropic" if kind == "anthropic" else "openai")


def send(
    server: LoopbackServer,
    driver: str,
    kinds: Sequence[str],
    *,
    failing: int = 0,
    recording: str | None = None,
    **request: Any,
) -> tuple[Any, list[list[dict[str, Any]]]]:
    """One run over ``kinds`` (its first ``failing`` routes answer 529, the others replay
    ``recording`` if given); the run and each route's bodies."""
    is_async = driver == "async"
    captured = [Captured() for _ in kinds]
    models = [model_for(kind) for kind in kinds]
    for model in models[:failing]:
        server.script(model, [HttpError(status=529)])
    if recording is not None:
        for model in models[failing:]:
            server.script(model, [Healthy(recording=recording)])
    routes = [
        make_route(kind, server, model, capture, is_async=is_async)
        for kind, model, capture in zip(kinds, models, captured, strict=True)
    ]
    engine = StreamEngine(
        routes=routes,
        timeouts=Timeouts(first_token=10, stale=10, total=30),
        retry=RetryPolicy(max_attempts=1, initial_backoff=0.0),
    )
    request.setdefault("max_tokens", 64)
    if is_async:

        async def go() -> Any:
            async with engine, engine.astream(**request) as run:
                async for _ in run:
                    pass
            return run

        run = asyncio.run(go())
    else:
        with engine, engine.stream(**request) as run:
            for _ in run:
                pass
    assert run.state == "completed", run.attempts
    return run, [capture.bodies for capture in captured]


def only_body(bodies: list[dict[str, Any]]) -> dict[str, Any]:
    (body,) = bodies
    return body


# -- translation per route ---------------------------------------------------------------


def test_parallel_calls_reach_anthropic_as_one_turn_each_in_call_order(
    server: LoopbackServer, driver: str
) -> None:
    _, (bodies,) = send(server, driver, ["anthropic"], messages=parallel_history(), tools=TOOLS)
    user, assistant, results = only_body(bodies)["messages"]
    assert user == {
        "role": "user",
        "content": [{"type": "text", "text": "Weather in Paris and Rome?"}],
    }
    assert assistant["role"] == "assistant"
    # The signed thinking and the redacted block first, byte-identical, then the calls.
    assert assistant["content"] == [
        THINKING,
        REDACTED,
        {"type": "tool_use", "id": "call_a", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "call_b", "name": "get_weather", "input": {"city": "Rome"}},
    ]
    assert results == {
        "role": "user",
        "content": [
            {
                "type": "tool_result",
                "tool_use_id": "call_a",
                "content": [{"type": "text", "text": "Paris: 18C"}],
            },
            {"type": "tool_result", "tool_use_id": "call_b", "content": "Rome: 24C"},
        ],
    }
    assert only_body(bodies)["tools"] == [
        {
            "name": "get_weather",
            "description": "Weather of a city",
            "input_schema": TOOLS[0]["input_schema"],
        }
    ]


def test_parallel_calls_streamed_by_chat_go_to_anthropic_paired(
    server: LoopbackServer, driver: str
) -> None:
    question = {"role": "user", "content": "Weather in Paris and Rome?"}
    turn, _ = send(
        server, driver, ["chat"], recording="tool_calls_parallel", messages=[question], tools=TOOLS
    )
    calls = turn.message.tool_calls
    assert len(calls) >= 2
    history = [
        question,
        {
            "role": "assistant",
            "content": turn.message.text or None,
            "tool_calls": [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                }
                for c in calls
            ],
        },
        *({"role": "tool", "tool_call_id": c.id, "content": f"result {c.id}"} for c in calls),
    ]
    _, (bodies,) = send(server, driver, ["anthropic"], messages=history, tools=TOOLS)
    _, assistant, results = only_body(bodies)["messages"]
    uses = [block for block in assistant["content"] if block["type"] == "tool_use"]
    assert [(u["name"], u["input"]) for u in uses] == [
        (c.name, json.loads(c.arguments)) for c in calls
    ]
    assert [r["type"] for r in results["content"]] == ["tool_result"] * len(calls)
    assert [r["tool_use_id"] for r in results["content"]] == [u["id"] for u in uses]
    assert [r["content"] for r in results["content"]] == [f"result {c.id}" for c in calls]


def test_chat_receives_the_history_as_is_without_artifacts(
    server: LoopbackServer, driver: str
) -> None:
    history = parallel_history()
    _, (bodies,) = send(server, driver, ["chat"], messages=history, tools=TOOLS, system="Be brief.")
    sent = only_body(bodies)["messages"]
    expected = [{"role": "system", "content": "Be brief."}, *history]
    expected[2] = {k: v for k, v in history[1].items() if k != "provider_artifacts"}
    assert sent == expected
    assert "signature" not in json.dumps(sent) and "encrypted_content" not in json.dumps(sent)


def test_responses_receives_items_reasoning_before_its_calls(
    server: LoopbackServer, driver: str
) -> None:
    _, (bodies,) = send(
        server, driver, ["responses"], messages=parallel_history(), tools=TOOLS, system="Be brief."
    )
    body = only_body(bodies)
    assert body["instructions"] == "Be brief."
    assert body["input"] == [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        REASONING,
        {
            "type": "function_call",
            "call_id": "call_a",
            "name": "get_weather",
            "arguments": '{"city": "Paris"}',
        },
        {
            "type": "function_call",
            "call_id": "call_b",
            "name": "get_weather",
            "arguments": '{"city": "Rome"}',
        },
        {"type": "function_call_output", "call_id": "call_b", "output": "Rome: 24C"},
        {"type": "function_call_output", "call_id": "call_a", "output": "Paris: 18C"},
    ]
    assert "signature" not in json.dumps(body) and "redacted" not in json.dumps(body)
    # Responses reads an omitted strict as strict mode: always explicit.
    assert body["tools"] == [
        {
            "type": "function",
            "name": "get_weather",
            "description": "Weather of a city",
            "parameters": TOOLS[0]["input_schema"],
            "strict": False,
        }
    ]


def test_images_system_parts_and_cache_control_per_route(server: LoopbackServer) -> None:
    cache = {"type": "ephemeral"}
    history = [
        {"role": "system", "content": [{"type": "text", "text": "Rules.", "cache_control": cache}]},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Compare", "cache_control": cache},
                {"type": "image_url", "image_url": {"url": PNG}},
                {
                    "type": "image_url",
                    "image_url": {"url": "https://x.test/a.png", "detail": "low"},
                },
            ],
        },
    ]
    tools = [{**TOOLS[0], "cache_control": cache, "strict": True}]
    _, bodies = send(
        server, "sync", ["anthropic"], messages=history, system="Be brief.", tools=tools
    )
    body = only_body(bodies[0])
    assert body["system"] == [
        {"type": "text", "text": "Be brief."},
        {"type": "text", "text": "Rules.", "cache_control": cache},
    ]
    assert body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Compare", "cache_control": cache},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
                },
                {"type": "image", "source": {"type": "url", "url": "https://x.test/a.png"}},
            ],
        }
    ]
    assert body["tools"][0]["cache_control"] == cache

    _, bodies = send(
        server, "sync", ["responses"], messages=history, system="Be brief.", tools=tools
    )
    body = only_body(bodies[0])
    assert body["instructions"] == "Be brief.\n\nRules."
    assert body["input"] == [
        {
            "role": "user",
            "content": [
                {"type": "input_text", "text": "Compare"},
                {"type": "input_image", "image_url": PNG, "detail": "auto"},
                {"type": "input_image", "image_url": "https://x.test/a.png", "detail": "low"},
            ],
        }
    ]
    assert body["tools"][0]["strict"] is True and "cache_control" not in body["tools"][0]

    _, bodies = send(server, "sync", ["chat"], messages=history, tools=tools)
    body = only_body(bodies[0])
    assert "cache_control" not in json.dumps(body)
    assert body["messages"][1]["content"][1] == {"type": "image_url", "image_url": {"url": PNG}}
    assert body["tools"][0]["function"]["strict"] is True


def test_message_objects_mean_their_to_dict(server: LoopbackServer) -> None:
    class Answer:
        def to_dict(self) -> dict[str, Any]:
            return parallel_history()[1]

    history: list[Any] = parallel_history()
    history[1] = Answer()
    _, by_object = send(server, "sync", ["anthropic"], messages=history, tools=TOOLS)
    _, by_dict = send(server, "sync", ["anthropic"], messages=parallel_history(), tools=TOOLS)
    assert only_body(by_object[0])["messages"] == only_body(by_dict[0])["messages"]


# -- tool ids -----------------------------------------------------------------------------


def test_foreign_id_reaches_anthropic_in_its_pattern_paired(
    server: LoopbackServer, driver: str
) -> None:
    history = parallel_history("functions.get_weather:0", "functions.get_weather:1")
    _, (bodies,) = send(server, driver, ["anthropic"], messages=history, tools=TOOLS)
    _, assistant, results = only_body(bodies)["messages"]
    use_ids = [block["id"] for block in assistant["content"] if block["type"] == "tool_use"]
    result_ids = [block["tool_use_id"] for block in results["content"]]
    assert use_ids == result_ids and len(set(use_ids)) == 2
    assert all(ANTHROPIC_PATTERN.match(i) for i in use_ids)


@pytest.mark.parametrize("kind", ["chat", "responses"])
def test_long_id_reaches_openai_within_40_characters_paired(
    server: LoopbackServer, driver: str, kind: str
) -> None:
    long_a, long_b = "a" * 63 + "1", "a" * 63 + "2"
    _, (bodies,) = send(
        server, driver, [kind], messages=parallel_history(long_a, long_b), tools=TOOLS
    )
    body = only_body(bodies)
    if kind == "chat":
        calls = [c["id"] for c in body["messages"][1]["tool_calls"]]
        results = [m["tool_call_id"] for m in body["messages"][2:]]
    else:
        calls = [i["call_id"] for i in body["input"] if i.get("type") == "function_call"]
        results = [i["call_id"] for i in body["input"] if i.get("type") == "function_call_output"]
    assert all(len(i) <= 40 for i in calls) and len(set(calls)) == 2
    assert results == calls[::-1]  # answered in reverse order, each with its call's id


def test_tool_ids_are_deterministic_and_never_collide() -> None:
    from providers._history import ANTHROPIC_ID, OPENAI_ID, ToolIds, normalize

    ids = ["a:b", "a_b", "a.b", "a b", "x" * 80, "x" * 79 + "y", "ok-1"]
    history = normalize(
        [
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": None, "tool_calls": [_call(i, "P") for i in ids]},
            *({"role": "tool", "tool_call_id": i, "content": "r"} for i in ids),
        ]
    )
    for rules in (ANTHROPIC_ID, OPENAI_ID):
        first, again = ToolIds(history, rules), ToolIds(history, rules)
        mapped = [first[i] for i in ids]
        assert mapped == [again[i] for i in ids]
        assert len(set(mapped)) == len(ids)
        assert all(len(m) <= rules.max_length and rules.pattern.match(m) for m in mapped)
        assert first["ok-1"] == "ok-1"  # an id the API accepts is left alone
    assert ToolIds(history, OPENAI_ID)["a:b"] == "a:b"
    assert ToolIds(history, ANTHROPIC_ID)["a_b"] == "a_b"


def test_a_mapped_id_never_takes_one_kept_as_is() -> None:
    from providers._history import ANTHROPIC_ID, ToolIds, normalize

    # The mapped form of "a:b" computed first, then given as a real id of another call.
    taken = ToolIds(normalize(parallel_history("a:b", "call_b")), ANTHROPIC_ID)["a:b"]
    history = normalize(parallel_history("a:b", taken))
    ids = ToolIds(history, ANTHROPIC_ID)
    assert ids[taken] == taken and ids["a:b"] != taken


# -- a history that cannot be right fails before any request -----------------------------

BAD_HISTORIES = {
    "tool answering no call": (
        [*parallel_history(), {"role": "tool", "tool_call_id": "call_z", "content": "?"}],
        r"messages\[4\]: tool message answers no call",
    ),
    "call unanswered before the next user turn": (
        [*parallel_history()[:3], {"role": "user", "content": "and?"}],
        r"messages\[1\]: tool call 'call_a' is left unanswered before messages\[3\]",
    ),
    "call unanswered at the end": (
        parallel_history()[:2],
        r"messages\[1\]: tool call 'call_a' is left unanswered at the end",
    ),
    "unknown role": (
        [{"role": "function", "content": "x"}],
        r"messages\[0\]: unknown role 'function'",
    ),
    "unknown part type": (
        [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}],
        r"messages\[0\]\.content\[0\]: unknown part type 'input_audio'",
    ),
    "malformed arguments": (
        [
            {"role": "user", "content": "go"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{"}}
                ],
            },
            {"role": "tool", "tool_call_id": "c", "content": "r"},
        ],
        r"messages\[1\]\.tool_calls\[0\]: function\.arguments is not valid JSON",
    ),
}


@pytest.mark.parametrize("case", list(BAD_HISTORIES))
def test_bad_history_fails_at_stream_with_zero_requests(
    server: LoopbackServer, driver: str, case: str
) -> None:
    history, message = BAD_HISTORIES[case]
    models = [model_for(kind) for kind in KINDS]
    routes = [
        make_route(kind, server, model, Captured(), is_async=driver == "async")
        for kind, model in zip(KINDS, models, strict=True)
    ]
    with StreamEngine(routes=routes) as engine, pytest.raises(ValueError, match=message):
        start = engine.astream if driver == "async" else engine.stream
        start(messages=history, max_tokens=64)
    assert not [r for r in server.requests if r.model in models]


# -- options ------------------------------------------------------------------------------


def _create_parameters(kind: str) -> frozenset[str]:
    route_class: Any = ROUTE_CLASSES[kind]
    parameters: frozenset[str] = route_class.create_parameters()
    return parameters


NEUTRAL = {
    "temperature": 0.5,
    "top_p": 0.9,
    "stop": "END",
    "tool_choice": {"name": "get_weather"},
    "parallel_tool_calls": False,
}
EXPECTED_WIRE = {
    "anthropic": {
        "temperature": ("temperature", 0.5),
        "top_p": ("top_p", 0.9),
        "stop": ("stop_sequences", ["END"]),
        "tool_choice": (
            "tool_choice",
            {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        ),
    },
    "chat": {
        "temperature": ("temperature", 0.5),
        "top_p": ("top_p", 0.9),
        "stop": ("stop", "END"),
        "tool_choice": ("tool_choice", {"type": "function", "function": {"name": "get_weather"}}),
        "parallel_tool_calls": ("parallel_tool_calls", False),
    },
    "responses": {
        "temperature": ("temperature", 0.5),
        "top_p": ("top_p", 0.9),
        "stop": ("stop", "END"),
        "tool_choice": ("tool_choice", {"type": "function", "name": "get_weather"}),
        "parallel_tool_calls": ("parallel_tool_calls", False),
    },
}


@pytest.mark.parametrize("kind", KINDS)
def test_neutral_options_translated_or_omitted_per_installed_sdk(
    server: LoopbackServer, driver: str, kind: str
) -> None:
    accepted = _create_parameters(kind)
    run, (bodies,) = send(
        server, driver, [kind], messages=[{"role": "user", "content": "Hi"}], tools=TOOLS, **NEUTRAL
    )
    body = only_body(bodies)
    sent, omitted = {}, []
    for neutral, (wire, value) in EXPECTED_WIRE[kind].items():
        if wire in accepted:
            assert body[wire] == value, neutral
            sent[wire] = value
        else:
            assert wire not in body
            omitted.append(neutral)
    if kind == "anthropic" and "tool_choice" not in accepted:
        omitted.append("parallel_tool_calls")  # Anthropic carries it inside tool_choice
    assert sent, "every route takes some of them"
    assert set(run.attempts[0].diagnostics.omitted_options) == set(omitted)


def test_tool_choice_without_tools_is_omitted_and_said(server: LoopbackServer) -> None:
    for kind in KINDS:
        run, (bodies,) = send(
            server, "sync", [kind], messages=[{"role": "user", "content": "Hi"}], tool_choice="auto"
        )
        assert "tool_choice" not in only_body(bodies)
        assert run.attempts[0].diagnostics.omitted_options == ("tool_choice",)


def test_provider_options_reach_only_their_api_mode_across_a_fallback(
    server: LoopbackServer, driver: str
) -> None:
    kinds = ["anthropic", "chat", "responses"]
    provider_options = {
        "anthropic_messages": {"metadata": {"user_id": "u-anthropic"}},
        "chat_completions": {"seed": 7},
        "responses": {"metadata": {"who": "u-responses"}},
    }
    run, bodies = send(
        server,
        driver,
        kinds,
        failing=2,
        messages=parallel_history(),
        tools=TOOLS,
        provider_options=provider_options,
    )
    first, second, third = (only_body(b) for b in bodies)
    assert first["metadata"] == {"user_id": "u-anthropic"} and "seed" not in first
    assert second["seed"] == 7 and "metadata" not in second
    assert third["metadata"] == {"who": "u-responses"} and "seed" not in third
    assert [a.api_mode for a in run.attempts] == [
        "anthropic_messages",
        "chat_completions",
        "responses",
    ]
    # Artifacts went only to their issuer, on the fallback bodies too.
    assert "signature" not in json.dumps(second) + json.dumps(third)
    assert "encrypted_content" not in json.dumps(first) + json.dumps(second)


def test_provider_native_tools_join_the_function_tools(server: LoopbackServer) -> None:
    native = {"type": "web_search_20250305", "name": "web_search", "max_uses": 1}
    _, (bodies,) = send(
        server,
        "sync",
        ["anthropic"],
        messages=[{"role": "user", "content": "Hi"}],
        tools=TOOLS,
        provider_options={"anthropic_messages": {"tools": [native]}},
    )
    assert [tool["name"] for tool in only_body(bodies)["tools"]] == ["get_weather", "web_search"]


def _refusing_route(keyword: str) -> str | None:
    for kind in KINDS:
        if keyword not in _create_parameters(kind):
            return kind
    return None


@pytest.mark.parametrize("keyword", ["thinking", "reasoning", "frequency_penalty"])
def test_a_keyword_some_route_refuses_fails_at_stream_naming_it(
    server: LoopbackServer, driver: str, keyword: str
) -> None:
    refusing = _refusing_route(keyword)
    assert refusing is not None  # each of these belongs to one wire API
    models = [model_for(kind) for kind in KINDS]
    routes = [
        make_route(kind, server, model, Captured(), is_async=driver == "async")
        for kind, model in zip(KINDS, models, strict=True)
    ]
    with StreamEngine(routes=routes) as engine:
        start = engine.astream if driver == "async" else engine.stream
        with pytest.raises(ValueError, match=f"keyword '{keyword}'") as raised:
            start(messages=[{"role": "user", "content": "Hi"}], max_tokens=64, **{keyword: {}})
    assert routes[KINDS.index(refusing)].name in str(raised.value)
    assert "provider_options" in str(raised.value)
    assert not [r for r in server.requests if r.model in models]


def test_a_provider_option_its_route_refuses_fails_at_stream(server: LoopbackServer) -> None:
    routes = [make_route("chat", server, model_for("chat"), Captured(), is_async=False)]
    with (
        StreamEngine(routes=routes) as engine,
        pytest.raises(
            ValueError, match=r"provider_options\['chat_completions'\] keyword 'thinking'"
        ),
    ):
        engine.stream(
            messages=[{"role": "user", "content": "Hi"}],
            max_tokens=64,
            provider_options={"chat_completions": {"thinking": {}}},
        )


def test_a_keyword_every_route_accepts_passes_through(server: LoopbackServer) -> None:
    headers = {"x-trace": "t-1"}
    _, bodies = send(
        server,
        "sync",
        KINDS,
        failing=2,
        messages=[{"role": "user", "content": "Hi"}],
        # `metadata.user_id` is a parameter each of the three real APIs accepts.
        extra_body={"metadata": {"user_id": "t-1"}},
        extra_headers=headers,
    )
    assert [only_body(b)["metadata"] for b in bodies] == [{"user_id": "t-1"}] * 3


def test_a_bad_tool_choice_fails_at_stream(server: LoopbackServer) -> None:
    routes = [make_route("anthropic", server, model_for("anthropic"), Captured(), is_async=False)]
    with StreamEngine(routes=routes) as engine, pytest.raises(ValueError, match="tool_choice"):
        engine.stream(
            messages=[{"role": "user", "content": "Hi"}], max_tokens=64, tool_choice="any"
        )
