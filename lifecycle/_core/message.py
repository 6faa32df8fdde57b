"""What the caller receives: provider-neutral stream events and the assembled message.

Adapters translate their SDK's events into ``StreamEvent``; ``MessageBuilder`` folds
the events of one attempt into a ``Message``. Only meaningful events exist here: a
ping, a message_start or a role-only chunk is progress of bytes, not of the answer.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

__all__ = [
    "STOP_REASONS",
    "IncompleteToolCall",
    "Message",
    "MessageBuilder",
    "ProviderArtifact",
    "Restart",
    "StopReason",
    "StreamEvent",
    "ToolCall",
    "ToolCallDelta",
    "Usage",
]

EventType = Literal["text", "thinking", "tool_call", "restart", "stop"]

StopReason = Literal["stop", "length", "tool_calls", "content_filter", "pause"]
STOP_REASONS: Final[tuple[StopReason, ...]] = (
    "stop",
    "length",
    "tool_calls",
    "content_filter",
    "pause",
)
"""``Message.stop_reason`` on every route: an agent loop tests one word whichever route
answered; the provider's own word is ``Message.provider_stop_reason``."""


@dataclass(frozen=True, kw_only=True, init=False)
class ToolCallDelta:
    """A piece of a tool call: ``index`` orders calls; id and name come with the first piece."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments_delta: str = ""

    def __init__(
        self,
        *,
        index: int,
        id: str | None = None,
        name: str | None = None,
        arguments_delta: str = "",
    ) -> None:
        # Wire data decides these; an adapter turns this TypeError into a malformed stream.
        # The exact types first: ``type(x) is C`` costs no call, and is what JSON gives.
        if type(index) is not int and (type(index) is bool or not isinstance(index, int)):
            raise TypeError(f"tool call index must be an int, got {index!r}")
        if type(arguments_delta) is not str and not isinstance(arguments_delta, str):
            raise TypeError(f"tool call arguments must be text, got {arguments_delta!r}")
        # Made per wire event of a tool call: as StreamEvent's, only what differs from the
        # class-level defaults goes into the instance's dict.
        values = self.__dict__
        values["index"] = index
        if id is not None:
            values["id"] = id
        if name is not None:
            values["name"] = name
        if arguments_delta != "":
            values["arguments_delta"] = arguments_delta


@dataclass(frozen=True, kw_only=True, slots=True)
class Usage:
    """Token counts with one meaning on every route; None where the provider did not say."""

    input_tokens: int | None = None
    """All input, cached included (Anthropic reports the cached part separately; it is
    added back here so a bill or a context budget reads the same on every route)."""
    output_tokens: int | None = None
    cache_read_tokens: int | None = None
    """Input served from the provider's prompt cache (part of ``input_tokens``)."""
    cache_write_tokens: int | None = None
    """Input written to the provider's prompt cache (part of ``input_tokens``)."""
    reasoning_tokens: int | None = None
    """Output spent on thinking or reasoning (part of ``output_tokens``)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ProviderArtifact:
    """Something the provider issued that only it may be sent back: a signed Anthropic
    thinking block, a redacted_thinking block, an OpenAI Responses reasoning item.

    ``item`` is exactly what goes back on the wire to a route of ``api_mode``; it is
    never sent to another wire API."""

    api_mode: str
    item: Mapping[str, Any]


@dataclass(frozen=True, kw_only=True, slots=True)
class Restart:
    """Yielded just before the events of a new attempt once output had been delivered:
    the consumer discards what it showed of the earlier attempt."""

    reason: str
    attempt: int
    route_index: int
    api_mode: str


@dataclass(frozen=True, kw_only=True, init=False)
class StreamEvent:
    type: EventType
    text: str = ""
    tool_call: ToolCallDelta | None = None
    stop_reason: str | None = None
    """On ``stop``: one of ``STOP_REASONS``."""
    provider_stop_reason: str | None = None
    """On ``stop``: the provider's own word for why it stopped."""
    usage: Usage | None = None
    restart: Restart | None = None
    provider_artifacts: tuple[ProviderArtifact, ...] = ()
    """On ``stop``: the attempt's artifacts in stream order. They travel on the stop, not
    as events of their own, because a stream cut before its stop has no turn to hand back."""

    def __init__(
        self,
        *,
        type: EventType,
        text: str = "",
        tool_call: ToolCallDelta | None = None,
        stop_reason: str | None = None,
        provider_stop_reason: str | None = None,
        usage: Usage | None = None,
        restart: Restart | None = None,
        provider_artifacts: tuple[ProviderArtifact, ...] = (),
    ) -> None:
        # One is made per wire event. A frozen dataclass's own __init__ stores each of the
        # eight fields through object.__setattr__ (about 1 us an event here); this one
        # writes only the fields that differ from their class-level defaults, straight
        # into the instance's dict (about 0.4 us). Still frozen: assignment raises.
        values = self.__dict__
        values["type"] = type
        if text != "":
            values["text"] = text
        if tool_call is not None:
            values["tool_call"] = tool_call
        if stop_reason is not None:
            values["stop_reason"] = stop_reason
        if provider_stop_reason is not None:
            values["provider_stop_reason"] = provider_stop_reason
        if usage is not None:
            values["usage"] = usage
        if restart is not None:
            values["restart"] = restart
        if provider_artifacts != ():
            values["provider_artifacts"] = provider_artifacts


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
    """One of ``STOP_REASONS``, the same word on every route; None if the stream was cut."""
    usage: Usage | None = None
    api_mode: str | None = None
    model: str | None = None
    provider_stop_reason: str | None = None
    """The provider's own word, e.g. Anthropic's ``end_turn`` or ``pause_turn``."""
    provider_artifacts: tuple[ProviderArtifact, ...] = ()
    """What the issuing provider needs back in the next turn, in stream order."""

    def to_dict(self) -> dict[str, Any]:
        """The assistant turn in the neutral (Chat Completions-shaped) history, ready to be
        appended to ``messages`` for the next turn on any route."""
        turn: dict[str, Any] = {"role": "assistant", "content": self.text or None}
        if self.tool_calls:
            turn["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
                for call in self.tool_calls
            ]
        if self.provider_artifacts:
            # Copies: the caller may edit its history without changing this message.
            turn["provider_artifacts"] = [
                {"api_mode": artifact.api_mode, "item": copy.deepcopy(dict(artifact.item))}
                for artifact in self.provider_artifacts
            ]
        return turn


@dataclass(slots=True)
class _ToolCallParts:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


class MessageBuilder:
    """Accumulates one attempt's events; cheap enough to run on every event."""

    __slots__ = (
        "_artifacts",
        "_text",
        "_thinking",
        "_tools",
        "api_mode",
        "model",
        "provider_stop_reason",
        "stop_reason",
        "usage",
    )

    def __init__(self, *, api_mode: str, model: str) -> None:
        self._text: list[str] = []
        self._thinking: list[str] = []
        self._tools: dict[int, _ToolCallParts] = {}
        self._artifacts: tuple[ProviderArtifact, ...] = ()
        self.stop_reason: str | None = None
        self.provider_stop_reason: str | None = None
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
            self.provider_stop_reason = event.provider_stop_reason
            self._artifacts = event.provider_artifacts
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
                reason = _unusable_arguments(
                    arguments, self.provider_stop_reason or self.stop_reason
                )
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
            provider_stop_reason=self.provider_stop_reason,
            provider_artifacts=self._artifacts,
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
