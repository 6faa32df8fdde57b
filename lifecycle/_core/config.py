"""Frozen configuration objects: durations in seconds, keyword-only, validated at construction.

Every check raises at once, naming the field, so a bad configuration fails before any
request is sent rather than as a confusing timeout minutes later.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

__all__ = ["BreakerPolicy", "RetryPolicy", "Timeouts"]

OnPartial = Literal["restart", "fail", "continue"]


def _positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, got {type(value).__name__}")
    if math.isnan(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")


@dataclass(frozen=True, kw_only=True, slots=True)
class Timeouts:
    """How long the provider may keep the caller waiting, in seconds.

    - ``connect``: TCP and TLS connection set-up, handed to the SDK's HTTP client.
    - ``first_token``: from sending the request to the first meaningful event
      (text, thinking, tool-call delta or the message stop; never a ping).
    - ``stale``: the longest allowed gap between meaningful events.
    - ``total``: the whole run, retries and backoff included.

    Time the caller spends inside its loop body holding an event is not silence:
    the stale clock restarts when the caller asks for the next event.
    """

    connect: float = 10.0
    first_token: float = 60.0
    stale: float = 180.0
    total: float = 900.0

    def __post_init__(self) -> None:
        for name in ("connect", "first_token", "stale", "total"):
            _positive(f"Timeouts.{name}", getattr(self, name))
        if self.first_token > self.total:
            hint = " (60 is the default: set first_token too)" if self.first_token == 60.0 else ""
            raise ValueError(
                f"Timeouts.first_token ({self.first_token:g}) must not exceed "
                f"Timeouts.total ({self.total:g}){hint}"
            )
        if self.connect > self.total:
            raise ValueError(
                f"Timeouts.connect ({self.connect}) must not exceed Timeouts.total ({self.total})"
            )


@dataclass(frozen=True, kw_only=True, slots=True)
class RetryPolicy:
    """How faults are retried on a route and when the next route takes over.

    ``max_attempts`` counts attempts per route (1 means no retry on that route).
    Backoff before attempt n+1 is ``min(max_backoff, initial_backoff * 2**(n-1))``,
    reduced by a random fraction of up to ``jitter`` (1.0 is "full jitter").
    A provider's Retry-After (or retry-after-ms) replaces the computed backoff, even
    above ``max_backoff``, up to ``max_retry_after``; a longer one moves to the next
    route at once. So does a wait (Retry-After or backoff) that would reach the end of
    ``Timeouts.total``, since another route may answer within the budget; on the last
    route that wait fails the run. ``on_partial`` decides what happens once the caller has seen
    output: ``"restart"`` yields a ``restart`` event and retries, ``"fail"`` raises
    ``StreamFailed`` with the partial message attached, ``"continue"`` (opt-in) asks
    the same route to continue the delivered text as an assistant prefix and stitches
    the answer without a ``restart``, for text-only output (a tool call or thinking
    block, or a fallback to another route, restarts instead).
    ``stale_before_fallback``: how many stale attempts one route may have in one run
    before the next route takes over, at once and without backoff. The default, 1, moves
    on after the first stall: a stall is the provider's, not the request's, and each
    retry of a silent route costs another whole ``first_token`` or ``stale`` budget. A
    stall on the last route is retried there, up to ``max_attempts``, since nothing else
    can answer. ``None`` retries a stall on its route like any transient fault, up to
    ``max_attempts``, before the next route (for one provider the caller prefers to wait
    for, or to continue there under ``on_partial="continue"``). Faults that end an
    attempt at once (drops, 408, 409, 429, 5xx, 529) are not stalls: this leaves them to
    ``max_attempts``.
    """

    max_attempts: int = 3
    initial_backoff: float = 0.5
    max_backoff: float = 30.0
    jitter: float = 1.0
    max_retry_after: float = 60.0
    on_partial: OnPartial = "restart"
    stale_before_fallback: int | None = 1

    def __post_init__(self) -> None:
        if self.stale_before_fallback is not None:
            if isinstance(self.stale_before_fallback, bool) or not isinstance(
                self.stale_before_fallback, int
            ):
                raise TypeError("RetryPolicy.stale_before_fallback must be an int or None")
            if self.stale_before_fallback < 1:
                raise ValueError(
                    "RetryPolicy.stale_before_fallback must be at least 1, "
                    f"got {self.stale_before_fallback}"
                )
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
            raise TypeError("RetryPolicy.max_attempts must be an int")
        if self.max_attempts < 1:
            raise ValueError(
                f"RetryPolicy.max_attempts must be at least 1, got {self.max_attempts}"
            )
        for name in ("initial_backoff", "max_backoff", "max_retry_after"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"RetryPolicy.{name} must be a number of seconds")
            if math.isnan(value) or value < 0:
                raise ValueError(f"RetryPolicy.{name} must be >= 0, got {value!r}")
        if self.max_backoff < self.initial_backoff:
            raise ValueError("RetryPolicy.max_backoff must be >= RetryPolicy.initial_backoff")
        if isinstance(self.jitter, bool) or not isinstance(self.jitter, int | float):
            raise TypeError("RetryPolicy.jitter must be a number within [0, 1]")
        if math.isnan(self.jitter) or not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"RetryPolicy.jitter must be within [0, 1], got {self.jitter!r}")
        if self.on_partial not in ("restart", "fail", "continue"):
            raise ValueError(
                "RetryPolicy.on_partial must be 'restart', 'fail' or 'continue', "
                f"got {self.on_partial!r}"
            )


@dataclass(frozen=True, kw_only=True, slots=True)
class BreakerPolicy:
    """When a route's circuit breaker opens, and how it comes back (see ``_breaker``).

    - ``failures_to_open``: consecutive provider faults (stale or dropped attempts, from
      any run of the engine, or of the fleet sharing its ``HealthStore``) that open it.
    - ``cooldown``: seconds an opened breaker refuses every run before letting one probe
      through; each opening since the last successful probe multiplies it by
      ``cooldown_factor``, up to ``max_cooldown``, so a dead provider is probed less
      and less often, but always again: a breaker never latches.
    - ``probe_timeout``: a probe that has not reported after this long (its process
      died) no longer holds the half-open slot.
    - ``fail_fast_when_all_open``: when every route a run may still use refuses it,
      fail the run at once ("no route admits the run"). Off by default: the run then
      tries the route that failed least recently anyway (panic mode,
      ``AttemptRecord.panic``), so a breaker never makes a run worse off than no
      breaker would.
    """

    failures_to_open: int = 5
    cooldown: float = 30.0
    cooldown_factor: float = 2.0
    max_cooldown: float = 600.0
    probe_timeout: float = 900.0
    fail_fast_when_all_open: bool = False

    def __post_init__(self) -> None:
        count = self.failures_to_open
        if isinstance(count, bool) or not isinstance(count, int):
            raise TypeError("BreakerPolicy.failures_to_open must be an int")
        if count < 1:
            raise ValueError(f"BreakerPolicy.failures_to_open must be at least 1, got {count}")
        for name in ("cooldown", "max_cooldown", "probe_timeout"):
            _positive(f"BreakerPolicy.{name}", getattr(self, name))
        factor = self.cooldown_factor
        if isinstance(factor, bool) or not isinstance(factor, int | float):
            raise TypeError("BreakerPolicy.cooldown_factor must be a number")
        if math.isnan(factor) or factor < 1.0:
            raise ValueError(f"BreakerPolicy.cooldown_factor must be >= 1, got {factor!r}")
        if self.max_cooldown < self.cooldown:
            raise ValueError("BreakerPolicy.max_cooldown must be >= BreakerPolicy.cooldown")
        if not isinstance(self.fail_fast_when_all_open, bool):
            raise TypeError("BreakerPolicy.fail_fast_when_all_open must be a bool")
