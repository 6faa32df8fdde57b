"""Property (issue 11): any valid neutral history translates, for every route, into a
body well-formed by that wire API's rules.

Histories are random: system parts, text and image parts, assistant turns with text
and up to three parallel calls, results in any order, ids from any issuer (OpenAI,
Anthropic, OpenAI-compatible ``functions.f:0``, 64 characters), artifacts from both
issuers. The checks below are this module's own reading of each API's rules (roles,
block and item types, pairing, id rules, artifacts only to their issuer); the loopback
server's validator is the stricter, independent judge.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from hypothesis_profiles import PROFILE  # noqa: F401  (loads the suite's profile)

from lifecycle import Timeouts
from lifecycle.adapters import Request
from providers import AnthropicMessages, OpenAIChatCompletions, OpenAIResponses
from providers.loopback import problems

ANTHROPIC_ID = re.compile(r"^[a-zA-Z0-9_-]+$")
OPENAI_MAX_ID = 40
TIMEOUTS = Timeouts()


def _unused_factory() -> Any:
    raise AssertionError("translation never builds a client")


ROUTES = {
    "anthropic": AnthropicMessages(_unused_factory, model="claude-x"),
    "chat": OpenAIChatCompletions(_unused_factory, model="gpt-x"),
    "responses": OpenAIResponses(_unused_factory, model="gpt-x"),
}

texts = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=12)
cache_control = st.sampled_from([None, {"type": "ephemeral"}])
ID_PREFIXES = (
    "call_",
    "toolu_01",
    "functions.get_weather:",
    "fn:",
    "fn_",
    "fn.",
    "a" * 60,
    "é/ ",
)
"""Tool ids of every issuer; "fn:1", "fn_1" and "fn.1" all want the same Anthropic id."""


@st.composite
def text_part(draw: st.DrawFn) -> dict[str, Any]:
    part: dict[str, Any] = {"type": "text", "text": draw(texts)}
    control = draw(cache_control)
    if control is not None:
        part["cache_control"] = control
    return part


@st.composite
def image_part(draw: st.DrawFn) -> dict[str, Any]:
    url = draw(
        st.sampled_from(
            [
                "data:image/png;base64,iVBORw0KGgo=",
                "data:image/jpeg;base64,/9j/4A==",
                "https://x.test/a.png",
            ]
        )
    )
    image: dict[str, Any] = {"url": url}
    if draw(st.booleans()):
        image["detail"] = draw(st.sampled_from(["low", "high", "auto"]))
    return {"type": "image_url", "image_url": image}


def content(parts: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[Any]:
    return st.one_of(texts, st.lists(parts, min_size=1, max_size=3))


@st.composite
def artifacts(draw: st.DrawFn) -> list[dict[str, Any]]:
    kinds = draw(st.lists(st.sampled_from(["thinking", "redacted", "reasoning"]), max_size=3))
    out: list[dict[str, Any]] = []
    for n, kind in enumerate(kinds):
        if kind == "thinking":
            item: dict[str, Any] = {
                "type": "thinking",
                "thinking": draw(texts),
                "signature": f"sig{n}{draw(texts)}",
            }
            out.append({"api_mode": "anthropic_messages", "item": item})
        elif kind == "redacted":
            out.append(
                {
                    "api_mode": "anthropic_messages",
                    "item": {"type": "redacted_thinking", "data": f"red{n}"},
                }
            )
        else:
            item = {
                "type": "reasoning",
                "id": f"rs_{n}",
                "summary": [{"type": "summary_text", "text": draw(texts)}],
                "encrypted_content": f"enc{n}",
            }
            out.append({"api_mode": "responses", "item": item})
    return out


@st.composite
def histories(draw: st.DrawFn) -> list[dict[str, Any]]:
    history: list[dict[str, Any]] = []
    if draw(st.booleans()):
        role = draw(st.sampled_from(["system", "developer"]))
        history.append({"role": role, "content": draw(content(text_part()))})
    used: set[str] = set()

    def new_id() -> str:
        call_id = f"{draw(st.sampled_from(ID_PREFIXES))}{draw(st.integers(0, 3))}"
        while call_id in used:
            call_id += "x"
        used.add(call_id)
        return call_id

    for _ in range(draw(st.integers(1, 3))):
        history.append(
            {"role": "user", "content": draw(content(st.one_of(text_part(), image_part())))}
        )
        if not draw(st.booleans()):
            continue
        calls = [
            {
                "id": new_id(),
                "type": "function",
                "function": {
                    "name": draw(st.sampled_from(["get_weather", "lookup"])),
                    "arguments": json.dumps({"q": draw(texts)}),
                },
            }
            for _ in range(draw(st.integers(0, 3)))
        ]
        assistant: dict[str, Any] = {
            "role": "assistant",
            "content": draw(st.one_of(st.none(), texts)),
        }
        if not calls and assistant["content"] is None:
            assistant["content"] = draw(texts)
        if calls:
            assistant["tool_calls"] = calls
        found = draw(artifacts())
        if found:
            assistant["provider_artifacts"] = found
        history.append(assistant)
        for call in draw(st.permutations(calls)):
            history.append(
                {"role": "tool", "tool_call_id": call["id"], "content": draw(content(text_part()))}
            )
        if calls and draw(st.booleans()):
            history.append({"role": "assistant", "content": draw(texts)})
    return history


TOOLS = [
    {"name": "get_weather", "description": "w", "input_schema": {"type": "object"}},
    {"name": "lookup", "parameters": {"type": "object"}, "strict": True},
]


def _kwargs(kind: str, history: list[dict[str, Any]], system: str | None) -> dict[str, Any]:
    request = Request(messages=history, max_tokens=16, system=system, tools=TOOLS)
    route = ROUTES[kind]
    route.check_request(request)
    kwargs = route.request_kwargs(request, TIMEOUTS)  # type: ignore[attr-defined]
    json.dumps({k: v for k, v in kwargs.items() if k != "timeout"})  # plain JSON only
    result: dict[str, Any] = kwargs
    return result


def _neutral_calls(history: Sequence[Mapping[str, Any]]) -> list[str]:
    return [c["id"] for m in history if m["role"] == "assistant" for c in m.get("tool_calls") or ()]


def _artifacts(history: Sequence[Mapping[str, Any]], api_mode: str) -> list[Mapping[str, Any]]:
    return [
        a["item"]
        for m in history
        if m["role"] == "assistant"
        for a in m.get("provider_artifacts") or ()
        if a["api_mode"] == api_mode
    ]


def check_anthropic(history: list[dict[str, Any]], kwargs: Mapping[str, Any]) -> None:
    messages = kwargs["messages"]
    assert messages and messages[0]["role"] == "user"
    for before, after in itertools.pairwise(messages):
        assert before["role"] != after["role"], "turns alternate"
    thinking: list[Mapping[str, Any]] = []
    for position, turn in enumerate(messages):
        blocks = turn["content"]
        assert blocks, "no empty turn"
        kinds = [b["type"] for b in blocks]
        if turn["role"] == "assistant":
            assert set(kinds) <= {"thinking", "redacted_thinking", "text", "tool_use"}
            artifact_count = sum(k in ("thinking", "redacted_thinking") for k in kinds)
            assert all(k in ("thinking", "redacted_thinking") for k in kinds[:artifact_count])
            assert not {"thinking", "redacted_thinking"} & set(kinds[artifact_count:])
            thinking += blocks[:artifact_count]
            uses = [b for b in blocks if b["type"] == "tool_use"]
            assert kinds[len(kinds) - len(uses) :] == ["tool_use"] * len(uses), "calls last"
            for use in uses:
                assert ANTHROPIC_ID.match(use["id"]) and isinstance(use["input"], dict)
            if uses:
                answer = messages[position + 1]
                assert answer["role"] == "user"
                results = answer["content"][: len(uses)]
                assert [r.get("tool_use_id") for r in results] == [u["id"] for u in uses]
        else:
            assert set(kinds) <= {"text", "image", "tool_result"}
            results_count = sum(k == "tool_result" for k in kinds)
            assert kinds[:results_count] == ["tool_result"] * results_count, "results first"
            if results_count:
                assert position > 0 and any(
                    b["type"] == "tool_use" for b in messages[position - 1]["content"]
                )
        for block in blocks:
            if block["type"] == "text":
                assert isinstance(block["text"], str) and block["text"]
            if block["type"] == "image":
                source = block["source"]
                assert source["type"] in ("base64", "url")
                if source["type"] == "base64":
                    assert source["media_type"].startswith("image/") and source["data"]
    assert thinking == _artifacts(history, "anthropic_messages"), "byte-identical, in order"
    uses = [b["id"] for t in messages for b in t["content"] if b["type"] == "tool_use"]
    assert len(set(uses)) == len(set(_neutral_calls(history)))
    system = kwargs.get("system")
    assert system is None or isinstance(system, str) or all(b["type"] == "text" for b in system)
    assert _LEAKED_ENCRYPTED_CONTENT not in json.dumps(messages)


# The provider artifacts looked for as JSON keys: a text that happens to say "signature"
# (Hypothesis draws strings from the project's own constants) is not a leak, and a quote
# inside a text is escaped in JSON, so only a real key can serialize to these.
_LEAKED_SIGNATURE = '"signature":'
_LEAKED_ENCRYPTED_CONTENT = '"encrypted_content":'


def _no_key(value: Any, key: str) -> bool:
    if isinstance(value, Mapping):
        return key not in value and all(_no_key(v, key) for v in value.values())
    if isinstance(value, list):
        return all(_no_key(v, key) for v in value)
    return True


def check_chat(history: list[dict[str, Any]], kwargs: Mapping[str, Any]) -> None:
    messages = kwargs["messages"]
    assert _no_key(messages, "provider_artifacts") and _no_key(messages, "cache_control")
    dumped = json.dumps(messages)
    assert _LEAKED_SIGNATURE not in dumped and _LEAKED_ENCRYPTED_CONTENT not in dumped
    pending: set[str] = set()
    for message in messages:
        assert message["role"] in ("system", "developer", "user", "assistant", "tool")
        if message["role"] == "tool":
            assert message["tool_call_id"] in pending
            pending.discard(message["tool_call_id"])
            continue
        assert not pending, "every call answered before the next message"
        for call in message.get("tool_calls") or ():
            assert len(call["id"]) <= OPENAI_MAX_ID
            assert isinstance(json.loads(call["function"]["arguments"]), dict)
            pending.add(call["id"])
    assert not pending
    calls = [c["id"] for m in messages for c in m.get("tool_calls") or ()]
    assert len(set(calls)) == len(set(_neutral_calls(history)))


def check_responses(history: list[dict[str, Any]], kwargs: Mapping[str, Any]) -> None:
    items = kwargs["input"]
    assert kwargs.get("instructions") is None or isinstance(kwargs["instructions"], str)
    calls: list[str] = []
    answered: set[str] = set()
    reasoning: list[Mapping[str, Any]] = []
    for item in items:
        kind = item.get("type", "message")
        if kind == "message":
            assert item["role"] in ("user", "assistant")
            parts = item["content"]
            if not isinstance(parts, str):
                for part in parts:
                    assert part["type"] in ("input_text", "input_image")
                    if part["type"] == "input_image":
                        assert part["detail"] in ("low", "high", "auto") and part["image_url"]
        elif kind == "reasoning":
            assert set(item) <= {"type", "id", "summary", "content", "encrypted_content", "status"}
            reasoning.append(item)
        elif kind == "function_call":
            assert len(item["call_id"]) <= OPENAI_MAX_ID and item["call_id"] not in calls
            calls.append(item["call_id"])
        else:
            assert kind == "function_call_output"
            assert item["call_id"] in calls and item["call_id"] not in answered
            assert isinstance(item["output"], str)
            answered.add(item["call_id"])
    assert answered == set(calls)
    assert reasoning == _artifacts(history, "responses")
    text = json.dumps(items)
    assert _LEAKED_SIGNATURE not in text and '"type": "redacted_thinking"' not in text
    assert all(isinstance(tool["strict"], bool) for tool in kwargs["tools"])


@given(history=histories(), system=st.one_of(st.none(), texts))
def test_every_route_translates_a_valid_history_into_a_well_formed_body(
    history: list[dict[str, Any]], system: str | None
) -> None:
    check_anthropic(history, _kwargs("anthropic", history, system))
    check_chat(history, _kwargs("chat", history, system))
    check_responses(history, _kwargs("responses", history, system))


# -- the loopback validator is the judge ---------------------------------------------------

VALIDATOR_PROVIDER = {"anthropic": "anthropic", "chat": "openai", "responses": "openai_responses"}
THINKING_ON = {"type": "enabled", "budget_tokens": 1024}


def _body(kind: str, history: list[dict[str, Any]], system: str | None) -> dict[str, Any]:
    """The JSON body the route's SDK sends (the per-request ``timeout`` is no body field)."""
    return {k: v for k, v in _kwargs(kind, history, system).items() if k != "timeout"}


