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
import json
import time
from collections.abc import Mapping
from typing import Any

from lifecycle import Fault
from lifecycle._run import redact

__all__ = [
    "REQUEST_ERRORS",
    "RETRYABLE_STATUSES",
    "ROUTE_ERRORS",
    "malformed_fault",
    "parse_retry_after",
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
        if value >= 0:
            return value
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(raw) if raw else None
        if parsed is None:
            return None
        value = parsed.timestamp() - (now if now is not None else time.time())
    return max(0.0, value)


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
        request_id=request_id,
        error_type=error_type,
        api_mode=api_mode,
        headers=dict(headers) if headers else None,
    )


def transport_fault(exc: BaseException, *, api_mode: str) -> Fault:
    return Fault(
        outcome="dropped",
        retryable=True,
        fallback_eligible=True,
        reason=f"connection lost: {type(exc).__name__}: {str(exc)[:200]}",
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
