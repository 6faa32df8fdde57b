"""Records of a run: the transitions it took and one diagnostics record per attempt.

Records are plain data, safe to log: they never hold a request header, and every
string that came from the outside passed through ``redact`` first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["AttemptRecord", "CleanupStep", "Diagnostics", "Outcome", "Transition"]

Outcome = Literal["completed", "stale", "dropped", "error", "interrupted", "deadline"]
"""How an attempt ended (``AttemptRecord.outcome``, ``Fault.outcome``)."""


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
