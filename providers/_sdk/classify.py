"""Fault classification shared by the adapters: HTTP statuses, Retry-After, transports.

Each adapter maps its own SDK's exception classes (``anthropic_messages.classify``,
``openai_chat_completions.classify``) and calls these for what all wire APIs share.

| status                      | retryable | other route may work | why                          |
| --------------------------- | --------- | -------------------- | ---------------------------- |
| 400, 413, 422               | no        | no                   | the request itself is wrong  |
| 401, 403                    | no        | yes                  | this provider's credentials  |
| 404                         | no        | yes                  | this provider's model name   |
| 402, other 4xx              | no        | yes                  | this provider's account      |
| 408, 409, 429               | yes       | yes                  | transient on this provider   |
| 500-599, 529 (overloaded)   | yes       | yes                  | transient on this provider   |
"""

from __future__ import annotations

import email.utils
import errno
import functools
import json
import math
import time
import urllib.parse
from collections.abc import Mapping
from typing import Any

from lifecycle import Fault
from lifecycle.adapters import exception_chain, header_subset, redact

from .credentials import CrossOriginRedirect

__all__ = [
    "REQUEST_ERRORS",
    "RETRYABLE_STATUSES",
    "ROUTE_ERRORS",
    "SchemaViolation",
    "malformed_fault",
    "parse_retry_after",
    "redirect_fault",
    "status_fault",
    "transport_fault",
]

REQUEST_ERRORS = frozenset({400, 413, 422})
ROUTE_ERRORS = frozenset({401, 403, 404})
RETRYABLE_STATUSES = frozenset({408, 409, 429})

# Error "types" that providers send inside a 200 stream, and the status each stands for.
ERROR_TYPE_STATUS: Mapping[str, int] = {
    "overloaded_error": 529,
    "rate_limit_error": 429,
    "api_error": 500,
    "server_error": 500,
    "timeout_error": 504,
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
}


class SchemaViolation(ValueError):
    """An event parsed as JSON but does not have the shape its wire API documents (a
    chunk without ``choices``, a delta without its text): a malformed stream."""


