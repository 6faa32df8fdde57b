"""The neutral conversation history: checked once, then translated by each ``_wire_*`` module.

The history is in the Chat Completions shape (the README's "Conversation history"):
system/developer, user, assistant (``tool_calls``, ``provider_artifacts``) and tool
messages. ``normalize`` turns it into plain dicts and refuses, naming the message index,
what no wire API would accept, so a bad history fails at ``engine.stream()`` instead of
as a 400 on a fallback route after the primary failed.

Tool ids: a history may hold ids issued by another provider (``functions.get_weather:0``
from an OpenAI-compatible server, a 64-character id). ``ToolIds`` maps them to what one
wire API accepts, deterministically within a request, so a call and its result keep the
same id.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "ANTHROPIC_ID",
    "NEUTRAL_OPTIONS",
    "OPENAI_ID",
    "FunctionTool",
    "IdRules",
    "ToolIds",
    "WireOptions",
    "artifacts_for",
    "check_tool_choice",
    "data_url",
    "normalize",
    "parts_of",
    "text_of",
    "without_cache_control",
]

ROLES: Final = frozenset({"system", "developer", "user", "assistant", "tool"})
PART_TYPES: Final[Mapping[str, frozenset[str]]] = {
    "system": frozenset({"text"}),
    "developer": frozenset({"text"}),
    "user": frozenset({"text", "image_url"}),
    "assistant": frozenset({"text"}),
    "tool": frozenset({"text"}),
}


def _as_dict(element: Any, index: int) -> dict[str, Any]:
    to_dict = getattr(element, "to_dict", None)
    if callable(to_dict):
        element = to_dict()
    if not isinstance(element, Mapping):
        raise ValueError(
            f"messages[{index}]: expected a message dict or a lifecycle.Message, "
            f"got {type(element).__name__}"
        )
    return dict(element)


def _check_content(message: Mapping[str, Any], index: int, role: str) -> None:
    content = message.get("content")
    if content is None:
        if role == "assistant":  # an assistant turn of tool calls only
            return
        raise ValueError(f"messages[{index}]: a {role} message needs content")
    if isinstance(content, str):
        return
    if not isinstance(content, Sequence):
        raise ValueError(
            f"messages[{index}]: content must be a string or a list of parts, "
            f"got {type(content).__name__}"
        )
    allowed = PART_TYPES[role]
    for position, part in enumerate(content):
        where = f"messages[{index}].content[{position}]"
        if not isinstance(part, Mapping):
            raise ValueError(f"{where}: a part must be a dict, got {type(part).__name__}")
        kind = part.get("type")
        if kind not in allowed:
            raise ValueError(
                f"{where}: unknown part type {kind!r} for a {role} message "
                f"(accepted: {', '.join(sorted(allowed))})"
            )
        if kind == "text" and not isinstance(part.get("text"), str):
            raise ValueError(f"{where}: a text part needs a string 'text'")
        if kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, Mapping) else None
            if not isinstance(url, str) or not url.startswith(("data:", "http://", "https://")):
                raise ValueError(
                    f"{where}: an image_url part needs image_url.url, a data: URL or an http(s) URL"
                )
            if url.startswith("data:") and _data_url(url) is None:
                raise ValueError(f"{where}: a data URL must be data:<media type>;base64,<data>")


def _check_calls(message: dict[str, Any], index: int) -> list[str]:
    calls = message.get("tool_calls")
    if calls is None:
        return []
    if not isinstance(calls, Sequence) or isinstance(calls, str):
        raise ValueError(f"messages[{index}]: tool_calls must be a list")
    ids: list[str] = []
    normalized: list[dict[str, Any]] = []
    for position, call in enumerate(calls):
        where = f"messages[{index}].tool_calls[{position}]"
        if not isinstance(call, Mapping):
            raise ValueError(f"{where}: a tool call must be a dict")
        call_id = call.get("id")
        function = call.get("function")
        if not isinstance(call_id, str) or not call_id:
            raise ValueError(f"{where}: a tool call needs a non-empty string id")
        if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
            raise ValueError(f"{where}: a tool call needs function.name")
        arguments = function.get("arguments", "")
        if not isinstance(arguments, str):
            raise ValueError(f"{where}: function.arguments must be a JSON string")
        # A call without arguments streams "" on some providers: it means {}.
        if arguments.strip():
            try:
                parsed = json.loads(arguments)
            except ValueError as exc:
                raise ValueError(f"{where}: function.arguments is not valid JSON ({exc})") from None
            if not isinstance(parsed, dict):
                raise ValueError(f"{where}: function.arguments must be a JSON object")
        else:
            arguments = "{}"
        ids.append(call_id)
        normalized.append(
            {**call, "type": "function", "function": {**function, "arguments": arguments}}
        )
    message["tool_calls"] = normalized
    return ids


def _check_artifacts(message: Mapping[str, Any], index: int) -> None:
    artifacts = message.get("provider_artifacts")
    if artifacts is None:
        return
    if not isinstance(artifacts, Sequence) or isinstance(artifacts, str):
        raise ValueError(f"messages[{index}]: provider_artifacts must be a list")
    for position, artifact in enumerate(artifacts):
        if (
            not isinstance(artifact, Mapping)
            or not isinstance(artifact.get("api_mode"), str)
            or not isinstance(artifact.get("item"), Mapping)
        ):
            raise ValueError(
                f"messages[{index}].provider_artifacts[{position}]: "
                "expected {'api_mode': str, 'item': dict}"
            )


def normalize(messages: Sequence[Any]) -> list[dict[str, Any]]:
    """The history as plain dicts, checked; ``ValueError`` naming the message index."""
    history: list[dict[str, Any]] = []
    pending: dict[str, int] = {}
    """Calls of the last assistant turn not answered yet: id -> the turn's index."""

    def unanswered(before: str) -> None:
        if pending:
            call_id, at = next(iter(pending.items()))
            raise ValueError(
                f"messages[{at}]: tool call {call_id!r} is left unanswered {before} "
                "(each call needs a tool message with its tool_call_id)"
            )

    for index, element in enumerate(messages):
        message = _as_dict(element, index)
        role = message.get("role")
        if role not in ROLES:
            raise ValueError(
                f"messages[{index}]: unknown role {role!r} (accepted: {', '.join(sorted(ROLES))})"
            )
        _check_content(message, index, role)
        if role == "tool":
            call_id = message.get("tool_call_id")
            if call_id not in pending:
                raise ValueError(
                    f"messages[{index}]: tool message answers no call "
                    f"(tool_call_id {call_id!r} is not a pending call of the assistant turn "
                    "before it)"
                )
            del pending[call_id]
        elif role == "assistant":
            unanswered(f"before messages[{index}] (the next assistant turn)")
            for call_id in _check_calls(message, index):
                pending[call_id] = index
            _check_artifacts(message, index)
            if not (
                message.get("content")
                or message.get("tool_calls")
                or message.get("provider_artifacts")
            ):
                raise ValueError(
                    f"messages[{index}]: an assistant message needs content or tool_calls"
                )
        elif role == "user":
            unanswered(f"before messages[{index}] (the next user turn)")
        history.append(message)
    unanswered("at the end of the history")
    return history


