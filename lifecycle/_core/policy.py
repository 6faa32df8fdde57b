"""The one place that decides what follows a fault: retry, fall back, fail or cancel.

Pure: it reads the fault, the counts and the time it is handed, never a clock; both
drivers call it through the machine, so sync and async runs decide identically.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from .config import RetryPolicy
from .errors import Fault

__all__ = ["Decision", "backoff_delay", "decide"]

DecisionKind = Literal["retry", "fallback", "fail", "cancel"]


@dataclass(frozen=True, kw_only=True, slots=True)
class Decision:
    kind: DecisionKind
    reason: str
    route_index: int
    delay: float = 0.0


def backoff_delay(policy: RetryPolicy, failed_attempts: int, rng: random.Random) -> float:
    """Exponential backoff, with jitter, for the attempt after ``failed_attempts``."""
    ceiling = min(policy.max_backoff, policy.initial_backoff * 2 ** max(0, failed_attempts - 1))
    return float(ceiling * (1.0 - policy.jitter * rng.random()))


def decide(
    *,
    policy: RetryPolicy,
    fault: Fault,
    route_index: int,
    route_count: int,
    attempts_on_route: int,
    stale_on_route: int = 0,
    committed: bool,
    interrupted: bool,
    total_expired: bool,
    now: float,
    deadline: float,
    rng: random.Random,
) -> Decision:
    if interrupted or fault.outcome == "interrupted":
        return Decision(kind="cancel", reason="interrupted", route_index=route_index)
    if total_expired:
        return Decision(kind="fail", reason="Timeouts.total ran out", route_index=route_index)
    if committed and policy.on_partial == "fail":
        return Decision(
            kind="fail",
            reason=f"{fault.reason} after output was delivered (on_partial='fail')",
            route_index=route_index,
        )
    has_next = route_index + 1 < route_count
    fallback = Decision(kind="fallback", reason=fault.reason, route_index=route_index + 1)
    # A stall costs a whole stall budget per attempt and says the provider is stuck, not
    # that the request is wrong: by default (1) the next route takes over at once. Faults
    # that end an attempt at once cost a retry only its backoff, and keep max_attempts.
    eager = policy.stale_before_fallback
    if fault.outcome == "stale" and eager is not None and stale_on_route >= eager and has_next:
        return Decision(
            kind="fallback",
            reason=f"{fault.reason}; {stale_on_route} stale attempt(s) on this route "
            "(stale_before_fallback)",
            route_index=route_index + 1,
        )
    if fault.retryable:
        if attempts_on_route < policy.max_attempts:
            if fault.retry_after is not None and fault.retry_after > policy.max_retry_after:
                if has_next:
                    return fallback
                return Decision(
                    kind="fail",
                    reason=f"retry-after {fault.retry_after:g}s exceeds max_retry_after",
                    route_index=route_index,
                )
            if fault.retry_after is not None:
                delay = fault.retry_after
            else:
                delay = backoff_delay(policy, attempts_on_route, rng)
            if now + delay >= deadline:
                # The wait is this route's to lose, not the run's: another route may
                # answer within the budget at once (as above max_retry_after).
                if has_next:
                    return Decision(
                        kind="fallback",
                        reason=f"{fault.reason}; the wait would pass Timeouts.total",
                        route_index=route_index + 1,
                    )
                return Decision(
                    kind="fail",
                    reason=f"{fault.reason}; the backoff would pass Timeouts.total",
                    route_index=route_index,
                )
            return Decision(kind="retry", reason=fault.reason, route_index=route_index, delay=delay)
        if has_next:
            return fallback
        return Decision(
            kind="fail",
            reason=f"{fault.reason}; every route used up",
            route_index=route_index,
        )
    if fault.fallback_eligible and has_next:
        return fallback
    return Decision(kind="fail", reason=fault.reason, route_index=route_index)