class ProviderErrorEvent(Exception):
    """An error reported inside a 200 stream in a shape the SDK does not raise for (an
    OpenAI-compatible ``finish_reason: "error"``): classified like ``status``."""

    def __init__(self, message: str, *, status: int = 500, error_type: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type


def parse_retry_after(
    headers: Mapping[str, str] | None, *, now: float | None = None
) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``retry-after`` (seconds or HTTP date)."""
    if not headers:
        return None
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            value = float(raw_ms) / 1000.0
        except ValueError:
            value = -1.0
        if 0 <= value < math.inf:
            return value
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        try:
            parsed = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError, OverflowError):
            # ``soon``, ``120s``, a broken date: no usable header, as if none was sent.
            return None
        # A date already past means "now".
        return max(0.0, parsed.timestamp() - (now if now is not None else time.time()))
    # A negative or non-finite delay says nothing either (``nan`` would compare false).
    return value if 0 <= value < math.inf else None


def status_fault(
    status: int,
    *,
    api_mode: str,
    message: str,
    headers: Mapping[str, str] | None = None,
    request_id: str | None = None,
    error_type: str | None = None,
) -> Fault:
    retry_after = parse_retry_after(headers)
    if status in REQUEST_ERRORS:
        retryable, fallback = False, False
    elif status in ROUTE_ERRORS:
        retryable, fallback = False, True
    elif status in RETRYABLE_STATUSES or status >= 500:
        retryable, fallback = True, True
    elif 400 <= status < 500:
        retryable, fallback = False, True
    else:  # an error object in a 2xx/3xx stream without a known type: treat as server-side
        retryable, fallback = True, True
    return Fault(
        outcome="error",
        retryable=retryable,
        fallback_eligible=fallback,
        reason=redact(f"HTTP {status}: {message}")[:300],
        http_status=status,
        retry_after=retry_after,
        request_id=redact(request_id)[:200] if request_id else None,
        error_type=error_type,
        api_mode=api_mode,
        headers=header_subset(headers) if headers else None,
    )


def redirect_fault(redirect: CrossOriginRedirect, *, api_mode: str) -> Fault:
    """A redirect to another origin, refused: this route's endpoint sends its requests
    elsewhere, every attempt would be sent there again, another route may work."""
    return Fault(
        outcome="error",
        retryable=False,
        fallback_eligible=True,
        reason=redact(str(redirect))[:300],
        http_status=redirect.status,
        error_type=CrossOriginRedirect.__name__,
        api_mode=api_mode,
    )


def _is_refused(exc: BaseException) -> bool:
    # The SDKs say only "Connection error."; the refusal is a few causes down, and
    # httpx keeps only its text when it maps the OS error.
    return any(
        isinstance(link, ConnectionRefusedError)
        or (isinstance(link, OSError) and link.errno == errno.ECONNREFUSED)
        or "connection refused" in str(link).lower()
        for link in exception_chain(exc)
    )


def _request_target(exc: BaseException) -> str | None:
    """``POST scheme://host:port/path`` of the request that failed: no query, no userinfo
    (either may carry a secret)."""
    for link in exception_chain(exc):
        try:
            request = getattr(link, "request", None)  # httpx raises when it was never set
        except RuntimeError:
            continue
        url = getattr(request, "url", None)
        if url is None:
            continue
        parts = urllib.parse.urlsplit(str(url))
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port is not None else ""
        method = getattr(request, "method", "")
        return f"{method} {parts.scheme}://{host}{port}{parts.path}".strip()
    return None


def transport_fault(exc: BaseException, *, api_mode: str) -> Fault:
    if _is_refused(exc):
        target = _request_target(exc)
        reason = f"connection refused{f': {target}' if target else ''} ({type(exc).__name__})"
    else:
        reason = f"connection lost: {type(exc).__name__}: {str(exc)[:200]}"
    return Fault(
        outcome="dropped",
        retryable=True,
        fallback_eligible=True,
        reason=reason,
        error_type=type(exc).__name__,
        api_mode=api_mode,
    )


def malformed_fault(exc: BaseException, *, api_mode: str) -> Fault:
    return Fault(
        outcome="dropped",
        retryable=True,
        fallback_eligible=True,
        reason=f"malformed stream: {type(exc).__name__}: {str(exc)[:200]}",
        error_type=type(exc).__name__,
        api_mode=api_mode,
    )


def error_body_type(body: Any) -> tuple[str | None, str]:
    """(error type, message) from a provider's JSON error body, whatever its shape."""
    if isinstance(body, str | bytes):
        try:
            body = json.loads(body)
        except ValueError:
            return None, str(body)[:200]
    if isinstance(body, Mapping):
        error = body.get("error", body)
        if isinstance(error, Mapping):
            kind = error.get("type") or error.get("code")
            message = error.get("message") or ""
            return (str(kind) if kind is not None else None), str(message)
    return None, ""


@functools.cache
def transport_error_classes() -> tuple[type[BaseException], ...]:
    """httpx's and httpx2's transport errors, whichever are installed."""
    classes: list[type[BaseException]] = []
    for module_name in ("httpx2", "httpx", "httpcore2", "httpcore"):
        try:
            module = __import__(module_name)
        except ImportError:
            continue
        for name in ("TransportError", "HTTPError", "StreamError"):
            cls = getattr(module, name, None)
            if isinstance(cls, type) and issubclass(cls, BaseException):
                classes.append(cls)
    return tuple(classes)


# -- table-driven classification of an SDK's exported exception classes ----------------
# Each adapter lists EVERY exception class its SDK exports (all supported majors) with
# the way it is handled; tests/test_classification.py enumerates the installed SDK and
# fails when a class is missing, so a new SDK exception is never handled by accident.
#
#   by_status     the HTTP status (or, for an error inside a 200 stream, the status its
#                 error type stands for) decides, per the table at the top
#   stream_error  an error object inside a 200 stream: classified by its type/code
#   account       this provider's account, billing, credentials or configuration:
#                 not retryable, another route may work
#   request       the request itself is refused: fail fast with the provider's message
#   connection    the connection broke or timed out: retryable
#   malformed     the stream could not be parsed: retryable
#   sdk_error     a base class raised directly by the SDK: not retryable, fall back
#   not_streaming raised only by SDK features the engine never uses (webhooks,
#                 websockets, parse helpers); handled like sdk_error if it ever appears

Category = str
CATEGORIES = frozenset(
    {
        "by_status",
        "stream_error",
        "account",
        "request",
        "connection",
        "malformed",
        "sdk_error",
        "not_streaming",
    }
)


def _status_and_body(
    exc: BaseException,
) -> tuple[int | None, str | None, str, Mapping[str, str] | None]:
    kind, message = error_body_type(getattr(exc, "body", None))
    status = getattr(exc, "status_code", None)
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None) if response is not None else None
    return (status if isinstance(status, int) else None), kind, message, headers


