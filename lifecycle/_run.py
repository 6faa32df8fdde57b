"""Records of a run: the transitions it took and one diagnostics record per attempt.

Records are plain data, safe to log: they never hold a request header, and every
string that came from the outside passed through ``redact`` first.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from typing import Any

from ._errors import Outcome
from ._secrets import REDACTED, scrub

__all__ = ["AttemptRecord", "CleanupStep", "Diagnostics", "Transition", "redact"]

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


@dataclass(frozen=True, kw_only=True, slots=True)
class Transition:
    source: str
    trigger: str
    dest: str
    at: float
    """Seconds since the run started (time.monotonic() based)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class CleanupStep:
    step: str
    thread: str
    at: float
    detail: str = ""


@dataclass(kw_only=True, slots=True)
class Diagnostics:
    """Timing and wire facts of one attempt; times in seconds, relative to the attempt start."""

    http_status: int | None = None
    ttfb: float | None = None
    ttft: float | None = None
    bytes: int = 0
    chunks: int = 0
    unknown_events: int = 0
    """Wire events of a type the adapter does not know: ignored, counted here."""
    elapsed: float | None = None
    error_type: str | None = None
    cause_chain: tuple[str, ...] = ()
    headers: dict[str, str] = field(default_factory=dict)
    cleanup: list[CleanupStep] = field(default_factory=list)
    request_sent_at: float | None = None
    stall_clock: str | None = None
    stall_deadline: float | None = None
    """time.monotonic() at which the stall clock ran out."""
    detection_lateness: float | None = None
    response_id: str | None = None
    """The provider's id of the response, once the stream said it."""
    response_model: str | None = None
    """The model that answered, as the stream named it (may differ from the route's)."""
    server_address: str | None = None
    """Host of the base URL the attempt's client sent to (telemetry's server.address)."""
    server_port: int | None = None
    omitted_options: tuple[str, ...] = ()
    """The caller's per-call options the route could not send (its wire API has none)."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "http_status": self.http_status,
            "ttfb": self.ttfb,
            "ttft": self.ttft,
            "bytes": self.bytes,
            "chunks": self.chunks,
            "unknown_events": self.unknown_events,
            "elapsed": self.elapsed,
            "error_type": self.error_type,
            "cause_chain": list(self.cause_chain),
            "headers": dict(self.headers),
            "cleanup": [(s.step, s.thread, round(s.at, 6), s.detail) for s in self.cleanup],
            "stall_clock": self.stall_clock,
            "omitted_options": list(self.omitted_options),
        }


@dataclass(kw_only=True, slots=True)
class AttemptRecord:
    number: int
    """1-based across the whole run."""
    route_index: int
    api_mode: str
    model: str
    started_at: float
    outcome: Outcome | None = None
    reason: str | None = None
    probe: bool = False
    """The attempt was its route's half-open breaker's one probe."""
    panic: bool = False
    """Every route the run could still use refused it, and the attempt went ahead on the
    one that failed least recently (panic mode; ``BreakerPolicy.fail_fast_when_all_open``)."""
    diagnostics: Diagnostics = field(default_factory=Diagnostics)
    exception: BaseException | None = field(default=None, repr=False, compare=False)
    """What ended the attempt (the SDK's exception, the transport's after a stall), with
    its text redacted like the record's; None if it completed or was interrupted."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "attempt": self.number,
            "route_index": self.route_index,
            "api_mode": self.api_mode,
            "model": self.model,
            "outcome": self.outcome,
            "reason": self.reason,
            "probe": self.probe,
            "panic": self.panic,
            **self.diagnostics.as_dict(),
        }


def cause_chain(exc: BaseException, limit: int = 4) -> tuple[str, ...]:
    """``Type: message`` for the exception and its causes, at most ``limit`` links, redacted."""
    links: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and len(links) < limit and id(current) not in seen:
        seen.add(id(current))
        message = str(current).splitlines()[0] if str(current) else ""
        links.append(redact(f"{type(current).__name__}: {message[:200]}"))
        current = current.__cause__ or current.__context__
    return tuple(links)


_AUTH_HEADERS = frozenset({"authorization", "proxy-authorization", "x-api-key", "api-key"})


def kept_exception(exc: BaseException, limit: int = 4) -> BaseException:
    """``exc``, made as safe to keep as the records: redacted in place (the engine owns it
    once it ended an attempt), along its causes, so no key survives in its text, its
    args, an SDK's ``message`` and ``body``, or the headers of the request it carries."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and len(seen) < limit and id(current) not in seen:
        seen.add(id(current))
        current.args = tuple(_redacted(arg) for arg in current.args)
        for name in ("message", "body"):
            value = getattr(current, name, None)
            if value is not None:
                # A read-only property derives its text from the args redacted above.
                with contextlib.suppress(AttributeError, TypeError):
                    setattr(current, name, _redacted(value))
        for holder in (getattr(current, "request", None), getattr(current, "response", None)):
            _redact_request_headers(holder)
        current = current.__cause__ or current.__context__
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
