"""The loopback server refuses, as the real APIs do, a request body they would reject.

Table-driven: bodies each API accepts, and bodies it refuses, each naming its problem
(``providers.loopback.problems``); then the server itself, driven by the real SDKs over
HTTP: a refused body is a 400 ``invalid_request_error`` in the provider's own error shape
that takes no fault from the script, ``validate=False`` accepts it, and every body is kept.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from providers.loopback import HttpError, LoopbackServer, problems
from providers.loopback._extract_schemas import extract

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / "providers" / "loopback" / "schemas"

USER = {"role": "user", "content": "What is the weather in Paris?"}
TOOL_USE = {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}}
TOOL_RESULT = {"type": "tool_result", "tool_use_id": "toolu_01", "content": "sunny"}
THINKING_ON = {"type": "enabled", "budget_tokens": 1024}
SIGNED = {"type": "thinking", "thinking": "Paris: call the tool.", "signature": "EqQBCgIYAhIM"}
REDACTED = {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix"}
CHAT_CALL = {
    "role": "assistant",
    "content": None,
    "tool_calls": [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        }
    ],
}
CHAT_RESULT = {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}
PNG = "data:image/png;base64,iVBORw0KGgo="
WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}}


def anthropic_body(*messages: Any, **fields: Any) -> dict[str, Any]:
    return {"model": "claude-x", "max_tokens": 2048, "messages": list(messages or [USER]), **fields}


def chat_body(*messages: Any, **fields: Any) -> dict[str, Any]:
    return {"model": "gpt-4o", "messages": list(messages or [USER]), **fields}


def responses_body(*items: Any, **fields: Any) -> dict[str, Any]:
    return {"model": "gpt-4o", "input": list(items) if items else "Hi", **fields}


def _tool_turns(*assistant: Any, answer: Any = (TOOL_RESULT,)) -> tuple[Any, ...]:
    return (
        USER,
        {"role": "assistant", "content": list(assistant)},
        {"role": "user", "content": list(answer)},
    )


VALID: list[tuple[str, str, dict[str, Any]]] = [
    ("anthropic", "plain", anthropic_body(system="Be brief.", stream=True)),
    (
        "anthropic",
        "tool round trip",
        anthropic_body(
            *_tool_turns({"type": "text", "text": "Checking."}, TOOL_USE),
            tools=[{"name": "get_weather", "input_schema": WEATHER_SCHEMA}],
        ),
    ),
    (
        "anthropic",
        "consecutive user messages merge into one turn",
        anthropic_body(
            USER,
            {"role": "assistant", "content": [TOOL_USE]},
            {"role": "user", "content": [TOOL_RESULT]},
            {"role": "user", "content": "And tomorrow?"},
        ),
    ),
    (
        "anthropic",
        "signed thinking first",
        anthropic_body(*_tool_turns(SIGNED, TOOL_USE), thinking=THINKING_ON),
    ),
    (
        "anthropic",
        "redacted thinking first",
        anthropic_body(*_tool_turns(REDACTED, SIGNED, TOOL_USE), thinking=THINKING_ON),
    ),
    (
        "anthropic",
        "base64 image",
        anthropic_body(
            {
                "role": "user",
                "content": [
                    {
                        "type": "image",
                        "source": {
                            "type": "base64",
                            "media_type": "image/png",
                            "data": "iVBORw0KGgo=",
                        },
                    },
                    {"type": "text", "text": "What is this?"},
                ],
            }
        ),
    ),
    (
        # Documented today; older SDKs' request types (anthropic 0.40.0) predate them.
        "anthropic",
        "url image, cache_control on blocks and tools, a server tool",
        anthropic_body(
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Compare", "cache_control": {"type": "ephemeral"}},
                    {"type": "image", "source": {"type": "url", "url": "https://x.test/a.png"}},
                ],
            },
            system=[{"type": "text", "text": "Rules.", "cache_control": {"type": "ephemeral"}}],
            tools=[
                {
                    "name": "get_weather",
                    "input_schema": WEATHER_SCHEMA,
                    "cache_control": {"type": "ephemeral"},
                },
                {"type": "web_search_20250305", "name": "web_search", "max_uses": 1},
            ],
        ),
    ),
    ("openai", "plain", chat_body(stream=True, stream_options={"include_usage": True})),
    (
        "openai",
        "tool round trip",
        chat_body(
            {"role": "system", "content": "Be brief."},
            USER,
            CHAT_CALL,
            CHAT_RESULT,
            tools=[
                {
                    "type": "function",
                    "function": {"name": "get_weather", "parameters": WEATHER_SCHEMA},
                }
            ],
            max_completion_tokens=100,
        ),
    ),
    (
        "openai",
        "image part",
        chat_body(
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What?"},
                    {"type": "image_url", "image_url": {"url": PNG}},
                ],
            }
        ),
    ),
    ("openai_responses", "plain", responses_body(instructions="Be brief.", stream=True)),
    (
        "openai_responses",
        "reasoning and a function call round trip",
        responses_body(
            {"role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
            {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAAAB"},
            {
                "type": "function_call",
                "call_id": "call_1",
                "name": "get_weather",
                "arguments": "{}",
            },
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
            tools=[
                {
                    "type": "function",
                    "name": "get_weather",
                    "parameters": WEATHER_SCHEMA,
                    "strict": False,
                }
            ],
        ),
    ),
    (
        "openai_responses",
        "a list of parts (two union branches match: any-of)",
        responses_body(
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "What?"},
                    {"type": "input_image", "image_url": PNG, "detail": "auto"},
                ],
            }
        ),
    ),
]

INVALID: list[tuple[str, str, dict[str, Any], str]] = [
    (
        "anthropic",
        "no max_tokens",
        {"model": "claude-x", "messages": [USER]},
        "max_tokens: Field required",
    ),
    ("anthropic", "no messages", anthropic_body(messages=[]), "at least one message"),
    (
        "anthropic",
        "a tool_use left unanswered",
        anthropic_body(USER, {"role": "assistant", "content": [TOOL_USE]}),
        "`tool_use` ids were found without `tool_result` blocks immediately after: toolu_01",
    ),
    (
        "anthropic",
        "a tool_result answering no tool_use",
        anthropic_body(
            USER,
            {"role": "assistant", "content": "Hm."},
            {"role": "user", "content": [TOOL_RESULT]},
        ),
        "messages.2.content.0: unexpected `tool_use_id`",
    ),
    (
        "anthropic",
        "text before the tool_result",
        anthropic_body(
            *_tool_turns(TOOL_USE, answer=({"type": "text", "text": "here"}, TOOL_RESULT))
        ),
        "messages.2.content.1: tool_result blocks must come first",
    ),
    (
        "anthropic",
        "a foreign tool id",
        anthropic_body(
            *_tool_turns(
                dict(TOOL_USE, id="functions.get_weather:0"),
                answer=(dict(TOOL_RESULT, tool_use_id="functions.get_weather:0"),),
            )
        ),
        "messages.1.content.0.id: String should match pattern '^[a-zA-Z0-9_-]+$'",
    ),
    (
        "anthropic",
        "thinking enabled, the final tool_use turn without thinking",
        anthropic_body(*_tool_turns(TOOL_USE), thinking=THINKING_ON),
        "messages.1.content.0: Expected `thinking` or `redacted_thinking`, but found `tool_use`",
    ),
    (
        "anthropic",
        "a thinking block without its signature",
        anthropic_body(
            *_tool_turns({"type": "thinking", "thinking": "hm"}, TOOL_USE), thinking=THINKING_ON
        ),
        "messages.1.content.0.signature",
    ),
    (
        "anthropic",
        "a thinking budget under 1024",
        anthropic_body(thinking={"type": "enabled", "budget_tokens": 100}),
        "budget_tokens",
    ),
    (
        "anthropic",
        "a Chat history sent as is",
        anthropic_body(USER, CHAT_CALL, CHAT_RESULT),
        "messages.2.role: 'tool' is not one of",
    ),
    (
        "anthropic",
        "a Chat image part",
        anthropic_body(
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": PNG}}]}
        ),
        "messages.0.content.0.type: 'image_url' is not one of",
    ),
    (
        "anthropic",
        "an image without data",
        anthropic_body(
            {
                "role": "user",
                "content": [
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png"}}
                ],
            }
        ),
        "messages.0.content.0.source.data: Field required",
    ),
    (
        "anthropic",
        "an image source of no documented type",
        anthropic_body(
            {
                "role": "user",
                "content": [{"type": "image", "source": {"type": "file_path", "path": "a.png"}}],
            }
        ),
        "messages.0.content.0.source.type: 'file_path' is not one of",
    ),
    (
        "anthropic",
        "a url source given as a content block",
        anthropic_body({"role": "user", "content": [{"type": "url", "url": "https://x.test/a"}]}),
        "messages.0.content.0.type: 'url' is not one of",
    ),
    (
        "anthropic",
        "cache_control on a message rather than a block",
        anthropic_body(dict(USER, cache_control={"type": "ephemeral"})),
        "messages.0.cache_control: Extra inputs are not permitted",
    ),
    (
        "anthropic",
        "a server tool without its name",
        anthropic_body(tools=[{"type": "web_search_20250305"}]),
        "tools.0.name: Field required",
    ),
    ("openai", "no model", {"messages": [USER]}, "body: 'model' is a required property"),
    ("openai", "no messages", chat_body(messages=[]), "messages: []"),
    (
        "openai",
        "a tool message without its call id",
        chat_body(USER, CHAT_CALL, {"role": "tool", "content": "sunny"}),
        "messages.2: 'tool_call_id' is a required property",
    ),
    (
        "openai",
        "an unknown role",
        chat_body({"role": "robot", "content": "x"}),
        "messages.0.role: 'robot' is not one of",
    ),
    (
        "openai",
        "an Anthropic history sent as is",
        chat_body(USER, {"role": "assistant", "content": [TOOL_USE]}),
        "messages.1.content.0.type: 'tool_use' is not one of",
    ),
    (
        "openai",
        "arguments as an object",
        chat_body(
            USER,
            {
                **CHAT_CALL,
                "tool_calls": [
                    {**CHAT_CALL["tool_calls"][0], "function": {"name": "f", "arguments": {}}}
                ],
            },
            CHAT_RESULT,
        ),
        "messages.1.tool_calls.0.function.arguments: {} is not of type 'string'",
    ),
    (
        "openai",
        "an Anthropic-shaped tool",
        chat_body(tools=[{"name": "get_weather", "input_schema": WEATHER_SCHEMA}]),
        "tools.0",
    ),
    (
        "openai",
        "an unknown parameter",
        chat_body(thinking=THINKING_ON),
        "thinking: Unknown parameter",
    ),
    (
        "openai_responses",
        "input_image without detail",
        responses_body({"role": "user", "content": [{"type": "input_image", "image_url": PNG}]}),
        "input.0.content.0: 'detail' is a required property",
    ),
    (
        "openai_responses",
        "a function tool without strict",
        responses_body(
            tools=[{"type": "function", "name": "get_weather", "parameters": WEATHER_SCHEMA}]
        ),
        "tools.0: 'strict' is a required property",
    ),
    (
        "openai_responses",
        "a function_call without call_id",
        responses_body(USER, {"type": "function_call", "name": "get_weather", "arguments": "{}"}),
        "input.1: 'call_id' is a required property",
    ),
    (
        "openai_responses",
        "Chat text parts",
        responses_body({"role": "user", "content": [{"type": "text", "text": "x"}]}),
        "input.0.content.0.type: 'text' is not one of",
    ),
    (
        "openai_responses",
        "Chat's messages parameter",
        {"model": "gpt-4o", "messages": [USER]},
        "messages: Unknown parameter: 'messages'.",
    ),
    ("openai_responses", "a Chat tool message", responses_body(USER, CHAT_RESULT), "input.1"),
]


@pytest.mark.parametrize(("api", "name", "body"), VALID, ids=[f"{a}:{n}" for a, n, _ in VALID])
def test_a_body_the_api_accepts_has_no_problem(api: Any, name: str, body: dict[str, Any]) -> None:
    assert problems(api, body) == ()


@pytest.mark.parametrize(
    ("api", "name", "body", "names"), INVALID, ids=[f"{a}:{n}" for a, n, _, _ in INVALID]
)
def test_a_body_the_api_refuses_names_its_problem(
    api: Any, name: str, body: dict[str, Any], names: str
) -> None:
    found = problems(api, body)
    assert any(names in problem for problem in found), found


def _spec() -> Path | None:
    # The document sits in ../shared/specs of the checkout (worktrees sit one level deeper).
    for parent in ROOT.parents:
        candidate = parent / "shared" / "specs" / "openai-openapi.json"
        if candidate.exists():
            return candidate
    return None


def test_the_shipped_schemas_are_what_the_script_extracts_from_the_document() -> None:
    spec = _spec()
    if spec is None:
        pytest.skip("the OpenAPI document (../shared/specs/openai-openapi.json) is not here")
    extracted = extract(json.loads(spec.read_text(encoding="utf-8")))
    for api_mode, schema in extracted.items():
        shipped = json.loads((SCHEMAS / f"{api_mode}.json").read_text(encoding="utf-8"))
        assert shipped == schema, (
            f"{api_mode}.json is stale: run providers/loopback/_extract_schemas.py"
        )


# ----------------------------------------------------------------- the server, over HTTP


@pytest.fixture
def own_server() -> Iterator[LoopbackServer]:
    with LoopbackServer() as server:
        yield server


def _anthropic(server: LoopbackServer) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.anthropic_base_url, api_key="test", max_retries=0)


def _openai(server: LoopbackServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.openai_base_url, api_key="test", max_retries=0)


def _refuse(server: LoopbackServer, api: str) -> Any:
    """Send a body the API refuses through its real SDK; return the SDK's exception."""
    if api == "anthropic":
        with _anthropic(server) as claude, pytest.raises(anthropic.BadRequestError) as caught:
            claude.messages.create(
                model="claude-x",
                max_tokens=64,
                messages=[
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": PNG}}]}
                ],  # type: ignore[list-item]
            )
        return caught.value
    with _openai(server) as gpt, pytest.raises(openai.BadRequestError) as raised:
        if api == "openai":
            gpt.chat.completions.create(
                model="gpt-4o", messages=[{"role": "robot", "content": "x"}]
            )  # type: ignore[misc, list-item]
        else:
            gpt.responses.create(
                model="gpt-4o",
                input=[{"role": "user", "content": [{"type": "input_image", "image_url": PNG}]}],  # type: ignore[list-item, typeddict-item]
            )
    return raised.value


