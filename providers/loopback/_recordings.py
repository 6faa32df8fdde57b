"""Recorded provider SSE bodies, parsed into blocks the loopback server can replay.

Each ``recorded/<provider>/<name>.sse`` file is a real streaming body. It is split into
SSE event blocks (the bytes between blank lines) and every block keeps its raw bytes, so
a replay is byte-faithful apart from the normalised ``\\n\\n`` terminator.

Faults are positioned in *meaningful* events rather than raw blocks, because pings,
``message_start`` or a role-only first chunk are bytes without progress: a client that
has seen them has not yet received anything of the answer. Anthropic: every
``content_block_delta`` and ``message_stop``. OpenAI: a chunk whose choices carry
non-empty content, refusal or tool calls, or a ``finish_reason``.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal, cast

__all__ = [
    "PROVIDERS",
    "Provider",
    "Recording",
    "SseBlock",
    "available",
    "load",
    "parse_blocks",
]

Provider = Literal["anthropic", "openai", "openai_responses"]
PROVIDERS: tuple[Provider, ...] = ("anthropic", "openai", "openai_responses")

_ANTHROPIC_MEANINGFUL = frozenset({"content_block_delta", "message_stop"})


@dataclass(frozen=True, slots=True)
class SseBlock:
    """One SSE event block of a recording, as sent on the wire."""

    index: int
    raw: bytes
    """The block's bytes, ending in exactly one blank line (``\\n\\n``)."""
    event: str | None
    """The ``event:`` field, or for OpenAI (no event names) ``None``."""
    data: str
    """The ``data:`` lines joined with ``\\n`` (``[DONE]`` for the OpenAI terminator)."""
    meaningful: bool

    def json(self) -> Any:
        return json.loads(self.data)


@dataclass(frozen=True, slots=True)
class Recording:
    provider: Provider
    name: str
    blocks: tuple[SseBlock, ...]

    @property
    def meaningful_indexes(self) -> tuple[int, ...]:
        """Block indexes of the meaningful events, in order."""
        return tuple(b.index for b in self.blocks if b.meaningful)

    @property
    def meaningful_count(self) -> int:
        return len(self.meaningful_indexes)

    def prefix(self, n: int) -> tuple[SseBlock, ...]:
        """The blocks sent before a fault placed after ``n`` meaningful events.

        That is every block up to and including the ``n``-th meaningful one; for ``n=0``
        the preamble before the first meaningful event (``message_start``, pings, the
        role chunk), because a real provider sends that before any progress. ``n``
        beyond the recording's meaningful count gives the whole recording.
        """
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        indexes = self.meaningful_indexes
        if n > len(indexes):
            return self.blocks
        if n == 0:
            return self.blocks[: indexes[0]] if indexes else self.blocks
        return self.blocks[: indexes[n - 1] + 1]

    def truncated(self, blocks: int) -> Recording:
        """The recording's first ``blocks`` SSE blocks, as a recording of its own."""
        return Recording(provider=self.provider, name=self.name, blocks=self.blocks[:blocks])

    def text(self, choice: int = 0) -> str:
        """The concatenated text deltas: what an SDK consumer should reassemble.

        Anthropic: every ``text_delta``. OpenAI: the ``content`` of choice ``choice``.
        """
        parts: list[str] = []
        if self.provider == "openai_responses":
            return "".join(
                str(p.get("delta", ""))
                for p in _payloads(self.blocks)
                if p.get("type") == "response.output_text.delta"
            )
        for block in self.blocks:
            if not block.meaningful:
                continue
            payload = block.json()
            if self.provider == "anthropic":
                delta = payload.get("delta", {})
                if (
                    payload.get("type") == "content_block_delta"
                    and delta.get("type") == "text_delta"
                ):
                    parts.append(delta["text"])
            else:
                for item in payload.get("choices", []):
                    content = item.get("delta", {}).get("content")
                    if item.get("index") == choice and isinstance(content, str):
                        parts.append(content)
        return "".join(parts)

    def completion(self) -> dict[str, Any]:
        """A non-streaming response body assembled from the stream.

        Anthropic gives a ``message`` object, OpenAI a ``chat.completion`` object, so a
        ``stream=False`` request gets the same answer the stream would have produced.
        """
        if self.provider == "anthropic":
            return _anthropic_message(self.blocks)
        if self.provider == "openai_responses":
            return _responses_final(self.blocks)
        return _openai_completion(self.blocks)