def _thinking_fits(history: Sequence[Mapping[str, Any]]) -> bool:
    """Whether a request with thinking enabled may carry this history: Anthropic wants
    the final assistant turn, when it calls a tool, to start with its signed thinking."""
    assistant = [m for m in history if m["role"] == "assistant"]
    if not assistant or not assistant[-1].get("tool_calls"):
        return True
    return bool(_artifacts(assistant[-1:], "anthropic_messages"))


@given(history=histories(), system=st.one_of(st.none(), texts))
def test_every_routes_body_is_accepted_by_the_loopback_validator(
    history: list[dict[str, Any]], system: str | None
) -> None:
    for kind in ROUTES:
        body = _body(kind, history, system)
        assert problems(VALIDATOR_PROVIDER[kind], body) == (), kind
    if _thinking_fits(history):
        # `thinking` is a provider option (not translated): put on the body as the
        # Anthropic route's options would; the validator then checks the signed blocks.
        body = {**_body("anthropic", history, system), "thinking": THINKING_ON}
        body["max_tokens"] = 2048
        assert problems("anthropic", body) == ()


# -- Anthropic's answer, back into the neutral history and out again ------------------------

anthropic_ids = st.text(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=8, max_size=24
).map(lambda tail: f"toolu_01{tail}")
json_objects = st.dictionaries(
    st.text(max_size=6),
    st.recursive(
        st.none() | st.booleans() | st.integers(-1000, 1000) | st.text(max_size=8),
        lambda inner: (
            st.lists(inner, max_size=2) | st.dictionaries(st.text(max_size=4), inner, max_size=2)
        ),
        max_leaves=4,
    ),
    max_size=3,
)