SAYS = {
    "anthropic": "messages.0.content.0.type: 'image_url' is not one of",
    "openai": "messages.0.role: 'robot' is not one of",
    "openai_responses": "input.0.content.0: 'detail' is a required property",
}


@pytest.mark.parametrize("api", list(SAYS))
def test_a_refused_body_is_a_400_invalid_request_error_in_the_apis_own_shape(
    own_server: LoopbackServer, api: str
) -> None:
    error = _refuse(own_server, api)
    assert error.status_code == 400
    payload = error.response.json()
    if api == "anthropic":
        assert payload["type"] == "error"
        assert payload["error"]["type"] == "invalid_request_error"
    else:
        assert payload["error"]["type"] == "invalid_request_error"
        assert payload["error"]["param"] == SAYS[api].split(":", 1)[0]
    assert SAYS[api] in payload["error"]["message"]
    [record] = own_server.requests
    assert record.status == 400 and record.fault is None
    assert any(SAYS[api] in problem for problem in record.problems)


def test_a_refused_body_takes_no_fault_from_the_script(own_server: LoopbackServer) -> None:
    own_server.script(None, [HttpError(status=529)])
    _refuse(own_server, "anthropic")
    assert own_server.pending(None) == (HttpError(status=529),)


def test_validate_false_accepts_any_json_object() -> None:
    with LoopbackServer(validate=False) as server:
        with _openai(server) as gpt:
            answer = gpt.chat.completions.create(
                model="gpt-4o", messages=[{"role": "robot", "content": "x"}]
            )  # type: ignore[misc, list-item]
        assert answer.choices[0].message.content
        [record] = server.requests
        assert record.status == 200 and record.problems == ()


def test_each_body_is_kept_as_the_sdk_sent_it(own_server: LoopbackServer) -> None:
    with _anthropic(own_server) as claude:
        claude.messages.create(model="claude-x", max_tokens=64, messages=[USER])  # type: ignore[list-item]
    with _openai(own_server) as gpt:
        list(gpt.chat.completions.create(model="gpt-4o", messages=[USER], stream=True))  # type: ignore[list-item]
    first, last = own_server.bodies()
    assert first == {"model": "claude-x", "max_tokens": 64, "messages": [USER]}
    assert last["messages"] == [USER] and last["stream"] is True
    assert own_server.last_body() == last
    assert [r.body for r in own_server.requests] == [first, last]


def test_no_body_is_kept_without_history() -> None:
    with LoopbackServer(keep_history=False) as server:
        with _anthropic(server) as claude:
            claude.messages.create(model="claude-x", max_tokens=64, messages=[USER])  # type: ignore[list-item]
        assert server.requests_received == 1
        assert server.bodies() == []
        with pytest.raises(LookupError):
            server.last_body()