def classify_with_table(
    exc: BaseException,
    *,
    api_mode: str,
    sdk_module: str,
    table: Mapping[str, Category],
    request_id_header: str,
) -> Fault:
    """Classify ``exc`` by the first class of its MRO that the SDK exports and the table
    names; exceptions from outside the SDK (the transport, the JSON parser) by type."""
    category: Category | None = None
    for cls in type(exc).__mro__:
        if cls.__module__.split(".")[0] == sdk_module and cls.__name__ in table:
            category = table[cls.__name__]
            break
    name = type(exc).__name__
    text = redact(str(exc))[:200]
    redirect = next(
        (link for link in exception_chain(exc) if isinstance(link, CrossOriginRedirect)), None
    )
    if redirect is not None:
        return redirect_fault(redirect, api_mode=api_mode)
    if category is None:
        if isinstance(exc, ProviderErrorEvent):
            return status_fault(
                exc.status, api_mode=api_mode, message=text, error_type=exc.error_type or name
            )
        if isinstance(exc, json.JSONDecodeError | UnicodeDecodeError | SchemaViolation) or (
            isinstance(exc, ValueError) and "pydantic" in type(exc).__module__
        ):
            return malformed_fault(exc, api_mode=api_mode)
        if isinstance(exc, transport_error_classes()):
            return transport_fault(exc, api_mode=api_mode)
        if isinstance(exc, RuntimeError) and "client has been closed" in str(exc):
            return transport_fault(exc, api_mode=api_mode)
        return Fault(
            outcome="error",
            retryable=False,
            fallback_eligible=False,
            reason=f"unexpected {name}: {text}",
            error_type=name,
            api_mode=api_mode,
        )
    if category in ("by_status", "stream_error"):
        status, kind, message, headers = _status_and_body(exc)
        if status is None or status < 400:
            # An error inside a 200 stream stands for the status of its type or code.
            code = getattr(exc, "code", None) or kind
            if isinstance(code, int) or (isinstance(code, str) and code.isdigit()):
                status = int(code)
            else:
                status = ERROR_TYPE_STATUS.get(str(code), 500) if code is not None else 500
        request_id = getattr(exc, "request_id", None) or (
            headers.get(request_id_header) if headers else None
        )
        return status_fault(
            status,
            api_mode=api_mode,
            message=message or text,
            headers=headers,
            request_id=request_id,
            error_type=kind or name,
        )
    if category == "connection":
        return transport_fault(exc, api_mode=api_mode)
    if category == "malformed":
        return malformed_fault(exc, api_mode=api_mode)
    status, kind, message, headers = _status_and_body(exc)
    retryable = False
    fallback = category != "request"
    return Fault(
        outcome="error",
        retryable=retryable,
        fallback_eligible=fallback,
        reason=redact(f"{name} ({category}): {message or text}")[:300],
        http_status=status,
        error_type=kind or name,
        api_mode=api_mode,
        headers=header_subset(headers) if headers else None,
    )


SHAPE_ERRORS: tuple[type[Exception], ...] = (AttributeError, TypeError, KeyError, IndexError)
"""What reading a field of an event that lacks it raises, in an adapter's translator."""


def schema_violation(event: object, exc: Exception) -> SchemaViolation:
    if type(event) is dict:  # an event's JSON (``sse_json``)
        kind = event.get("type") or event.get("object") or "dict"
    else:
        kind = getattr(event, "type", None) or getattr(event, "object", None)
        kind = kind or type(event).__name__
    return SchemaViolation(f"{kind}: {type(exc).__name__}: {exc}")
