"""Issue 11, "Done when", end to end: the agent loop through every route and fallback.

An agent streams a turn, appends ``run.message.to_dict()`` and its tool results to the
history, and streams again, possibly on another route: the real SDKs over HTTP to the
loopback server, which validates every request body as the real API does (a body the
API would refuse is a 400, which fails the run). Each scenario runs on both drivers;
every body of a test's models is checked to have been accepted (``RequestRecord.problems``).
``tests/test_history.py`` checks the translation of hand-written histories; here the
history is the one the loop itself builds.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import EngineFactory, make_route, unique_model
from test_provider_artifacts import anthropic_artifacts_of

from lifecycle import RetryPolicy, StreamEngine, Timeouts
from lifecycle.adapters import Route
from providers import AnthropicMessages, OpenAIChatCompletions, OpenAIResponses
from providers.loopback import (
    Healthy,
    HttpError,
    LoopbackServer,
    RawResponse,
    RequestRecord,
    ServerFault,
    StallAfterHeaders,
)

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("anthropic", "chat", "responses")
ROUTE_CLASS: dict[str, type[Route]] = {
    "anthropic": AnthropicMessages,
    "chat": OpenAIChatCompletions,
    "responses": OpenAIResponses,
}
SDK_OF = {"anthropic": "anthropic", "chat": "openai", "responses": "openai"}
API_MODE = {"anthropic": "anthropic_messages", "chat": "chat_completions", "responses": "responses"}
RECORDED_IN = {"anthropic": "anthropic", "chat": "openai", "responses": "openai_responses"}
TOOL_TURN = {"anthropic": "tool_use", "chat": "tool_calls_a", "responses": "tool_call"}
"""A recorded turn of each wire API that ends in one tool call."""
OVERLOADED = {"anthropic": 529, "chat": 503, "responses": 503}
ANTHROPIC_ID = re.compile(r"^[a-zA-Z0-9_-]+$")
TIMEOUTS = Timeouts(connect=5, first_token=10, stale=10, total=60)
STALL_TIMEOUTS = Timeouts(connect=5, first_token=1.0, stale=1.0, total=60)
"""For a stalling primary: the clocks still well above a healthy replay's first event
on a loaded machine (the healthy turns of those tests run under them too)."""
QUESTION = {"role": "user", "content": "Weather in Paris?"}
TOOLS = [
    {
        "name": "get_weather",
        "description": "Weather of a city",
        "input_schema": {
            "type": "object",
            "properties": {"location": {"type": "string"}, "city": {"type": "string"}},
        },
    }
]
FALLBACKS = [
    ("anthropic", "chat"),
    ("chat", "anthropic"),
    ("anthropic", "responses"),
    ("responses", "anthropic"),
    ("chat", "responses"),
]


def run_tool(name: str, arguments: str) -> str:
    return f"{name}({json.loads(arguments)}): 18C"


class Conversation:
    """An engine over ``kinds`` (in fallback order) against the loopback server, and the
    turns of one agent loop on it, on the test's driver."""

    def __init__(
        self,
        server: LoopbackServer,
        make_engine: EngineFactory,
        driver: str,
        kinds: Sequence[str],
        route_options: dict[str, dict[str, Any]] | None = None,
        timeouts: Timeouts = TIMEOUTS,
    ) -> None:
        self.server = server
        self.driver = driver
        self.kinds = list(kinds)
        self.models = [unique_model(SDK_OF[kind]) for kind in kinds]
        self.make_engine = make_engine
        routes = [
            make_route(
                SDK_OF[kind],
                server,
                model,
                is_async=driver == "async",
                route_class=ROUTE_CLASS[kind],
                **(route_options or {}).get(kind, {}),
            )
            for kind, model in zip(kinds, self.models, strict=True)
        ]
        self.engine: StreamEngine = make_engine(
            routes, timeouts=timeouts, retry=RetryPolicy(max_attempts=1, initial_backoff=0.0)
        )

    def script(self, kind: str, faults: Sequence[ServerFault]) -> None:
        self.server.script(self.models[self.kinds.index(kind)], faults)

    def start(self, history: list[Any], **request: Any) -> Any:
        """``stream()`` / ``astream()`` itself, not iterated (what it raises, it raises here)."""
        request.setdefault("max_tokens", 1024)
        if self.driver == "async":
            return self.engine.astream(messages=history, **request)
        return self.engine.stream(messages=history, **request)

    def turn(self, history: list[Any], **request: Any) -> Any:
        run = self.start(history, **request)
        if self.driver == "async":

            async def consume() -> None:
                async with run:
                    async for _ in run:
                        pass

            self.make_engine.loop.run_until_complete(consume())
        else:
            with run:
                for _ in run:
                    pass
        assert run.state == "completed", run.attempts
        return run

    def records(self, kind: str | None = None) -> list[RequestRecord]:
        models = self.models if kind is None else [self.models[self.kinds.index(kind)]]
        return [r for r in self.server.requests if r.model in models]

    def bodies(self, kind: str) -> list[dict[str, Any]]:
        bodies = [r.body for r in self.records(kind)]
        assert all(body is not None for body in bodies)
        return [body for body in bodies if body is not None]

    def assert_every_body_accepted(self) -> None:
        records = self.records()
        assert records
        assert [(r.index, r.problems) for r in records if r.problems] == []
        assert 400 not in [r.status for r in records]