# Responses API events that are progress of the answer (the rest is bookkeeping).
_RESPONSES_MEANINGFUL = frozenset(
    {
        "response.output_text.delta",
        "response.refusal.delta",
        "response.reasoning_summary_text.delta",
        "response.reasoning_text.delta",
        "response.function_call_arguments.delta",
        "response.completed",
        "response.incomplete",
    }
)


def _is_meaningful(provider: Provider, event: str | None, data: str) -> bool:
    if provider == "anthropic":
        if event is None:
            # Data-only blocks are legal SSE; the event type is then in the payload.
            try:
                event = str(json.loads(data).get("type"))
            except (ValueError, AttributeError):
                return False
        return event in _ANTHROPIC_MEANINGFUL
    if provider == "openai_responses":
        return event in _RESPONSES_MEANINGFUL
    if data.startswith("[DONE]"):
        return False
    try:
        payload = json.loads(data)
    except ValueError:
        return False
    if not isinstance(payload, dict):
        return False
    for choice in payload.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        if choice.get("finish_reason") is not None:
            return True
        delta = choice.get("delta") or {}
        if delta.get("content") or delta.get("refusal") or delta.get("tool_calls"):
            return True
    return False


def parse_blocks(provider: Provider, body: bytes) -> tuple[SseBlock, ...]:
    """Split an SSE body into blocks and classify each one.

    Comment-only blocks (``: keep-alive``) are kept as non-meaningful blocks so that a
    replay stays faithful to the recording.
    """
    text = body.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    blocks: list[SseBlock] = []
    for chunk in text.split(b"\n\n"):
        lines = [line for line in chunk.split(b"\n") if line]
        if not lines:
            continue
        event: str | None = None
        data: list[str] = []
        for line in lines:
            field, _, value = line.decode("utf-8").partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                event = value
            elif field == "data":
                data.append(value)
        joined = "\n".join(data)
        blocks.append(
            SseBlock(
                index=len(blocks),
                raw=b"\n".join(lines) + b"\n\n",
                event=event,
                data=joined,
                meaningful=bool(data) and _is_meaningful(provider, event, joined),
            )
        )
    return tuple(blocks)


def _folder(provider: Provider) -> Any:
    if provider not in PROVIDERS:
        raise ValueError(f"unknown provider {provider!r}; expected one of {PROVIDERS}")
    return resources.files(__package__).joinpath("recorded").joinpath(provider)


@functools.cache
def available(provider: Provider) -> tuple[str, ...]:
    """Names of the recordings shipped for ``provider``, sorted."""
    return tuple(
        sorted(
            entry.name.removesuffix(".sse")
            for entry in _folder(provider).iterdir()
            if entry.name.endswith(".sse")
        )
    )


@functools.cache
def load(provider: Provider, name: str) -> Recording:
    """Load and parse one recording; cached, so a replay costs no file I/O."""
    if name not in available(provider):
        raise KeyError(
            f"no recording {name!r} for {provider}; available: {', '.join(available(provider))}"
        )
    body = _folder(provider).joinpath(f"{name}.sse").read_bytes()
    return Recording(provider=provider, name=name, blocks=parse_blocks(provider, body))


