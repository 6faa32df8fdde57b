"""What the caller receives: provider-neutral stream events and the assembled message.

Adapters translate their SDK's events into ``StreamEvent``; ``MessageBuilder`` folds
the events of one attempt into a ``Message``. Only meaningful events exist here: a
ping, a message_start or a role-only chunk is progress of bytes, not of the answer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "IncompleteToolCall",
    "Message",
    "MessageBuilder",
    "Restart",
    "StreamEvent",
    "ToolCall",
    "ToolCallDelta",
    "Usage",
]

EventType = Literal["text", "thinking", "tool_call", "restart", "stop"]


@dataclass(frozen=True, kw_only=True, slots=True)
class ToolCallDelta:
    """A piece of a tool call: ``index`` orders calls; id and name come with the first piece."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments_delta: str = ""

    def __post_init__(self) -> None:
        # Wire data decides these; an adapter turns this TypeError into a malformed stream.
        if isinstance(self.index, bool) or not isinstance(self.index, int):
            raise TypeError(f"tool call index must be an int, got {self.index!r}")
        if not isinstance(self.arguments_delta, str):
            raise TypeError(f"tool call arguments must be text, got {self.arguments_delta!r}")


@dataclass(frozen=True, kw_only=True, slots=True)
class Usage:
    input_tokens: int | None = None
    output_tokens: int | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Restart:
    """Yielded just before the events of a new attempt once output had been delivered:
    the consumer discards what it showed of the earlier attempt."""

    reason: str
    attempt: int
    route_index: int
    api_mode: str


@dataclass(frozen=True, kw_only=True, slots=True)
class StreamEvent:
    type: EventType
    text: str = ""
    tool_call: ToolCallDelta | None = None
    stop_reason: str | None = None
    usage: Usage | None = None
    restart: Restart | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str
    """The arguments as the JSON string the provider streamed."""


@dataclass(frozen=True, kw_only=True, slots=True)
class IncompleteToolCall:
    """A tool call whose stream was cut before the provider's stop: never to be executed.

    ``arguments`` is whatever part of the JSON arrived (possibly not valid JSON)."""

    id: str
    name: str
    arguments: str
    reason: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Message:
    text: str = ""
    thinking: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    """Only calls the provider finished (the stream reached its stop)."""
    incomplete_tool_calls: tuple[IncompleteToolCall, ...] = ()
    """Calls cut off mid-stream, kept for diagnosis; ``tool_calls`` never holds them."""
    stop_reason: str | None = None
    usage: Usage | None = None
    api_mode: str | None = None
    model: str | None = None


@dataclass(slots=True)
class _ToolCallParts:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


class MessageBuilder:
    """Accumulates one attempt's events; cheap enough to run on every event."""

    __slots__ = ("_text", "_thinking", "_tools", "api_mode", "model", "stop_reason", "usage")

    def __init__(self, *, api_mode: str, model: str) -> None:
        self._text: list[str] = []
        self._thinking: list[str] = []
        self._tools: dict[int, _ToolCallParts] = {}
        self.stop_reason: str | None = None
        self.usage: Usage | None = None
        self.api_mode = api_mode
        self.model = model

    def add(self, event: StreamEvent) -> None:
        kind = event.type
        if kind == "text":
            self._text.append(event.text)
        elif kind == "thinking":
            self._thinking.append(event.text)
        elif kind == "tool_call" and event.tool_call is not None:
            delta = event.tool_call
            parts = self._tools.get(delta.index)
            if parts is None:
                parts = self._tools[delta.index] = _ToolCallParts()
            if delta.id:
                parts.id = delta.id
            if delta.name:
                parts.name = delta.name
            if delta.arguments_delta:
                parts.arguments.append(delta.arguments_delta)
        elif kind == "stop":
            self.stop_reason = event.stop_reason
            if event.usage is not None:
                self.usage = event.usage

    def build(self, *, cut_reason: str | None = None) -> Message:
        """The message so far. Without the provider's stop, every tool call is incomplete:
        half of a JSON argument object must never reach a tool."""
        calls: list[ToolCall] = []
        incomplete: list[IncompleteToolCall] = []
        for _, parts in sorted(self._tools.items()):
            arguments = "".join(parts.arguments)
            reason: str | None = cut_reason or "the stream ended before the provider's stop"
            if self.stop_reason is not None:
                reason = _unusable_arguments(arguments, self.stop_reason)
            if reason is None:
                calls.append(ToolCall(id=parts.id, name=parts.name, arguments=arguments or "{}"))
            else:
                incomplete.append(
                    IncompleteToolCall(
                        id=parts.id, name=parts.name, arguments=arguments, reason=reason
                    )
                )
        return Message(
            text="".join(self._text),
            thinking="".join(self._thinking),
            tool_calls=tuple(calls),
            incomplete_tool_calls=tuple(incomplete),
            stop_reason=self.stop_reason,
            usage=self.usage,
            api_mode=self.api_mode,
            model=self.model,
        )


def _unusable_arguments(arguments: str, stop_reason: str) -> str | None:
    """Why a finished stream's tool call must not run, or None if its arguments are whole.
    A provider that stops at max_tokens mid-call sends a clean stop with half the JSON."""
    if not arguments:
        return None
    try:
        json.loads(arguments)
    except ValueError:
        return f"arguments are not complete JSON (stop reason {stop_reason!r})"
    return None