def results_for(message: Any) -> list[dict[str, Any]]:
    return [
        {"role": "tool", "tool_call_id": call.id, "content": run_tool(call.name, call.arguments)}
        for call in message.tool_calls
    ]


def wire_calls(kind: str, body: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    """The body's calls ``(id, name, arguments as an object)`` in order, and its results
    by the id they answer, as this wire API spells them."""
    calls: list[Any] = []
    results: dict[str, Any] = {}
    if kind == "anthropic":
        for turn in body["messages"]:
            for block in turn["content"] if isinstance(turn["content"], list) else ():
                if block["type"] == "tool_use":
                    calls.append((block["id"], block["name"], block["input"]))
                elif block["type"] == "tool_result":
                    results[block["tool_use_id"]] = block["content"]
    elif kind == "chat":
        for message in body["messages"]:
            for call in message.get("tool_calls") or ():
                function = call["function"]
                calls.append((call["id"], function["name"], json.loads(function["arguments"])))
            if message["role"] == "tool":
                results[message["tool_call_id"]] = message["content"]
    else:
        for item in body["input"]:
            if item.get("type") == "function_call":
                calls.append((item["call_id"], item["name"], json.loads(item["arguments"])))
            elif item.get("type") == "function_call_output":
                results[item["call_id"]] = item["output"]
    return calls, results


def assert_paired(kind: str, body: dict[str, Any], history: Sequence[Any]) -> list[str]:
    """Every call of the history is in the body, in order, with its own result; the ids
    follow this wire API's rules. Returns the ids as sent."""
    expected = [
        (call["function"]["name"], json.loads(call["function"]["arguments"]), message_result)
        for message in history
        if message["role"] == "assistant"
        for call in message.get("tool_calls") or ()
        for message_result in [
            next(m["content"] for m in history if m.get("tool_call_id") == call["id"])
        ]
    ]
    calls, results = wire_calls(kind, body)
    assert [(name, arguments, results.get(i)) for i, name, arguments in calls] == expected
    ids = [i for i, _, _ in calls]
    assert len(set(ids)) == len(ids) and set(results) == set(ids)
    for call_id in ids:
        if kind == "anthropic":
            assert ANTHROPIC_ID.match(call_id) and len(call_id) <= 64, call_id
        else:
            assert len(call_id) <= 40, call_id
    return ids


# -- the loop on each route --------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_the_agent_loop_completes_on_each_route(
    server: LoopbackServer, make_engine: EngineFactory, driver: str, kind: str
) -> None:
    talk = Conversation(server, make_engine, driver, [kind])
    talk.script(kind, [Healthy(recording=TOOL_TURN[kind]), Healthy()])
    history: list[Any] = [QUESTION]
    first = talk.turn(history, tools=TOOLS)
    assert first.message.stop_reason == "tool_calls" and len(first.message.tool_calls) == 1
    history += [first.message.to_dict(), *results_for(first.message)]
    second = talk.turn(history, tools=TOOLS)
    assert second.message.stop_reason == "stop" and second.message.text
    _, body = talk.bodies(kind)
    assert_paired(kind, body, history)
    talk.assert_every_body_accepted()


# -- fallback mid-conversation -------------------------------------------------------------