def _payloads(blocks: tuple[SseBlock, ...]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for block in blocks:
        if not block.data or block.data.startswith("[DONE]"):
            continue
        try:
            payload = block.json()
        except ValueError:
            continue
        if isinstance(payload, dict):
            out.append(payload)
    return out


def _anthropic_message(blocks: tuple[SseBlock, ...]) -> dict[str, Any]:
    message: dict[str, Any] = {}
    content: dict[int, dict[str, Any]] = {}
    partial_json: dict[int, str] = {}
    for payload in _payloads(blocks):
        kind = payload.get("type")
        if kind == "message_start":
            message = copy.deepcopy(payload["message"])
        elif kind == "content_block_start":
            content[payload["index"]] = copy.deepcopy(payload["content_block"])
        elif kind == "content_block_delta":
            block = content.setdefault(payload["index"], {})
            delta = dict(payload["delta"])
            delta_type = delta.pop("type", None)
            if delta_type == "text_delta":
                block["text"] = block.get("text", "") + delta["text"]
            elif delta_type == "thinking_delta":
                block["thinking"] = block.get("thinking", "") + delta["thinking"]
            elif delta_type == "input_json_delta":
                partial_json[payload["index"]] = (
                    partial_json.get(payload["index"], "") + delta["partial_json"]
                )
            elif delta_type == "citations_delta":
                block.setdefault("citations", []).append(delta["citation"])
            else:
                # signature, compaction and future delta types carry whole field values.
                block.update(delta)
        elif kind == "content_block_stop":
            raw = partial_json.pop(payload["index"], "")
            if raw:
                # A recording cut off mid-input keeps the start's empty input.
                with contextlib.suppress(ValueError):
                    content[payload["index"]]["input"] = json.loads(raw)
        elif kind == "message_delta":
            message.update(payload.get("delta", {}))
            usage = message.setdefault("usage", {})
            usage.update(payload.get("usage", {}))
    message["content"] = [content[i] for i in sorted(content)]
    return message


def _openai_completion(blocks: tuple[SseBlock, ...]) -> dict[str, Any]:
    completion: dict[str, Any] = {"object": "chat.completion", "choices": []}
    choices: dict[int, dict[str, Any]] = {}
    for payload in _payloads(blocks):
        for key in ("id", "created", "model", "system_fingerprint", "service_tier"):
            if key in payload and key not in completion:
                completion[key] = payload[key]
        if payload.get("usage"):
            completion["usage"] = payload["usage"]
        for item in payload.get("choices") or ():
            choice = choices.setdefault(
                item["index"],
                {
                    "index": item["index"],
                    "message": {"role": "assistant", "content": None, "refusal": None},
                    "logprobs": None,
                    "finish_reason": None,
                },
            )
            message = choice["message"]
            delta = item.get("delta") or {}
            for field in ("content", "refusal"):
                if delta.get(field) is not None:
                    message[field] = (message[field] or "") + delta[field]
            for call in delta.get("tool_calls") or ():
                calls = cast(list[dict[str, Any]], message.setdefault("tool_calls", []))
                while len(calls) <= call["index"]:
                    calls.append({"id": "", "type": "function", "function": {}})
                target = calls[call["index"]]
                for key in ("id", "type"):
                    if call.get(key):
                        target[key] = call[key]
                for key, value in (call.get("function") or {}).items():
                    target["function"][key] = target["function"].get(key, "") + (value or "")
            if item.get("logprobs"):
                logprobs = choice["logprobs"] or {}
                for key, value in item["logprobs"].items():
                    if isinstance(value, list):
                        logprobs[key] = (logprobs.get(key) or []) + value
                choice["logprobs"] = logprobs
            if item.get("finish_reason") is not None:
                choice["finish_reason"] = item["finish_reason"]
    completion["choices"] = [choices[i] for i in sorted(choices)]
    return completion


def _responses_final(blocks: tuple[SseBlock, ...]) -> dict[str, Any]:
    for payload in reversed(_payloads(blocks)):
        if payload.get("type") in ("response.completed", "response.incomplete"):
            response = payload.get("response")
            if isinstance(response, dict):
                return response
    return {}