def text_of(content: Any) -> str:
    """The text of a content (a string, or text parts joined)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part["text"] for part in content if part.get("type") == "text")


def parts_of(content: Any) -> list[Mapping[str, Any]]:
    """The content as a list of parts (a string is one text part; empty text dropped)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    return [part for part in content if part.get("type") != "text" or part.get("text")]


_DATA_URL = re.compile(r"^data:(?P<media>[\w.+-]+/[\w.+-]+);base64,(?P<data>.*)$", re.DOTALL)


def _data_url(url: str) -> tuple[str, str] | None:
    match = _DATA_URL.match(url)
    return None if match is None else (match["media"], match["data"])


def data_url(url: str) -> tuple[str, str] | None:
    """(media type, base64 data) of a ``data:`` URL, or None for any other URL."""
    return _data_url(url)


def without_cache_control(part: Mapping[str, Any]) -> dict[str, Any]:
    """A part as the OpenAI APIs take it: ``cache_control`` is Anthropic's alone."""
    return {key: value for key, value in part.items() if key != "cache_control"}


def artifacts_for(message: Mapping[str, Any], api_mode: str) -> list[Mapping[str, Any]]:
    """The artifacts this api_mode issued, in stream order; others never leave."""
    return [
        artifact["item"]
        for artifact in message.get("provider_artifacts") or ()
        if artifact["api_mode"] == api_mode
    ]


@dataclass(frozen=True, slots=True)
class IdRules:
    pattern: re.Pattern[str]
    max_length: int


ANTHROPIC_ID: Final = IdRules(pattern=re.compile(r"^[a-zA-Z0-9_-]+$"), max_length=64)
OPENAI_ID: Final = IdRules(pattern=re.compile(r"^.+$", re.DOTALL), max_length=40)

_HASH = 10
"""Hex digits of the original id's hash appended to a changed id."""


