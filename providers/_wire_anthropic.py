"""The neutral history and options as the Anthropic Messages API takes them.

- system/developer messages (anywhere) -> ``system`` text blocks after ``system=``;
- an assistant turn -> its Anthropic artifacts (signed ``thinking``, ``redacted_thinking``)
  first, in stream order, then its text, then one ``tool_use`` block per call
  (``input`` as an object);
- consecutive ``tool`` messages -> ONE user turn of ``tool_result`` blocks in the order
  of the calls (the API requires every result of a turn in the next user turn, first);
  a user message right after them joins that turn after the results;
- ``image_url`` parts -> ``image`` blocks (a ``data:`` URL as a base64 source, else a
  url source); ``cache_control`` on parts and tools is kept (it is Anthropic's).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from ._history import (
    ANTHROPIC_ID,
    FunctionTool,
    ToolIds,
    WireOptions,
    artifacts_for,
    data_url,
    parts_of,
)

__all__ = ["messages_and_system", "options", "tools"]

API_MODE = "anthropic_messages"


def _block(part: Mapping[str, Any]) -> dict[str, Any]:
    if part["type"] == "image_url":
        url = part["image_url"]["url"]
        inline = data_url(url)
        source: dict[str, Any] = (
            {"type": "url", "url": url}
            if inline is None
            else {"type": "base64", "media_type": inline[0], "data": inline[1]}
        )
        block: dict[str, Any] = {"type": "image", "source": source}
    else:
        block = {"type": "text", "text": part["text"]}
    if "cache_control" in part:
        block["cache_control"] = part["cache_control"]
    return block


def messages_and_system(
    history: Sequence[Mapping[str, Any]], system: str | None
) -> tuple[list[dict[str, Any]], str | list[dict[str, Any]] | None]:
    """``messages`` and ``system`` of the request, from a ``normalize``d history."""
    ids = ToolIds(history, ANTHROPIC_ID)
    turns: list[dict[str, Any]] = []
    system_blocks: list[dict[str, Any]] = []
    results: list[tuple[int, dict[str, Any]]] = []
    call_order: dict[str, int] = {}

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if not blocks:
            return
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})

    def flush_results() -> None:
        if results:
            results.sort(key=lambda result: result[0])
            add("user", [block for _, block in results])
            results.clear()

    for message in history:
        role = message["role"]
        if role in ("system", "developer"):
            system_blocks.extend(_block(part) for part in parts_of(message["content"]))
        elif role == "tool":
            content = message["content"]
            result: dict[str, Any] = {
                "type": "tool_result",
                "tool_use_id": ids[message["tool_call_id"]],
                "content": content
                if isinstance(content, str)
                else [_block(part) for part in parts_of(content)],
            }
            results.append((call_order.get(message["tool_call_id"], len(call_order)), result))
        elif role == "user":
            flush_results()
            add("user", [_block(part) for part in parts_of(message["content"])])
        else:
            flush_results()
            blocks = [dict(item) for item in artifacts_for(message, API_MODE)]
            blocks.extend(_block(part) for part in parts_of(message.get("content")))
            calls = message.get("tool_calls") or ()
            call_order = {call["id"]: position for position, call in enumerate(calls)}
            blocks.extend(
                {
                    "type": "tool_use",
                    "id": ids[call["id"]],
                    "name": call["function"]["name"],
                    "input": json.loads(call["function"]["arguments"]),
                }
                for call in calls
            )
            add("assistant", blocks)
    flush_results()
    if not system_blocks:
        return turns, system
    if system is not None:
        system_blocks.insert(0, {"type": "text", "text": system})
    return turns, system_blocks


def tools(caller_tools: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    wire: list[dict[str, Any]] = []
    for tool in map(FunctionTool.of, caller_tools):
        spec: dict[str, Any] = {
            "name": tool.name,
            "description": tool.description,
            "input_schema": dict(tool.parameters),
        }
        if tool.cache_control is not None:
            spec["cache_control"] = dict(tool.cache_control)
        wire.append(spec)
    return wire


def options(neutral: Mapping[str, Any], *, has_tools: bool) -> WireOptions:
    wire = WireOptions.empty()
    for name in ("temperature", "top_p"):
        if name in neutral:
            wire.put(name, neutral[name], name)
    if "stop" in neutral:
        stop = neutral["stop"]
        wire.put("stop_sequences", [stop] if isinstance(stop, str) else list(stop), "stop")
    carried = tuple(name for name in ("tool_choice", "parallel_tool_calls") if name in neutral)
    if carried and not has_tools:
        wire.omitted.extend(carried)
    elif carried:
        choice = neutral.get("tool_choice", "auto")
        if isinstance(choice, Mapping):
            tool_choice: dict[str, Any] = {"type": "tool", "name": choice["name"]}
        else:
            tool_choice = {"type": {"required": "any"}.get(choice, choice)}
        if "parallel_tool_calls" in neutral and tool_choice["type"] != "none":
            tool_choice["disable_parallel_tool_use"] = not neutral["parallel_tool_calls"]
        wire.put("tool_choice", tool_choice, *carried)
    return wire
