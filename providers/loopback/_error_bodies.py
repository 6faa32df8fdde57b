"""The providers' JSON error bodies, each in its own shape, for the statuses the server sends.

The SDKs parse an error body to pick the exception they raise and the message they show,
so a 429 or a 529 from the loopback server must look like Anthropic's
``{"type": "error", "error": {...}}`` or OpenAI's ``{"error": {...}}``, type and code
included. Used for ``HttpError`` faults without a body of their own and for the
requests the server refuses (404, 405, 400).
"""

from __future__ import annotations

from typing import Any

from ._http import reason
from ._recordings import Provider

__all__ = ["error_body", "guess_provider"]

_ANTHROPIC_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Invalid request"),
    401: ("authentication_error", "invalid x-api-key"),
    403: (
        "permission_error",
        "Your API key does not have permission to use the specified resource.",
    ),
    404: ("not_found_error", "Not found"),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Rate limited"),
    500: ("api_error", "Internal server error"),
    529: ("overloaded_error", "Overloaded"),
}
_OPENAI_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request"),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("invalid_request_error", "unsupported_country_region_territory", "Forbidden"),
    404: ("invalid_request_error", "model_not_found", "The model does not exist."),
    413: ("invalid_request_error", "request_too_large", "Request too large."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests."),
    500: ("server_error", None, "The server had an error while processing your request."),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
    529: ("server_error", None, "The engine is currently overloaded, please try again later."),
}


def error_body(provider: Provider, status: int, message: str | None = None) -> dict[str, Any]:
    """The provider's own JSON error shape for ``status``."""
    if provider == "anthropic":
        kind, default = _ANTHROPIC_ERRORS.get(
            status,
            ("api_error", "Internal server error")
            if status >= 500
            else ("invalid_request_error", reason(status)),
        )
        return {"type": "error", "error": {"type": kind, "message": message or default}}
    kind, code, default = _OPENAI_ERRORS.get(
        status,
        ("server_error", None, reason(status))
        if status >= 500
        else ("invalid_request_error", None, reason(status)),
    )
    return {"error": {"message": message or default, "type": kind, "param": None, "code": code}}


def guess_provider(path: str, headers: dict[str, str]) -> Provider:
    """For requests off the known routes, answer in the shape the caller most likely parses."""
    if "anthropic-version" in headers or "x-api-key" in headers or "messages" in path:
        return "anthropic"
    return "openai"
