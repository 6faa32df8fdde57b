"""The neutral history and options as the Responses API takes them.

- ``system=`` and every system/developer message -> ``instructions``, one string;
- user text and images -> ``input_text`` / ``input_image`` parts (``detail`` always
  set: the schema requires it);
- an assistant turn -> its Responses ``reasoning`` items first (the API wants each
  back before the items that followed it), then its text, then one ``function_call``
  item per call; a ``tool`` message -> a ``function_call_output`` item;
- function tools carry ``strict`` explicitly: Responses treats an omitted ``strict`` as
  strict mode, which rejects most schemas written for the other APIs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from ._history import (
    OPENAI_ID,
    FunctionTool,
    ToolIds,
    WireOptions,
    artifacts_for,
    parts_of,
    text_of,
)

__all__ = ["input_and_instructions", "options", "tools"]

API_MODE = "responses"
REASONING_INPUT_KEYS: Final = frozenset(
    {"type", "id", "summary", "content", "encrypted_content", "status"}
)
"""What the input schema accepts of a reasoning output item."""


def _part(part: Mapping[str, Any]) -> dict[str, Any]:
    if part["type"] == "image_url":
        image = part["image_url"]
        return {
            "type": "input_image",
            "image_url": image["url"],
            "detail": image.get("detail") or "auto",
        }
    return {"type": "input_text", "text": part["text"]}


def input_and_instructions(
    history: Sequence[Mapping[str, Any]], system: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    """``input`` and ``instructions`` of the request, from a ``normalize``d history."""
    ids = ToolIds(history, OPENAI_ID)
    instructions = [] if system is None else [system]
    items: list[dict[str, Any]] = []
    for message in history:
        role = message["role"]
        content = message.get("content")
        if role in ("system", "developer"):
            instructions.append(text_of(content))
        elif role == "user":
            items.append(
                {
                    "role": "user",
                    "content": content
                    if isinstance(content, str)
                    else [_part(part) for part in parts_of(content)],
                }
            )
        elif role == "tool":
            items.append(
                {
                    "type": "function_call_output",
                    "call_id": ids[message["tool_call_id"]],
                    "output": text_of(content),
                }
            )
        else:
            items.extend(
                {key: value for key, value in item.items() if key in REASONING_INPUT_KEYS}
                for item in artifacts_for(message, API_MODE)
            )
            text = text_of(content)
            if text:
                items.append({"role": "assistant", "content": text})
            items.extend(
                {
                    "type": "function_call",
                    "call_id": ids[call["id"]],
                    "name": call["function"]["name"],
                    "arguments": call["function"]["arguments"],
                }
                for call in message.get("tool_calls") or ()
            )
    return items, "\n\n".join(instructions) if instructions else None


def tools(caller_tools: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "type": "function",
            "name": tool.name,
            "description": tool.description,
            "parameters": dict(tool.parameters),
            "strict": bool(tool.strict),
        }
        for tool in map(FunctionTool.of, caller_tools)
    ]


def options(neutral: Mapping[str, Any], *, has_tools: bool) -> WireOptions:
    # Responses has no stop sequences: "stop" maps to a keyword its create() lacks, so
    # the route omits it and says so.
    return WireOptions.openai(
        neutral,
        has_tools=has_tools,
        named_tool=lambda name: {"type": "function", "name": name},
    )
