"""``OpenAIChatCompletions``: ``chat.completions.create(stream=True)`` through the ``openai``
SDK, for OpenAI and OpenAI-compatible servers (``base_url`` in the client factory).

Chunks and what they become (only meaningful events reach the engine):

| chunk content                                  | neutral event               |
| ---------------------------------------------- | --------------------------- |
| choices[0].delta.content / .refusal             | ``text``                    |
| choices[0].delta.reasoning_content (compatible) | ``thinking``                |
| choices[0].delta.tool_calls[i]                  | ``tool_call``               |
| choices[0].finish_reason, then the usage chunk  | ``stop`` (with usage)       |
| (or the end of the stream if no usage comes)    |                             |
| role-only delta, SSE comments                   | nothing: bytes, not progress|

Only choice 0 is followed (``n > 1`` is not a streaming use the engine serves). The
translator reads each chunk's JSON, not the SDK's model of it (``_sdk/sse_json.py``:
building the models is most of what iterating the SDK's stream costs). An error object
inside a 200 stream is raised as the SDK's own ``APIError`` with its body and is
classified by its type/code like the HTTP status it stands for.

The usage chunk (``include_usage``) is the answer's last: the stop is yielded there, so
a body that is held open after it, with or without ``[DONE]``, is not waited for.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import replace
from typing import Any, ClassVar, Final

import openai
import openai.resources.chat.completions
from openai._models import FinalRequestOptions

from lifecycle import Fault, StreamEvent, Timeouts, ToolCallDelta, Usage
from lifecycle.adapters import Request

from . import _wire_chat
from ._fields import int_field
from ._history import normalize
from ._sdk.classify import ProviderErrorEvent, classify_with_table
from ._sdk.route import SdkRoute
from ._sdk.sse_json import openai_chunks, openai_chunks_async
from ._sdk.stream import StreamTranslator

__all__ = ["OpenAIChatCompletions"]


OPENAI_CREDENTIALS_HINT: Final = (
    "no API key: set OPENAI_API_KEY in the environment or pass api_key= to the client "
    "in the route's factory"
)


WITHOUT_STREAM_OPTIONS: Final = "without_stream_options"
"""Learned once a server refused ``stream_options`` (some OpenAI-compatible servers do):
the engine's later requests on this route omit it, so usage may then be missing."""


class OpenAIChatCompletions(SdkRoute):
    """A route to a Chat Completions endpoint: ``OpenAIChatCompletions(factory, model=...)``.

    ``factory`` builds an ``openai.OpenAI`` (for ``engine.stream``) or an
    ``openai.AsyncOpenAI`` (for ``engine.astream``), lazily, on the run's own thread.
    """

    api_mode: ClassVar[str] = "chat_completions"
    cleanup_description: ClassVar[tuple[str, ...]] = (
        "shutdown(SHUT_RDWR) of the attempt's socket",
        "close the openai.OpenAI client",
        "rebuild openai.OpenAI from the factory",
    )

    sync_client_class: ClassVar[type] = openai.OpenAI
    async_client_class: ClassVar[type] = openai.AsyncOpenAI
    timeout_class: ClassVar[type] = openai.Timeout
    request_options_class: ClassVar[type] = FinalRequestOptions
    credentials_env: ClassVar[str] = "OPENAI_API_KEY"
    credentials_hint: ClassVar[str] = OPENAI_CREDENTIALS_HINT

    create_method: ClassVar[Callable[..., Any]] = (
        openai.resources.chat.completions.Completions.create
    )
    wire_options = staticmethod(_wire_chat.options)

    def request_kwargs(
        self, request: Request, timeouts: Timeouts, *, learned: frozenset[str] = frozenset()
    ) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": _wire_chat.messages(normalize(request.messages), request.system),
            "max_tokens": request.max_tokens,
            "stream": True,
            "timeout": self.sdk_timeout(timeouts),
        }
        if WITHOUT_STREAM_OPTIONS not in learned:
            kwargs["stream_options"] = {"include_usage": True}
        if request.tools:
            kwargs["tools"] = _wire_chat.tools(request.tools)
        return self.apply_options(kwargs, request)

    def resource(self, client: Any) -> Any:
        return client.chat.completions

    def new_translator(self, stream: Any) -> Callable[[], StreamTranslator]:
        return _Translator

    def wire_events(self, stream: Any) -> Iterator[Any]:
        return openai_chunks(stream)

    def wire_events_async(self, stream: Any) -> AsyncIterator[Any]:
        return openai_chunks_async(stream)

    def classify_sdk_error(self, exc: BaseException) -> Fault:
        return classify(exc)

    def classify(self, exc: BaseException, *, learned: frozenset[str] = frozenset()) -> Fault:
        fault = super().classify(exc, learned=learned)
        if (
            fault.http_status in (400, 422)
            and WITHOUT_STREAM_OPTIONS not in learned
            and "stream_options" in fault.reason
        ):
            # Not the caller's request that is wrong: this server lacks an option the
            # adapter added. The engine remembers it for the route; retry once without.
            return replace(
                fault,
                retryable=True,
                learned=WITHOUT_STREAM_OPTIONS,
                reason=f"{fault.reason} (retrying without stream_options)",
            )
        return fault


