"""``AnthropicMessages``: the Anthropic Messages API, streamed through the ``anthropic`` SDK.

Wire events and what they become (only meaningful events reach the engine):

| wire event (its JSON)                       | neutral event                |
| ------------------------------------------- | ---------------------------- |
| content_block_delta / text_delta            | ``text``                     |
| content_block_delta / thinking_delta        | ``thinking``                 |
| content_block_start / tool_use              | ``tool_call`` (id, name)     |
| content_block_delta / input_json_delta      | ``tool_call`` (arguments)    |
| message_stop (stop_reason from message_delta)| ``stop``                    |
| message_start, content_block_stop, ping,    | nothing: bytes, not progress |
| signature_delta, message_delta              |                              |

Thinking blocks (their text and ``signature_delta``) and ``redacted_thinking`` blocks are
kept as provider artifacts on the ``stop``, in stream order: Anthropic requires them back,
byte-identical, in front of the assistant's tool_use on the next turn.

The translator reads each event's JSON, not the SDK's model of it (``_sdk/sse_json.py``:
building the models is most of what iterating the SDK's stream costs). An
``event: error`` inside a 200 stream raises the SDK's own ``APIStatusError`` (its client
makes it from the error body, as its iteration does); it is classified by its error type
(``overloaded_error`` is a 529).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any, ClassVar, Final

import anthropic
import anthropic.resources.messages
from anthropic._models import FinalRequestOptions

from lifecycle import Fault, ProviderArtifact, StreamEvent, Timeouts, ToolCallDelta, Usage
from lifecycle.adapters import Request

from . import _wire_anthropic
from ._fields import int_field
from ._history import normalize
from ._sdk.classify import classify_with_table
from ._sdk.route import SdkRoute
from ._sdk.sse_json import anthropic_events, anthropic_events_async
from ._sdk.stream import StreamTranslator

__all__ = ["AnthropicMessages"]


class AnthropicMessages(SdkRoute):
    """A route to the Anthropic Messages API: ``AnthropicMessages(factory, model=...)``.

    ``factory`` builds an ``anthropic.Anthropic`` (for ``engine.stream``) or an
    ``anthropic.AsyncAnthropic`` (for ``engine.astream``); it is called lazily, on the
    run's own thread, only when this route is first needed and after each cleanup.
    """

    api_mode: ClassVar[str] = "anthropic_messages"
    cleanup_description: ClassVar[tuple[str, ...]] = (
        "shutdown(SHUT_RDWR) of the attempt's socket",
        "close the anthropic.Anthropic client",
        "rebuild anthropic.Anthropic from the factory",
    )

    sync_client_class: ClassVar[type] = anthropic.Anthropic
    async_client_class: ClassVar[type] = anthropic.AsyncAnthropic
    timeout_class: ClassVar[type] = anthropic.Timeout
    request_options_class: ClassVar[type] = FinalRequestOptions
    credentials_env: ClassVar[str] = "ANTHROPIC_API_KEY"
    credentials_hint: ClassVar[str] = (
        "no API key: set ANTHROPIC_API_KEY (or ANTHROPIC_AUTH_TOKEN) in the environment "
        "or pass api_key= to the client in the route's factory"
    )

    create_method: ClassVar[Callable[..., Any]] = anthropic.resources.messages.Messages.create
    wire_options = staticmethod(_wire_anthropic.options)

    def request_kwargs(
        self, request: Request, timeouts: Timeouts, *, learned: frozenset[str] = frozenset()
    ) -> dict[str, Any]:
        messages, system = _wire_anthropic.messages_and_system(
            normalize(request.messages), request.system
        )
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": request.max_tokens,
            "stream": True,
            "timeout": self.sdk_timeout(timeouts),
        }
        if system is not None:
            kwargs["system"] = system
        if request.tools:
            kwargs["tools"] = _wire_anthropic.tools(request.tools)
        return self.apply_options(kwargs, request)

    def resource(self, client: Any) -> Any:
        return client.messages

    def wire_events(self, stream: Any) -> Iterator[Any]:
        return anthropic_events(stream)

    def wire_events_async(self, stream: Any) -> AsyncIterator[Any]:
        return anthropic_events_async(stream)

    def new_translator(self, stream: Any) -> Callable[[], StreamTranslator]:
        return _Translator

    def classify_sdk_error(self, exc: BaseException) -> Fault:
        return classify(exc)


# Every exception class anthropic exports (0.x and 2.x), and how it is handled; see
# providers/_sdk/classify.py for the categories. tests/test_classification.py fails when the
# installed SDK exports a class that is not listed here.
EXCEPTION_TABLE: Final[Mapping[str, str]] = {
    "AnthropicError": "sdk_error",
    "APIError": "stream_error",
    "APIStatusError": "by_status",
    "APIConnectionError": "connection",
    "APITimeoutError": "connection",
    "APIResponseValidationError": "malformed",
    "APIWebhookValidationError": "not_streaming",
    "RetryableError": "connection",
    "CredentialsError": "account",
    "IdentityTokenFileError": "account",
    "WorkloadIdentityError": "account",
    "BadRequestError": "by_status",
    "AuthenticationError": "by_status",
    "PermissionDeniedError": "by_status",
    "NotFoundError": "by_status",
    "ConflictError": "by_status",
    "UnprocessableEntityError": "by_status",
    "RateLimitError": "by_status",
    "RampLimitExceededError": "by_status",
    "InternalServerError": "by_status",
    "OverloadedError": "by_status",
    "ServiceUnavailableError": "by_status",
    # anthropic 2.16: a 503 subclass for a workspace still connecting to its storage.
    "StorageNotReadyError": "by_status",
    "GatewayTimeoutError": "by_status",
    "DeadlineExceededError": "by_status",
    "RequestTimeoutError": "by_status",
    "RequestTooLargeError": "by_status",
    "ContentTooLargeError": "by_status",
    "RequestBodyTooLargeAfterDecodingError": "by_status",
    "RequestBodyEncodingInvalidError": "by_status",
    "RequestBodyEncodingUnsupportedError": "by_status",
    "PreconditionFailedError": "by_status",
    "CMEKContextUnavailableError": "by_status",
    "CMEKKeyUnreachableError": "by_status",
    "ClientClosedRequestError": "connection",
    "RequestHeaderFieldsTooLargeError": "request",
    "ClaudeCodeVersionTooOldError": "request",
    "HTTPNotImplementedError": "account",
    "PaymentRequiredError": "account",
    "LinkedOrganizationBillingUnavailableError": "account",
    "LinkedOrganizationSpendLimitReachedError": "account",
    "ContractSpendLimitReachedError": "account",
    "EnforcedSpendLimitReachedError": "account",
    "OrganizationOnHoldError": "account",
    "OrganizationTypeNotSupportedError": "account",
    "ParentOrganizationRequiredError": "account",
    "WorkspaceHumanReviewDisabledError": "account",
    "ClaudeCodeKeyCreatorNotMemberError": "account",
    "CMEKKeyDisabledError": "account",
    "CMEKKeyNetworkBlockedError": "account",
    "SandboxEgressRestrictedError": "account",
    # anthropic 2.17: a 400 subclass, URL sources and web fetch turned off for the
    # organization: this route cannot serve the request, another provider may.
    "OrganizationURLFetchDisabledError": "account",
}


def classify(exc: BaseException) -> Fault:
    """Every exception the anthropic SDK (or its transport) can raise, mapped on purpose."""
    return classify_with_table(
        exc,
        api_mode=AnthropicMessages.api_mode,
        sdk_module="anthropic",
        table=EXCEPTION_TABLE,
        request_id_header="request-id",
    )


# Anthropic's stop reasons in the neutral vocabulary (lifecycle.STOP_REASONS).
STOP_REASON_MAP: Final[Mapping[str, str]] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
    "pause_turn": "pause",
}

# Usage fields Anthropic reports, cumulative on message_delta (newer API versions repeat
# the input counts there; older ones send them on message_start only).
_USAGE_FIELDS: Final = (
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
)


class _Translator(StreamTranslator):
    """Folds Anthropic's raw events into neutral ones; state is the stop reason, usage and
    the thinking blocks being streamed."""

    __slots__ = (
        "artifacts",
        "response_id",
        "response_model",
        "stop_reason",
        "thinking_tokens",
        "tool_use_seen",
        "unknown_events",
        "usage",
    )

    KNOWN: ClassVar[frozenset[str]] = frozenset(
        {"content_block_stop", "ping", "message_start", "message_delta", "message_stop"}
    )

    def __init__(self) -> None:
        self.unknown_events = 0
        self.stop_reason: str | None = None
        self.usage: dict[str, int] = {}
        self.thinking_tokens: int | None = None
        self.tool_use_seen = False
        self.response_id: str | None = None
        self.response_model: str | None = None
        # Content block index -> the artifact's wire fields, growing with its deltas.
        self.artifacts: dict[int, dict[str, Any]] = {}

    def translate(self, event: Any) -> StreamEvent | None:
        # ``event`` is the event's JSON (``sse_json.anthropic_events``): a field the wire
        # lacks raises KeyError where the SDK's model raised AttributeError, both shape
        # errors (a malformed stream).
        kind = event["type"]
        if kind == "content_block_delta":
            delta = event["delta"]
            delta_kind = delta["type"]
            if delta_kind == "text_delta":
                return StreamEvent(type="text", text=delta["text"])
            if delta_kind == "input_json_delta":
                return StreamEvent(
                    type="tool_call",
                    tool_call=ToolCallDelta(
                        index=event["index"], arguments_delta=delta["partial_json"]
                    ),
                )
            if delta_kind == "thinking_delta":
                text = delta["thinking"]
                block = self.artifacts.get(event["index"])
                if block is not None and block["type"] == "thinking":
                    block["thinking"] += text
                return StreamEvent(type="thinking", text=text)
            if delta_kind == "signature_delta":
                block = self.artifacts.get(event["index"])
                if block is not None and block["type"] == "thinking":
                    block["signature"] += _text(delta["signature"], "signature")
            return None
        if kind == "content_block_start":
            block = event["content_block"]
            block_kind = block["type"]
            if block_kind == "tool_use":
                self.tool_use_seen = True
                return StreamEvent(
                    type="tool_call",
                    tool_call=ToolCallDelta(
                        index=event["index"], id=block["id"], name=block["name"]
                    ),
                )
            if block_kind == "thinking":
                self.artifacts[event["index"]] = {
                    "type": "thinking",
                    "thinking": _text(block.get("thinking") or "", "thinking"),
                    "signature": _text(block.get("signature") or "", "signature"),
                }
            elif block_kind == "redacted_thinking":
                self.artifacts[event["index"]] = {
                    "type": "redacted_thinking",
                    "data": _text(block.get("data"), "data"),
                }
            return None
        if kind == "message_delta":
            self.stop_reason = event["delta"].get("stop_reason") or self.stop_reason
            self._count(event.get("usage"))
            thinking = int_field(event, "usage", "output_tokens_details", "thinking_tokens")
            if thinking is not None:
                self.thinking_tokens = thinking
            return None
        if kind == "message_start":
            message = event["message"]
            self.response_id = message.get("id")
            self.response_model = message.get("model")
            self._count(message.get("usage"))
            return None
        if kind == "message_stop":
            provider_reason = self.stop_reason or "end_turn"
            return StreamEvent(
                type="stop",
                stop_reason=STOP_REASON_MAP.get(
                    provider_reason, "tool_calls" if self.tool_use_seen else "stop"
                ),
                provider_stop_reason=provider_reason,
                usage=self._usage(),
                provider_artifacts=tuple(
                    ProviderArtifact(api_mode=AnthropicMessages.api_mode, item=item)
                    for _, item in sorted(self.artifacts.items())
                ),
            )
        if kind not in self.KNOWN:
            self.unknown_events += 1  # ignored, and counted in the attempt's diagnostics
        return None

    def _count(self, usage: Any) -> None:
        for name in _USAGE_FIELDS:
            value = int_field(usage, name)
            if value is not None:
                self.usage[name] = value

    def _usage(self) -> Usage:
        usage = self.usage
        uncached = usage.get("input_tokens")
        cache_read = usage.get("cache_read_input_tokens")
        cache_write = usage.get("cache_creation_input_tokens")
        # Anthropic's input_tokens is the uncached part only; every route counts all input.
        total_input = (
            None if uncached is None else uncached + (cache_read or 0) + (cache_write or 0)
        )
        return Usage(
            input_tokens=total_input,
            output_tokens=usage.get("output_tokens"),
            cache_read_tokens=cache_read,
            cache_write_tokens=cache_write,
            reasoning_tokens=self.thinking_tokens,
        )


def _text(value: Any, name: str) -> str:
    # Wire data decides this; a TypeError is turned into a malformed stream by the caller.
    if not isinstance(value, str):
        raise TypeError(f"{name} must be text, got {value!r}")
    return value
