"""What happened, as the drivers report it to the machine: frozen, past tense, timestamped.

``at`` is a ``time.monotonic()`` reading taken by the driver; the machine never reads a
clock itself, so a test can feed any timeline it likes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .errors import Fault

__all__ = [
    "AttemptFailed",
    "AttemptStarted",
    "CleanupFinished",
    "DeadlinePassed",
    "FirstEventReceived",
    "InterruptRequested",
    "LifecycleEvent",
    "RouteSkipped",
    "RoutesExhausted",
    "StallDetected",
    "StreamFinished",
]

Clock = Literal["first_token", "stale", "total"]


@dataclass(frozen=True, kw_only=True, slots=True)
class AttemptStarted:
    """The driver is about to build (if needed) a client and send a request."""

    at: float
    route_index: int


@dataclass(frozen=True, kw_only=True, slots=True)
class FirstEventReceived:
    """The attempt produced its first meaningful event."""

    at: float


@dataclass(frozen=True, kw_only=True, slots=True)
class StreamFinished:
    """The provider sent its stop and the stream ended cleanly."""

    at: float


@dataclass(frozen=True, kw_only=True, slots=True)
class StallDetected:
    """A clock ran out: no meaningful event within first_token / stale, or the run's total."""

    at: float
    clock: Clock
    deadline: float


@dataclass(frozen=True, kw_only=True, slots=True)
class AttemptFailed:
    """The attempt ended without a complete answer for a reason other than a clock."""

    at: float
    fault: Fault


@dataclass(frozen=True, kw_only=True, slots=True)
class InterruptRequested:
    """The caller asked the run to stop (``run.interrupt()``, or it left the loop)."""

    at: float


@dataclass(frozen=True, kw_only=True, slots=True)
class CleanupFinished:
    """The driver carried out the cleanup plan on the run's own thread or task."""

    at: float
    interrupted: bool = False
    """interrupt() was called while the cleanup ran."""
    continuable: bool = False
    """Everything delivered so far is text: a retry may continue it as an assistant prefix."""


@dataclass(frozen=True, kw_only=True, slots=True)
class DeadlinePassed:
    """Timeouts.total ran out while no attempt was in flight (during a backoff)."""

    at: float


@dataclass(frozen=True, kw_only=True, slots=True)
class RouteSkipped:
    """The route the run was about to use refused it: its circuit breaker is open (or
    half-open with its one probe out). The run falls back to the next route."""

    at: float
    route_index: int
    reason: str


@dataclass(frozen=True, kw_only=True, slots=True)
class RoutesExhausted:
    """No route from the one the run was about to use onward would admit it."""

    at: float
    reason: str


LifecycleEvent = (
    AttemptStarted
    | FirstEventReceived
    | StreamFinished
    | StallDetected
    | AttemptFailed
    | InterruptRequested
    | CleanupFinished
    | DeadlinePassed
    | RouteSkipped
    | RoutesExhausted
)