def _chunks(draw: st.DrawFn, text: str) -> list[str]:
    """``text`` cut at random places, as a provider streams it."""
    cuts = sorted(set(draw(st.lists(st.integers(0, len(text)), max_size=3))))
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds) if b > a]


@st.composite
def anthropic_turns(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """An assistant turn as Anthropic streams it (its events, each as the SSE data), and
    the content blocks it stands for, in stream order."""
    blocks: list[dict[str, Any]] = []
    for kind in draw(st.lists(st.sampled_from(["thinking", "redacted"]), max_size=3)):
        if kind == "thinking":
            blocks.append({"type": "thinking", "thinking": draw(texts), "signature": draw(texts)})
        else:
            blocks.append({"type": "redacted_thinking", "data": draw(texts)})
    text = draw(st.one_of(st.just(""), texts))
    if text:
        blocks.append({"type": "text", "text": text})
    for _ in range(draw(st.integers(0 if text else 1, 3))):
        blocks.append(
            {
                "type": "tool_use",
                "id": draw(anthropic_ids.filter(lambda i: i not in {b.get("id") for b in blocks})),
                "name": draw(st.sampled_from(["get_weather", "lookup"])),
                "input": draw(json_objects),
            }
        )
    events: list[dict[str, Any]] = [
        {
            "type": "message_start",
            "message": {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "model": "claude-x",
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": 10, "output_tokens": 1},
            },
        }
    ]
    for index, block in enumerate(blocks):
        kind = block["type"]
        start = {
            "thinking": {"type": "thinking", "thinking": "", "signature": ""},
            "redacted_thinking": block,
            "text": {"type": "text", "text": ""},
            "tool_use": {**block, "input": {}},
        }[kind]
        events.append({"type": "content_block_start", "index": index, "content_block": start})
        deltas: list[dict[str, Any]] = []
        if kind == "thinking":
            deltas += [
                {"type": "thinking_delta", "thinking": c} for c in _chunks(draw, block["thinking"])
            ]
            deltas += [{"type": "signature_delta", "signature": block["signature"]}]
        elif kind == "text":
            deltas += [{"type": "text_delta", "text": c} for c in _chunks(draw, block["text"])]
        elif kind == "tool_use":
            arguments = json.dumps(block["input"])
            deltas += [
                {"type": "input_json_delta", "partial_json": c} for c in _chunks(draw, arguments)
            ]
        events += [{"type": "content_block_delta", "index": index, "delta": d} for d in deltas]
        events.append({"type": "content_block_stop", "index": index})
    stop = "tool_use" if blocks[-1]["type"] == "tool_use" else "end_turn"
    events.append(
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop, "stop_sequence": None},
            "usage": {"output_tokens": 20},
        }
    )
    events.append({"type": "message_stop"})
    return events, blocks