def primary_fault(kind: str, how: str) -> ServerFault:
    return HttpError(status=OVERLOADED[kind]) if how == "overloaded" else StallAfterHeaders()


@pytest.mark.parametrize("how", ["overloaded", "stall"])
@pytest.mark.parametrize(("primary", "fallback"), FALLBACKS, ids=[f"{a}-{b}" for a, b in FALLBACKS])
def test_a_fallback_mid_conversation_completes_with_call_and_result_paired(
    server: LoopbackServer,
    make_engine: EngineFactory,
    driver: str,
    primary: str,
    fallback: str,
    how: str,
) -> None:
    timeouts = STALL_TIMEOUTS if how == "stall" else TIMEOUTS
    talk = Conversation(server, make_engine, driver, [primary, fallback], timeouts=timeouts)
    talk.script(primary, [Healthy(recording=TOOL_TURN[primary]), primary_fault(primary, how)])
    history: list[Any] = [QUESTION]
    first = talk.turn(history, tools=TOOLS)
    assert [a.api_mode for a in first.attempts] == [API_MODE[primary]]
    history += [first.message.to_dict(), *results_for(first.message)]
    second = talk.turn(history, tools=TOOLS)
    assert [a.api_mode for a in second.attempts] == [API_MODE[primary], API_MODE[fallback]]
    assert second.attempts[0].outcome == ("stale" if how == "stall" else "error")
    assert second.message.stop_reason == "stop" and second.message.text
    (body,) = talk.bodies(fallback)
    assert_paired(fallback, body, history)
    talk.assert_every_body_accepted()


# -- extended thinking + tool use ----------------------------------------------------------

THINKING = {"type": "enabled", "budget_tokens": 1024}


def thinking_options() -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(per-call keywords, route options) that enable thinking on the Anthropic route."""
    if "thinking" in AnthropicMessages.create_parameters():
        return {"provider_options": {"anthropic_messages": {"thinking": THINKING}}}, {}
    # anthropic 0.40.0's messages.create() has no `thinking` parameter: the API's field
    # goes in the body on the Anthropic route only.
    return {}, {"anthropic": {"extra_body": {"thinking": THINKING}}}


def test_thinking_and_tool_use_go_back_to_anthropic_signed_and_first(
    server: LoopbackServer, make_engine: EngineFactory, driver: str
) -> None:
    per_call, route_options = thinking_options()
    talk = Conversation(server, make_engine, driver, ["anthropic"], route_options)
    talk.script("anthropic", [Healthy(recording="thinking_tool_use"), Healthy()])
    history: list[Any] = [QUESTION]
    first = talk.turn(history, tools=TOOLS, max_tokens=2048, **per_call)
    assert first.message.stop_reason == "tool_calls" and first.message.thinking
    history += [first.message.to_dict(), *results_for(first.message)]
    talk.turn(history, tools=TOOLS, max_tokens=2048, **per_call)
    first_body, second_body = talk.bodies("anthropic")
    assert first_body["thinking"] == second_body["thinking"] == THINKING
    _, assistant, _ = second_body["messages"]
    streamed = anthropic_artifacts_of("thinking_tool_use")
    assert [b["type"] for b in streamed] == ["thinking", "redacted_thinking", "thinking"]
    # As streamed: each signature and the redacted data exactly, the thinking first.
    assert assistant["content"][: len(streamed)] == streamed
    assert [b["type"] for b in assistant["content"][len(streamed) :]] == ["text", "tool_use"]
    assert_paired("anthropic", second_body, history)
    talk.assert_every_body_accepted()


@pytest.mark.parametrize("fallback", ["chat", "responses"])
def test_after_a_fallback_no_signature_or_redacted_data_leaves_anthropic(
    server: LoopbackServer, make_engine: EngineFactory, driver: str, fallback: str
) -> None:
    per_call, route_options = thinking_options()
    talk = Conversation(server, make_engine, driver, ["anthropic", fallback], route_options)
    talk.script("anthropic", [Healthy(recording="thinking_tool_use"), HttpError(status=529)])
    history: list[Any] = [QUESTION]
    first = talk.turn(history, tools=TOOLS, max_tokens=2048, **per_call)
    history += [first.message.to_dict(), *results_for(first.message)]
    second = talk.turn(history, tools=TOOLS, max_tokens=2048, **per_call)
    assert second.attempts[-1].api_mode == API_MODE[fallback]
    (body,) = talk.bodies(fallback)
    sent = json.dumps(body)
    for block in anthropic_artifacts_of("thinking_tool_use"):
        secret = block.get("signature") or block["data"]
        assert secret not in sent and json.dumps(secret)[1:-1] not in sent
    assert "redacted_thinking" not in sent and "signature" not in sent and "thinking" not in body
    assert_paired(fallback, body, history)
    talk.assert_every_body_accepted()


# -- parallel calls and foreign ids -----------------------------------------------------------


def test_parallel_calls_from_chat_reach_anthropic_as_one_turn_each(
    server: LoopbackServer, make_engine: EngineFactory, driver: str
) -> None:
    talk = Conversation(server, make_engine, driver, ["chat", "anthropic"])
    talk.script("chat", [Healthy(recording="tool_calls_parallel"), HttpError(status=503)])
    history: list[Any] = [QUESTION]
    first = talk.turn(history, tools=TOOLS)
    calls = first.message.tool_calls
    assert len(calls) == 2
    # Answered in the reverse order: Anthropic still gets them in the order of the calls.
    history += [first.message.to_dict(), *reversed(results_for(first.message))]
    talk.turn(history, tools=TOOLS)
    (body,) = talk.bodies("anthropic")
    question, assistant, answers = body["messages"]
    assert question["role"] == "user" and assistant["role"] == "assistant"
    uses = [b for b in assistant["content"] if b["type"] == "tool_use"]
    assert [(u["id"], u["name"], u["input"]) for u in uses] == [
        (c.id, c.name, json.loads(c.arguments)) for c in calls
    ]
    assert answers["role"] == "user"
    assert [(b["type"], b["tool_use_id"]) for b in answers["content"]] == [
        ("tool_result", c.id) for c in calls
    ]
    assert [b["content"] for b in answers["content"]] == [
        run_tool(c.name, c.arguments) for c in calls
    ]
    talk.assert_every_body_accepted()


FOREIGN_ID = "functions.get_weather:0"
"""How some OpenAI-compatible servers name a call: outside Anthropic's id pattern."""
LONG_ID = "toolu_" + "L" * 58
"""64 characters: Anthropic's limit, beyond OpenAI's 40."""


