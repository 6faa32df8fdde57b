"""``OpenAIResponses``: the OpenAI Responses API, ``responses.create(stream=True)`` through
the ``openai`` SDK.

Events and what they become (only meaningful events reach the engine):

| SDK event                                        | neutral event                |
| ------------------------------------------------ | ---------------------------- |
| response.output_text.delta, response.refusal.delta | ``text``                   |
| response.reasoning_summary_text.delta, reasoning_text.delta | ``thinking``       |
| response.output_item.added (function_call)        | ``tool_call`` (id, name)    |
| response.function_call_arguments.delta            | ``tool_call`` (arguments)   |
| response.completed / response.incomplete          | ``stop`` (reason, usage)    |
| response.output_item.done (reasoning)             | an artifact on the ``stop`` |
| response.failed, error                            | raised: classified by code  |
| created, in_progress, *.added / *.done bookkeeping| nothing: bytes, not progress |

The tool-call index is the item's ``output_index``; the id given to the caller is the
``call_id`` the API expects back with the function's output. Reasoning items (their id,
summary and ``encrypted_content``) are kept as provider artifacts, as the completed item
delivered them, for the next turn on a Responses route.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Final

import openai
import openai.resources.responses
from openai._models import FinalRequestOptions

from lifecycle import Fault, ProviderArtifact, StreamEvent, Timeouts, ToolCallDelta, Usage
from lifecycle.adapters import Request

from . import _wire_responses
from ._fields import int_field, wire_dict
from ._history import normalize
from ._sdk.classify import classify_with_table
from ._sdk.route import SdkRoute
from ._sdk.stream import StreamTranslator
from .openai_chat_completions import EXCEPTION_TABLE, OPENAI_CREDENTIALS_HINT

__all__ = ["EXCEPTION_TABLE", "OpenAIResponses", "classify"]


class OpenAIResponses(SdkRoute):
    """A route to the Responses API: ``OpenAIResponses(factory, model=...)``."""

    api_mode: ClassVar[str] = "responses"
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

    create_method: ClassVar[Callable[..., Any]] = openai.resources.responses.Responses.create
    wire_options = staticmethod(_wire_responses.options)

    def request_kwargs(
        self, request: Request, timeouts: Timeouts, *, learned: frozenset[str] = frozenset()
    ) -> dict[str, Any]:
        items, instructions = _wire_responses.input_and_instructions(
            normalize(request.messages), request.system
        )
        kwargs: dict[str, Any] = {
            "model": self.model,
            "input": items,
            "max_output_tokens": request.max_tokens,
            "stream": True,
            "timeout": self.sdk_timeout(timeouts),
        }
        if instructions is not None:
            kwargs["instructions"] = instructions
        if request.tools:
            kwargs["tools"] = _wire_responses.tools(request.tools)
        return self.apply_options(kwargs, request)

    def resource(self, client: Any) -> Any:
        return client.responses

    def new_translator(self, stream: Any) -> Callable[[], StreamTranslator]:
        return lambda: _Translator(stream.response.request)

    def classify_sdk_error(self, exc: BaseException) -> Fault:
        return classify(exc)


def classify(exc: BaseException) -> Fault:
    """The openai SDK's exceptions, by the same table as Chat Completions (one SDK)."""
    return classify_with_table(
        exc,
        api_mode=OpenAIResponses.api_mode,
        sdk_module="openai",
        table=EXCEPTION_TABLE,
        request_id_header="x-request-id",
    )


# incomplete_details.reason in the neutral vocabulary (lifecycle.STOP_REASONS).
INCOMPLETE_REASON_MAP: Final[Mapping[str, str]] = {
    "max_output_tokens": "length",
    "content_filter": "content_filter",
}

# The keys the Responses input schema accepts for a reasoning item (ReasoningItem in the
# OpenAPI document); anything else the output carries would be a 400 on the next turn.
REASONING_INPUT_KEYS: Final = frozenset(
    {"type", "id", "summary", "content", "encrypted_content", "status"}
)


class _Translator(StreamTranslator):
    __slots__ = ("artifacts", "calls", "request", "response_id", "response_model")

    def __init__(self, request: Any) -> None:
        self.calls: set[int] = set()
        # output_index -> the reasoning item, so the artifacts keep the output's order.
        self.artifacts: dict[int, dict[str, Any]] = {}
        self.request = request
        self.response_id: str | None = None
        self.response_model: str | None = None

    def translate(self, event: Any) -> StreamEvent | None:
        kind = event.type
        if kind == "response.created":
            response = event.response
            self.response_id = getattr(response, "id", None)
            self.response_model = getattr(response, "model", None)
            return None
        if kind == "response.output_text.delta" or kind == "response.refusal.delta":
            return StreamEvent(type="text", text=event.delta)
        if kind == "response.function_call_arguments.delta":
            return StreamEvent(
                type="tool_call",
                tool_call=ToolCallDelta(index=event.output_index, arguments_delta=event.delta),
            )
        if kind in ("response.reasoning_summary_text.delta", "response.reasoning_text.delta"):
            return StreamEvent(type="thinking", text=event.delta)
        if kind == "response.output_item.added":
            item = event.item
            if getattr(item, "type", None) == "function_call":
                self.calls.add(event.output_index)
                return StreamEvent(
                    type="tool_call",
                    tool_call=ToolCallDelta(
                        index=event.output_index,
                        id=getattr(item, "call_id", None) or getattr(item, "id", None),
                        name=item.name,
                        arguments_delta=getattr(item, "arguments", "") or "",
                    ),
                )
            return None
        if kind == "response.output_item.done":
            item = event.item
            if getattr(item, "type", None) == "reasoning":
                # The done item, not the added one: only its encrypted_content is whole.
                self.artifacts[event.output_index] = {
                    key: value
                    for key, value in wire_dict(item).items()
                    if key in REASONING_INPUT_KEYS
                }
            return None
        if kind == "response.completed":
            return self._stop(event.response, "tool_calls" if self.calls else "stop", "completed")
        if kind == "response.incomplete":
            details = getattr(event.response, "incomplete_details", None)
            reason = getattr(details, "reason", None) or "incomplete"
            return self._stop(
                event.response,
                INCOMPLETE_REASON_MAP.get(reason, "tool_calls" if self.calls else "stop"),
                reason,
            )
        if kind in ("response.failed", "error"):
            error = getattr(getattr(event, "response", None), "error", None) or event
            code = getattr(error, "code", None) or "server_error"
            message = getattr(error, "message", None) or kind
            # Classified like the HTTP status its code stands for (see _classify).
            raise openai.APIError(
                str(message), self.request, body={"code": code, "message": message}
            )
        return None

    def _stop(self, response: Any, reason: str, provider_reason: str) -> StreamEvent:
        usage = getattr(response, "usage", None)
        return StreamEvent(
            type="stop",
            stop_reason=reason,
            provider_stop_reason=provider_reason,
            usage=Usage(
                input_tokens=int_field(usage, "input_tokens"),
                output_tokens=int_field(usage, "output_tokens"),
                cache_read_tokens=int_field(usage, "input_tokens_details", "cached_tokens"),
                cache_write_tokens=int_field(usage, "input_tokens_details", "cache_write_tokens"),
                reasoning_tokens=int_field(usage, "output_tokens_details", "reasoning_tokens"),
            ),
            provider_artifacts=tuple(
                ProviderArtifact(api_mode=OpenAIResponses.api_mode, item=item)
                for _, item in sorted(self.artifacts.items())
            ),
        )