def _streamed_message(events: list[dict[str, Any]]) -> Any:
    """The Message the Anthropic adapter builds from these events, each read as the JSON
    its server-sent event carries (``providers/_sdk/sse_json.py``)."""
    import copy

    from lifecycle._core.message import MessageBuilder
    from providers.anthropic_messages import _Translator

    translator = _Translator()
    builder = MessageBuilder(api_mode="anthropic_messages", model="claude-x")
    for data in events:
        neutral = translator.translate(copy.deepcopy(data))
        if neutral is not None:
            builder.add(neutral)
    return builder.build()


QUESTION = {"role": "user", "content": "Weather?"}


@given(turn=anthropic_turns())
def test_anthropics_answer_goes_back_to_anthropic_whole_through_to_dict(
    turn: tuple[list[dict[str, Any]], list[dict[str, Any]]],
) -> None:
    events, blocks = turn
    message = _streamed_message(events)
    assert message.thinking == "".join(b["thinking"] for b in blocks if b["type"] == "thinking")
    history: list[dict[str, Any]] = [QUESTION, message.to_dict()]
    history += [
        {"role": "tool", "tool_call_id": call.id, "content": f"result of {call.id}"}
        for call in message.tool_calls
    ]
    if not message.tool_calls:
        history.append({"role": "user", "content": "Thanks."})
    body = _body("anthropic", history, None)
    # Every block the next turn needs, as streamed: the signed thinking and the redacted
    # data byte-identical and first, the text, each call with its id and input.
    assert body["messages"][1] == {"role": "assistant", "content": blocks}
    uses = [b for b in blocks if b["type"] == "tool_use"]
    if uses:
        answers = body["messages"][2]["content"]
        assert [a["tool_use_id"] for a in answers] == [u["id"] for u in uses]
    thinking = bool(_artifacts(history, "anthropic_messages")) or not uses
    extra = {"thinking": THINKING_ON, "max_tokens": 2048} if thinking else {}
    assert problems("anthropic", {**body, **extra}) == ()