def recording_with_ids(kind: str, name: str, ids: dict[str, str]) -> RawResponse:
    """A recorded stream replayed as is but for its tool call ids."""
    path = ROOT / "providers" / "loopback" / "recorded" / RECORDED_IN[kind] / f"{name}.sse"
    body = path.read_bytes()
    for old, new in ids.items():
        assert old.encode() in body
        body = body.replace(old.encode(), new.encode())
    # The last event ends with its blank line, as on the wire.
    return RawResponse(body=body.rstrip(b"\n") + b"\n\n")


def test_a_foreign_id_from_chat_reaches_anthropic_in_its_pattern_paired(
    server: LoopbackServer, make_engine: EngineFactory, driver: str
) -> None:
    talk = Conversation(server, make_engine, driver, ["chat", "anthropic"])
    streamed = recording_with_ids(
        "chat",
        "tool_calls_parallel",
        {"call_JMW1whyEaYG438VE1OIflxA2": FOREIGN_ID, "call_DNYTawLBoN8fj3KN6qU9N1Ou": LONG_ID},
    )
    talk.script("chat", [streamed, HttpError(status=503)])
    history: list[Any] = [QUESTION]
    first = talk.turn(history, tools=TOOLS)
    assert len(first.attempts) == 1
    assert [c.id for c in first.message.tool_calls] == [FOREIGN_ID, LONG_ID]
    history += [first.message.to_dict(), *results_for(first.message)]
    talk.turn(history, tools=TOOLS)
    (body,) = talk.bodies("anthropic")
    foreign, long = assert_paired("anthropic", body, history)
    assert foreign != FOREIGN_ID and long == LONG_ID  # an id the API accepts is kept
    talk.assert_every_body_accepted()


