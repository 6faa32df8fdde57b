"""Decisions and wording shared by the sync and async drivers, so they cannot diverge."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

from ._errors import Fault, MissingCredentials
from ._run import HEADER_ALLOWLIST, redact

if TYPE_CHECKING:
    from ._machine import RunCore
    from ._route import Route

__all__ = [
    "client_build_fault",
    "failure_message",
    "header_subset",
    "oversized_fault",
    "server_of",
    "truncated_fault",
]

DEFAULT_PORTS: Final = {"https": 443, "http": 80}


def client_build_fault(route: Route, exc: BaseException) -> Fault:
    """The factory could not build a client (a missing key, a wrong client type):
    this route cannot serve the run, another one may."""
    if isinstance(exc, MissingCredentials):  # already names the route and what to set
        reason = str(exc)
    else:
        reason = f"client factory of {route.name} failed: {type(exc).__name__}: {exc}"
    return Fault(
        outcome="dropped",
        retryable=False,
        fallback_eligible=True,
        reason=redact(reason)[:300],
        error_type=type(exc).__name__,
        api_mode=route.api_mode,
    )


def truncated_fault(route: Route) -> Fault:
    """The stream ended without the provider's stop: the answer may be cut off."""
    return Fault(
        outcome="dropped",
        retryable=True,
        fallback_eligible=True,
        reason="stream ended without a stop reason (truncated)",
        api_mode=route.api_mode,
    )


def oversized_fault(route: Route, detail: str) -> Fault:
    """An event larger than the engine will buffer: the provider (or a proxy) is sending
    something that is not a normal stream; retrying the same route would repeat it."""
    return Fault(
        outcome="dropped",
        retryable=False,
        fallback_eligible=True,
        reason=f"oversized event: {detail}",
        api_mode=route.api_mode,
    )


def header_subset(headers: Mapping[str, str]) -> dict[str, str]:
    kept: dict[str, str] = {}
    for name, value in headers.items():
        lowered = name.lower()
        if lowered in HEADER_ALLOWLIST:
            kept[lowered] = redact(value)[:200]
    return kept


def failure_message(core: RunCore) -> str:
    decision = core.decision
    reason = decision.reason if decision is not None else "the run failed"
    last = core.attempts[-1] if core.attempts else None
    where = ""
    if last is not None:
        status = last.diagnostics.http_status
        where = f"; last attempt #{last.number} on {last.api_mode}/{last.model}"
        if status is not None:
            where += f" (HTTP {status})"
    return f"{reason} after {len(core.attempts)} attempt(s){where}"


@functools.lru_cache(maxsize=256)
def server_of(url: str | None) -> tuple[str | None, int | None]:
    """Host and port of a base URL (the scheme's default port when the URL has none).
    Cached: each attempt asks about its route's base URL, one of a handful."""
    if not url:
        return None, None
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None and parts.hostname:
        port = DEFAULT_PORTS.get(parts.scheme)
    return parts.hostname, port