# Every exception class openai exports (2.x and 3.x), and how it is handled; see
# providers/_sdk/classify.py for the categories. tests/test_classification.py fails when the
# installed SDK exports a class that is not listed here.
EXCEPTION_TABLE: Final[Mapping[str, str]] = {
    "OpenAIError": "sdk_error",
    "APIError": "stream_error",
    "APIStatusError": "by_status",
    "APIConnectionError": "connection",
    "APITimeoutError": "connection",
    "APIResponseValidationError": "malformed",
    "BadRequestError": "by_status",
    "AuthenticationError": "by_status",
    "PermissionDeniedError": "by_status",
    "NotFoundError": "by_status",
    "ConflictError": "by_status",
    "UnprocessableEntityError": "by_status",
    "RateLimitError": "by_status",
    "InternalServerError": "by_status",
    "OAuthError": "account",
    "ContentFilterFinishReasonError": "request",
    "LengthFinishReasonError": "not_streaming",
    "InvalidWebhookSignatureError": "not_streaming",
    "WebSocketConnectionClosedError": "not_streaming",
    "WebSocketQueueFullError": "not_streaming",
    "_AmbiguousModuleClientUsageError": "not_streaming",
}


def classify(exc: BaseException) -> Fault:
    """Every exception the openai SDK (or its transport) can raise, mapped on purpose."""
    return classify_with_table(
        exc,
        api_mode=OpenAIChatCompletions.api_mode,
        sdk_module="openai",
        table=EXCEPTION_TABLE,
        request_id_header="x-request-id",
    )


# Chat Completions' finish reasons in the neutral vocabulary (lifecycle.STOP_REASONS);
# function_call is the deprecated single-function form of tool_calls.
FINISH_REASON_MAP: Final[Mapping[str, str]] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
}


class _Translator(StreamTranslator):
    __slots__ = ("finish_reason", "response_id", "response_model", "tool_call_seen", "usage")

    marks_last: ClassVar[bool] = True

    def __init__(self) -> None:
        self.finish_reason: str | None = None
        self.tool_call_seen = False
        self.usage: Usage | None = None
        self.response_id: str | None = None
        self.response_model: str | None = None

    def translate(self, chunk: Any) -> StreamEvent | list[StreamEvent] | None:
        # ``chunk`` is the chunk's JSON (``sse_json.openai_chunks``): a field the wire
        # lacks raises KeyError where the SDK's model raised AttributeError, both shape
        # errors (a malformed stream).
        if self.response_id is None:  # every chunk repeats them: the first one's suffice
            self.response_id = chunk.get("id")
            self.response_model = chunk.get("model")
        usage = chunk.get("usage")
        if usage is not None:
            # prompt_tokens already counts the cached part. cache_write_tokens is not
            # OpenAI's: some OpenAI-compatible gateways report it there.
            self.usage = Usage(
                input_tokens=int_field(usage, "prompt_tokens"),
                output_tokens=int_field(usage, "completion_tokens"),
                cache_read_tokens=int_field(usage, "prompt_tokens_details", "cached_tokens"),
                cache_write_tokens=int_field(usage, "prompt_tokens_details", "cache_write_tokens"),
                reasoning_tokens=int_field(usage, "completion_tokens_details", "reasoning_tokens"),
            )
        events: list[StreamEvent] = []
        for choice in chunk["choices"]:
            if choice["index"] != 0:
                continue
            delta = choice["delta"]
            if delta is not None:
                content = delta.get("content")
                if content:
                    events.append(StreamEvent(type="text", text=content))
                refusal = delta.get("refusal")
                if refusal:
                    events.append(StreamEvent(type="text", text=refusal))
                # Not OpenAI's: OpenAI-compatible servers stream reasoning in either.
                reasoning = delta.get("reasoning_content") or delta.get("reasoning")
                if isinstance(reasoning, str) and reasoning:
                    events.append(StreamEvent(type="thinking", text=reasoning))
                tool_calls = delta.get("tool_calls")
                if tool_calls:
                    self.tool_call_seen = True
                    for call in tool_calls:
                        function = call.get("function")
                        events.append(
                            StreamEvent(
                                type="tool_call",
                                tool_call=ToolCallDelta(
                                    index=call["index"],
                                    id=call.get("id"),
                                    name=function.get("name") if function is not None else None,
                                    arguments_delta=(function.get("arguments") or "")
                                    if function is not None
                                    else "",
                                ),
                            )
                        )
            finish_reason = choice.get("finish_reason")
            if finish_reason:
                if finish_reason == "error":
                    # Some OpenAI-compatible servers end a failed generation this way.
                    raise ProviderErrorEvent("finish_reason 'error' in the stream", status=500)
                self.finish_reason = finish_reason
        if not events:
            return None
        # Most chunks carry one piece of text: the event itself spares the stream a list.
        return events[0] if len(events) == 1 else events

    def is_last(self, chunk: Any) -> bool:
        """The usage chunk ``include_usage`` asks for comes after every choice finished:
        the answer's last chunk, whether or not the server sends ``[DONE]`` after it. It
        has no choices, so it translates to nothing (the stream asks only then)."""
        return (
            self.finish_reason is not None
            and chunk.get("usage") is not None
            and not chunk.get("choices")
        )

    def finish(self) -> StreamEvent | None:
        reason = self.finish_reason
        if reason is None:
            return None
        return StreamEvent(
            type="stop",
            # An OpenAI-compatible server's own word (e.g. "eos") means it simply stopped.
            stop_reason=FINISH_REASON_MAP.get(
                reason, "tool_calls" if self.tool_call_seen else "stop"
            ),
            provider_stop_reason=reason,
            usage=self.usage,
        )
