"""Redaction: what of the outside world the records, errors and logs may keep.

Every string that came from a provider or an SDK passes through ``redact`` before a
record, an error or a log line holds it; exceptions kept on records are redacted in
place (``kept_exception``); of response headers only ``HEADER_ALLOWLIST`` survives.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping
from typing import Any

from .secrets import REDACTED, scrub

__all__ = [
    "HEADER_ALLOWLIST",
    "cause_chain",
    "exception_chain",
    "header_subset",
    "kept_exception",
    "redact",
]

# Response headers worth keeping to correlate with the provider's logs; anything else
# (cookies, auth echoes) is dropped.
HEADER_ALLOWLIST = frozenset(
    {
        "request-id",
        "x-request-id",
        "cf-ray",
        "server",
        "via",
        "x-openrouter-id",
        "x-openrouter-request-id",
        "openrouter-request-id",
        "retry-after",
        "retry-after-ms",
        "anthropic-organization-id",
        "openai-processing-ms",
    }
)

_KEY_SHAPED = re.compile(
    r"(?P<header>(?i:x-api-key|api-key|authorization)\s*[:=]\s*)"
    r"(?P<scheme>(?i:bearer|basic|token)\s+)?\S+"
    r"|(?P<bearer>Bearer\s+)[A-Za-z0-9._\-~+/=]{8,}"
    r"|sk-(?:ant-)?[A-Za-z0-9_\-]{8,}"
)


def _redacted_match(match: re.Match[str]) -> str:
    # The header name and the auth scheme say what was there; only the token goes.
    kept = (match["header"] or "") + (match["scheme"] or "") + (match["bearer"] or "")
    return kept + REDACTED


def redact(text: str) -> str:
    """Remove the routes' known secrets (any piece of them, whatever their shape) and
    anything shaped like an API key or an auth header value, each replaced by
    ``[redacted]``; an auth header's name and scheme (``Bearer``) are kept.

    Shapes first: a known secret's piece removed first could cut the head off a
    key-shaped value (``sk-ant-q...``) and leave its tail, which has no shape left."""
    return scrub(_KEY_SHAPED.sub(_redacted_match, text))


def header_subset(headers: Mapping[str, str]) -> dict[str, str]:
    kept: dict[str, str] = {}
    for name, value in headers.items():
        lowered = name.lower()
        if lowered in HEADER_ALLOWLIST:
            kept[lowered] = redact(value)[:200]
    return kept


def exception_chain(exc: BaseException, limit: int = 8) -> Iterator[BaseException]:
    """``exc`` and its causes (``__cause__``, else ``__context__``), at most ``limit``
    links, each once. The next link is read after the caller is done with this one."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and len(seen) < limit and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def cause_chain(exc: BaseException, limit: int = 4) -> tuple[str, ...]:
    """``Type: message`` for the exception and its causes, at most ``limit`` links, redacted."""
    links: list[str] = []
    for link in exception_chain(exc, limit):
        message = str(link).splitlines()[0] if str(link) else ""
        links.append(redact(f"{type(link).__name__}: {message[:200]}"))
    return tuple(links)


_AUTH_HEADERS = frozenset({"authorization", "proxy-authorization", "x-api-key", "api-key"})


def kept_exception(exc: BaseException, limit: int = 4) -> BaseException:
    """``exc``, made as safe to keep as the records: redacted in place (the engine owns it
    once it ended an attempt), along its causes, so no key survives in its text, its
    args, an SDK's ``message`` and ``body``, or the headers of the request it carries."""
    for link in exception_chain(exc, limit):
        link.args = tuple(_redacted(arg) for arg in link.args)
        for name in ("message", "body"):
            value = getattr(link, name, None)
            if value is not None:
                # A read-only property derives its text from the args redacted above.
                with contextlib.suppress(AttributeError, TypeError):
                    setattr(link, name, _redacted(value))
        for holder in (getattr(link, "request", None), getattr(link, "response", None)):
            _redact_request_headers(holder)
    return exc


def _redacted(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, bytes):
        return redact(value.decode("utf-8", "replace")).encode()
    if isinstance(value, dict):
        return {key: _redacted(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_redacted(item) for item in value)
    return value


def _redact_request_headers(holder: Any) -> None:
    """The request an SDK error carries (directly, or through its response) still has the
    Authorization it was sent with; it has been sent, so blanking it changes nothing."""
    if holder is None:
        return
    try:
        request = getattr(holder, "request", holder)
    except RuntimeError:  # an httpx response built without its request
        return
    headers = getattr(request, "headers", None)
    keys = getattr(headers, "keys", None)
    if headers is None or not callable(keys):
        return
    for name in list(keys()):
        if isinstance(name, str) and name.lower() in _AUTH_HEADERS:
            try:
                headers[name] = "[redacted]"
            except TypeError:  # immutable headers: nothing can be done in place
                return
