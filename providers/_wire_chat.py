"""The neutral history and options as Chat Completions takes them: the history is in
this API's own shape, so it goes as it is, minus what belongs to another API (provider
artifacts, ``cache_control``) and with tool ids cut to OpenAI's 40 characters."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ._history import (
    OPENAI_ID,
    FunctionTool,
    ToolIds,
    WireOptions,
    without_cache_control,
)

__all__ = ["messages", "options", "tools"]


def messages(history: Sequence[Mapping[str, Any]], system: str | None) -> list[dict[str, Any]]:
    """``messages`` of the request, from a ``normalize``d history."""
    ids = ToolIds(history, OPENAI_ID)
    wire: list[dict[str, Any]] = []
    if system is not None:
        wire.append({"role": "system", "content": system})
    for message in history:
        out = {key: value for key, value in message.items() if key != "provider_artifacts"}
        content = out.get("content")
        if isinstance(content, Sequence) and not isinstance(content, str):
            out["content"] = [without_cache_control(part) for part in content]
        if out.get("tool_calls"):
            out["tool_calls"] = [{**call, "id": ids[call["id"]]} for call in out["tool_calls"]]
        if out["role"] == "tool":
            out["tool_call_id"] = ids[out["tool_call_id"]]
        wire.append(out)
    return wire


def tools(caller_tools: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    wire: list[dict[str, Any]] = []
    for tool in map(FunctionTool.of, caller_tools):
        function: dict[str, Any] = {
            "name": tool.name,
            "description": tool.description,
            "parameters": dict(tool.parameters),
        }
        if tool.strict is not None:
            function["strict"] = tool.strict
        wire.append({"type": "function", "function": function})
    return wire


def options(neutral: Mapping[str, Any], *, has_tools: bool) -> WireOptions:
    return WireOptions.openai(
        neutral,
        has_tools=has_tools,
        named_tool=lambda name: {"type": "function", "function": {"name": name}},
    )