@pytest.mark.parametrize("fallback", ["chat", "responses"])
def test_a_64_character_id_reaches_openai_within_40_paired(
    server: LoopbackServer, make_engine: EngineFactory, driver: str, fallback: str
) -> None:
    talk = Conversation(server, make_engine, driver, ["anthropic", fallback])
    streamed = recording_with_ids(
        "anthropic", "tool_use", {"toolu_01NRLabsLyVHZPKxbKvkfSMn": LONG_ID}
    )
    talk.script("anthropic", [streamed, HttpError(status=529)])
    history: list[Any] = [QUESTION]
    first = talk.turn(history, tools=TOOLS)
    assert len(first.attempts) == 1
    assert [c.id for c in first.message.tool_calls] == [LONG_ID]
    history += [first.message.to_dict(), *results_for(first.message)]
    talk.turn(history, tools=TOOLS)
    (body,) = talk.bodies(fallback)
    (sent,) = assert_paired(fallback, body, history)
    assert sent != LONG_ID and len(sent) <= 40
    talk.assert_every_body_accepted()


# -- what cannot be right fails before any request ------------------------------------------


def test_a_history_the_loop_got_wrong_fails_at_stream_with_zero_requests(
    server: LoopbackServer, make_engine: EngineFactory, driver: str
) -> None:
    talk = Conversation(server, make_engine, driver, KINDS)
    talk.script("anthropic", [Healthy(recording="tool_use")])
    first = talk.turn([QUESTION], tools=TOOLS)
    sent = len(talk.records())
    # The agent appended the answer but forgot to run the tool before asking again.
    history = [QUESTION, first.message.to_dict(), {"role": "user", "content": "And Rome?"}]
    with pytest.raises(ValueError, match=r"messages\[1\]: tool call .* left unanswered"):
        talk.start(history, tools=TOOLS)
    # A result for a call the turn never made.
    history = [QUESTION, first.message.to_dict(), *results_for(first.message)]
    history.append({"role": "tool", "tool_call_id": "call_nobody", "content": "?"})
    with pytest.raises(ValueError, match=r"messages\[3\]: tool message answers no call"):
        talk.start(history, tools=TOOLS)
    assert len(talk.records()) == sent


@pytest.mark.parametrize("keyword", ["thinking", "reasoning"])
def test_a_provider_keyword_in_the_loop_fails_at_stream_with_zero_requests(
    server: LoopbackServer, make_engine: EngineFactory, driver: str, keyword: str
) -> None:
    talk = Conversation(server, make_engine, driver, KINDS)
    talk.script("anthropic", [Healthy(recording="tool_use")])
    first = talk.turn([QUESTION], tools=TOOLS)
    sent = len(talk.records())
    history = [QUESTION, first.message.to_dict(), *results_for(first.message)]
    with pytest.raises(ValueError, match=f"keyword '{keyword}' is not accepted by route"):
        talk.start(history, tools=TOOLS, **{keyword: {}})
    assert len(talk.records()) == sent


# -- the README's loop -------------------------------------------------------------------------


def readme_loop() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    intro = "An agent loop, the same on any mixed fallback chain:"
    assert intro in readme
    block = readme.split(intro, 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    return block


def test_the_readme_loop_is_ten_lines() -> None:
    lines = readme_loop().strip().splitlines()
    assert len(lines) == 10, lines
    assert "run.message.to_dict()" in readme_loop()


@pytest.mark.parametrize("driver", ["sync"])  # the README's loop is the sync one
def test_the_readme_loop_runs_across_a_mixed_fallback_chain(
    server: LoopbackServer, make_engine: EngineFactory, driver: str
) -> None:
    talk = Conversation(server, make_engine, driver, KINDS)
    # Turn 1: Anthropic calls a tool. Turn 2: Anthropic is overloaded, Chat calls two
    # more. Turn 3: back on Anthropic, with calls of both issuers in the history.
    talk.script("anthropic", [Healthy(recording="tool_use"), HttpError(status=529), Healthy()])
    talk.script("chat", [Healthy(recording="tool_calls_parallel")])
    namespace: dict[str, Any] = {"engine": talk.engine, "TOOLS": TOOLS, "run_tool": run_tool}
    exec(compile(readme_loop(), "README.md", "exec"), namespace)
    history = namespace["history"]
    assert [m["role"] for m in history] == [
        "user",
        "assistant",
        "tool",
        "assistant",
        "tool",
        "tool",
        "assistant",
    ]
    assert history[-1]["content"] and "tool_calls" not in history[-1]
    _, _, last = talk.bodies("anthropic")
    assert_paired("anthropic", last, history[:-1])
    assert talk.bodies("responses") == []
    talk.assert_every_body_accepted()
