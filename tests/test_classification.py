"""Every exception class each SDK exports, every HTTP status class and every transport
failure is classified on purpose, per adapter, on whichever SDK major is installed."""

from __future__ import annotations

import importlib
import inspect
import json
from typing import Any

import anthropic
import openai
import pytest

from providers import anthropic_messages, openai_chat_completions, openai_responses
from providers._sdk.classify import CATEGORIES

ADAPTERS = [
    pytest.param(anthropic, anthropic_messages, id="anthropic"),
    pytest.param(openai, openai_chat_completions, id="openai"),
    pytest.param(openai, openai_responses, id="openai-responses"),
]

# status -> (retryable, fallback_eligible): the table in the README.
STATUS_TABLE = {
    400: (False, False),
    401: (False, True),
    403: (False, True),
    404: (False, True),
    408: (True, True),
    409: (True, True),
    413: (False, False),
    422: (False, False),
    429: (True, True),
    500: (True, True),
    502: (True, True),
    503: (True, True),
    504: (True, True),
    529: (True, True),
}


def _exported_exceptions(sdk: Any) -> set[str]:
    return {
        name
        for name in dir(sdk)
        if inspect.isclass(getattr(sdk, name)) and issubclass(getattr(sdk, name), BaseException)
    }


def _httpx(sdk: Any) -> Any:
    """The HTTP library this SDK major runs on (httpx2 or httpx), from its client's MRO."""
    client_class = sdk.Anthropic if sdk is anthropic else sdk.OpenAI
    client = client_class(api_key="k", base_url="http://127.0.0.1:9")
    try:
        for cls in type(client._client).__mro__:
            root = cls.__module__.split(".")[0]
            if root in ("httpx", "httpx2"):
                return importlib.import_module(root)
    finally:
        client.close()
    raise AssertionError("no httpx in the SDK client's MRO")


@pytest.mark.parametrize(("sdk", "adapter"), ADAPTERS)
def test_every_exported_exception_class_is_classified_on_purpose(sdk: Any, adapter: Any) -> None:
    exported = _exported_exceptions(sdk)
    missing = sorted(exported - set(adapter.EXCEPTION_TABLE))
    assert not missing, f"{sdk.__name__} {sdk.__version__} exports unclassified: {missing}"
    assert set(adapter.EXCEPTION_TABLE.values()) <= CATEGORIES


def _status_error(sdk: Any, status: int, headers: dict[str, str] | None = None) -> Any:
    httpx = _httpx(sdk)
    request = httpx.Request("POST", "http://127.0.0.1:9/v1/x")
    body = {"error": {"type": "some_error", "message": f"status {status}"}}
    response = httpx.Response(status, request=request, headers=headers or {}, json=body)
    client = (
        sdk.Anthropic(api_key="k", base_url="http://127.0.0.1:9")
        if sdk is anthropic
        else sdk.OpenAI(api_key="k", base_url="http://127.0.0.1:9")
    )
    try:
        return client._make_status_error(f"status {status}", body=body, response=response)
    finally:
        client.close()


@pytest.mark.parametrize(("sdk", "adapter"), ADAPTERS)
@pytest.mark.parametrize("status", sorted(STATUS_TABLE))
def test_every_status_class_is_classified_as_the_table_says(
    sdk: Any, adapter: Any, status: int
) -> None:
    fault = adapter.classify(_status_error(sdk, status, {"retry-after": "2"}))
    assert (fault.retryable, fault.fallback_eligible) == STATUS_TABLE[status], fault
    assert fault.http_status == status
    assert fault.retry_after == 2.0
    assert fault.outcome == "error"


@pytest.mark.parametrize(("sdk", "adapter"), ADAPTERS)
def test_transport_failures_are_retryable_drops(sdk: Any, adapter: Any) -> None:
    httpx = _httpx(sdk)
    request = httpx.Request("POST", "http://127.0.0.1:9/v1/x")
    failures = [
        httpx.ConnectError("[Errno 111] Connection refused", request=request),
        httpx.ConnectTimeout("timed out", request=request),
        httpx.ReadTimeout("timed out", request=request),
        httpx.ReadError("[Errno 104] Connection reset by peer", request=request),
        httpx.ConnectError("[SSL: CERTIFICATE_VERIFY_FAILED]", request=request),
        httpx.RemoteProtocolError(
            "peer closed connection without sending complete message body "
            "(incomplete chunked read)",
            request=request,
        ),
        sdk.APIConnectionError(request=request),
        sdk.APITimeoutError(request=request),
    ]
    for exc in failures:
        fault = adapter.classify(exc)
        assert fault.outcome == "dropped" and fault.retryable, (exc, fault)


@pytest.mark.parametrize(("sdk", "adapter"), ADAPTERS)
def test_malformed_stream_is_a_retryable_drop(sdk: Any, adapter: Any) -> None:
    try:
        json.loads('{"type": "content_block_delta", "delta": {')
    except json.JSONDecodeError as exc:
        fault = adapter.classify(exc)
    assert fault.outcome == "dropped" and fault.retryable and "malformed" in fault.reason


def test_an_overloaded_error_event_inside_a_200_stream_counts_as_529() -> None:
    fault = anthropic_messages.classify(_error_event(anthropic, "overloaded_error"))
    assert fault.http_status == 529 and fault.retryable


def test_an_openai_compatible_error_chunk_is_classified_by_its_code() -> None:
    fault = openai_chat_completions.classify(_error_event(openai, "rate_limit_error"))
    assert fault.http_status == 429 and fault.retryable
    fault = openai_chat_completions.classify(_error_event(openai, "invalid_request_error"))
    assert fault.http_status == 400 and not fault.retryable and not fault.fallback_eligible


def _error_event(sdk: Any, kind: str) -> Any:
    httpx = _httpx(sdk)
    request = httpx.Request("POST", "http://127.0.0.1:9/v1/x")
    body = {"type": "error", "error": {"type": kind, "message": kind}}
    if sdk is anthropic:
        response = httpx.Response(200, request=request, json=body)
        return sdk.APIStatusError(kind, response=response, body=body)
    return sdk.APIError(kind, request, body=body["error"])


@pytest.mark.parametrize(("sdk", "adapter"), ADAPTERS)
def test_an_exception_from_outside_the_sdk_is_not_retried(sdk: Any, adapter: Any) -> None:
    fault = adapter.classify(KeyError("bug in a caller's hook"))
    assert not fault.retryable and not fault.fallback_eligible
    assert "unexpected KeyError" in fault.reason