class ToolIds:
    """Foreign tool ids -> ids one wire API accepts, for one request.

    An id the API accepts is kept. Any other becomes its allowed characters, cut to
    fit, plus a hash of the original: the same foreign id maps to the same id, and
    distinct ids stay distinct (an unlikely clash gets the next hash)."""

    def __init__(self, history: Sequence[Mapping[str, Any]], rules: IdRules) -> None:
        self._rules = rules
        self._mapped: dict[str, str] = {}
        foreign = [
            call["id"]
            for message in history
            if message["role"] == "assistant"
            for call in message.get("tool_calls") or ()
        ]
        foreign += [m["tool_call_id"] for m in history if m["role"] == "tool"]
        # Ids kept as they are are reserved first, so a changed id never takes one.
        self._taken: set[str] = {i for i in foreign if self._accepted(i)}
        for call_id in foreign:
            self[call_id]

    def _accepted(self, call_id: str) -> bool:
        rules = self._rules
        return len(call_id) <= rules.max_length and rules.pattern.match(call_id) is not None

    def __getitem__(self, call_id: str) -> str:
        mapped = self._mapped.get(call_id)
        if mapped is not None:
            return mapped
        if self._accepted(call_id):
            mapped = call_id
        else:
            stem = re.sub(r"[^a-zA-Z0-9_-]", "_", call_id)[: self._rules.max_length - _HASH - 1]
            salt = 0
            while True:
                digest = hashlib.sha256(f"{call_id}\0{salt}".encode()).hexdigest()[:_HASH]
                mapped = f"{stem}_{digest}"
                if mapped not in self._taken:
                    break
                salt += 1
            self._taken.add(mapped)
        self._mapped[call_id] = mapped
        return mapped


@dataclass(frozen=True, slots=True)
class FunctionTool:
    """A caller's tool, in either accepted shape: ``{"name", "description",
    "input_schema" | "parameters", "strict"?, "cache_control"?}`` or Chat's
    ``{"type": "function", "function": {...}}``."""

    name: str
    description: str
    parameters: Mapping[str, Any]
    strict: bool | None
    cache_control: Mapping[str, Any] | None

    @classmethod
    def of(cls, tool: Mapping[str, Any]) -> FunctionTool:
        spec = tool.get("function") if tool.get("type") == "function" else None
        spec = spec if isinstance(spec, Mapping) else tool
        strict = spec.get("strict", tool.get("strict"))
        return cls(
            name=spec["name"],
            description=spec.get("description", ""),
            parameters=spec.get("input_schema") or spec.get("parameters") or {"type": "object"},
            strict=None if strict is None else bool(strict),
            cache_control=tool.get("cache_control") or spec.get("cache_control"),
        )


TOOL_CHOICES: Final = ("auto", "none", "required")


def check_tool_choice(choice: Any) -> None:
    if choice in TOOL_CHOICES:
        return
    if isinstance(choice, Mapping) and set(choice) == {"name"} and isinstance(choice["name"], str):
        return
    raise ValueError(
        f"tool_choice must be 'auto', 'none', 'required' or {{'name': <tool name>}}, got {choice!r}"
    )


NEUTRAL_OPTIONS: Final = ("temperature", "top_p", "stop", "tool_choice", "parallel_tool_calls")
"""Per-call keywords every route takes, each translated to its wire API's parameter."""


@dataclass(slots=True)
class WireOptions:
    """The neutral options as one wire API's keywords."""

    kwargs: dict[str, Any]
    sources: dict[str, tuple[str, ...]]
    """Wire keyword -> the neutral options it carries."""
    omitted: list[str]
    """Neutral options this request cannot carry (tool_choice without tools)."""

    @classmethod
    def empty(cls) -> WireOptions:
        return cls(kwargs={}, sources={}, omitted=[])

    def put(self, wire: str, value: Any, *neutral: str) -> None:
        self.kwargs[wire] = value
        self.sources[wire] = neutral

    @classmethod
    def openai(
        cls,
        neutral: Mapping[str, Any],
        *,
        has_tools: bool,
        named_tool: Callable[[str], dict[str, Any]],
    ) -> WireOptions:
        """Both OpenAI wire APIs take the neutral options under their own names and refuse
        ``tool_choice`` / ``parallel_tool_calls`` without tools; they differ only in how a
        tool is named in ``tool_choice`` (``named_tool``)."""
        wire = cls.empty()
        for name in ("temperature", "top_p", "stop"):
            if name in neutral:
                wire.put(name, neutral[name], name)
        for name in ("tool_choice", "parallel_tool_calls"):
            if name not in neutral:
                continue
            if not has_tools:
                wire.omitted.append(name)
                continue
            value = neutral[name]
            if name == "tool_choice" and isinstance(value, Mapping):
                value = named_tool(value["name"])
            wire.put(name, value, name)
        return wire
