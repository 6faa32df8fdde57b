"""A reference model of what the retry policy must decide, written from the README and
the ``RetryPolicy`` / ``Fault`` docstrings, never from ``lifecycle._core.policy``.

``test_stateful_core`` feeds it the events a ``RunCore`` accepted; after each one the
model says which state the run must be in and, when a cleanup has finished, what the
decision must have been: retry on the same route (with its delay, or the delay's bounds
when jitter makes it random), fall back to the next route at once, fail, or cancel.
It counts attempts and stalls per route itself, from the events, so a core that counts
wrong disagrees with it too.

The rules, in the order they apply to a finished cleanup:

1. the caller interrupted (an ``InterruptRequested``, or a cleanup that saw the
   interrupt): cancel. README, "What each failure means": ``run.interrupt()``, not
   retried, no next route: cancelled.
2. ``Timeouts.total`` ran out (a stall on the ``total`` clock, or the cleanup ended at or
   after the deadline): fail. "the caller's budget".
3. output reached the caller and ``on_partial="fail"``: fail ("fails instead, with the
   partial message attached").
4. a stale attempt, that many stale attempts on this route in this run as
   ``stale_before_fallback`` allows (1 when the caller did not set it: "by default a
   stall moves to the next route at once"; ``None``: no such limit), and a next route:
   fall back ("the next route takes over, at once and without backoff"). A stall on the
   last route goes on to rule 5.
5. a retryable fault with attempts left on the route (``max_attempts`` counts attempts
   per route, 1 means no retry): a Retry-After above ``max_retry_after`` moves to the
   next route at once (fails without one); otherwise wait the Retry-After (even above
   ``max_backoff``) or the backoff ``min(max_backoff, initial_backoff * 2**(n-1))``
   reduced by a random fraction of up to ``jitter``, n the attempts made on the route;
   a wait that reaches ``Timeouts.total`` (the total includes backoff) moves to the next
   route at once, and fails without one.
6. a retryable fault with the route's attempts used up: the next route, or fail.
7. not retryable: the next route if the fault is fallback-eligible and there is one;
   a fault that is neither is a request error: fail fast.

Faults made by the adapters' classifier are judged from the HTTP status and the raw
Retry-After header, by the README's table, not from the classifier's flags.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from lifecycle import RetryPolicy, Timeouts
from lifecycle._core.events import (
    AttemptFailed,
    AttemptStarted,
    CleanupFinished,
    DeadlinePassed,
    FirstEventReceived,
    InterruptRequested,
    LifecycleEvent,
    RoutesExhausted,
    RouteSkipped,
    StallDetected,
    StreamFinished,
)

__all__ = ["Expected", "PolicyModel", "Verdict", "status_verdict"]

Kind = Literal["retry", "fallback", "fail", "cancel"]
UNSET: Final = "unset"
"""A ``RetryPolicy`` field the caller did not pass: the model applies the README's default."""
STALE_BEFORE_FALLBACK_DEFAULT: Final = 1
"""README, "Retry, fallback and the commit point": a stall moves to the next route at once."""
DEST: dict[str, str] = {
    "retry": "retrying",
    "fallback": "falling_back",
    "fail": "failed",
    "cancel": "cancelled",
}


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the model takes a fault to mean: the README's reading, not the Fault's flags."""

    retry: bool
    """The same route may succeed on another attempt."""
    other_route: bool
    """Another route may succeed where this one cannot."""
    retry_after: float | None = None
    stale: bool = False
    deadline: bool = False
    interrupted: bool = False


def status_verdict(status: int, retry_after: float | None) -> Verdict:
    """The README's "What each failure means" table, for an HTTP status."""
    if status in (400, 413, 422):  # the request itself is wrong: fail fast
        return Verdict(retry=False, other_route=False, retry_after=retry_after)
    if status in (408, 409, 429) or status >= 500:  # transient
        return Verdict(retry=True, other_route=True, retry_after=retry_after)
    # 401, 403 (credentials), 404 (model name), 402 and any other 4xx (account)
    return Verdict(retry=False, other_route=True, retry_after=retry_after)


@dataclass(frozen=True, slots=True)
class Expected:
    """The decision a finished cleanup must have taken."""

    kinds: frozenset[str]
    """One kind, or two when jitter leaves the wait on either side of the deadline."""
    route: int
    """The route a retry or a failure names; a fallback names the next one."""
    rule: str
    """Which of the rules decided, for the failure message."""
    delay: tuple[float, float] = (0.0, 0.0)
    """Bounds of a retry's wait (equal without jitter); a fallback waits for nothing."""

    def __str__(self) -> str:
        low, high = self.delay
        wait = f", delay in [{low!r}, {high!r}]" if "retry" in self.kinds else ""
        return f"{'/'.join(sorted(self.kinds))} from route {self.route}{wait} ({self.rule})"

    def route_of(self, kind: str) -> int:
        return self.route + 1 if kind == "fallback" else self.route


class PolicyModel:
    """One run: the model's own counts, and what it expects of the core."""

    def __init__(
        self,
        *,
        routes: int,
        retry: RetryPolicy,
        stale_before_fallback: int | Literal["unset"] | None,
        timeouts: Timeouts,
        started_at: float,
    ) -> None:
        """``stale_before_fallback``: what the caller passed to ``retry``, or ``UNSET``:
        the model keeps its own default rather than the policy's."""
        self.routes = routes
        self.retry = retry
        self.stale_limit = (
            STALE_BEFORE_FALLBACK_DEFAULT
            if stale_before_fallback == UNSET
            else stale_before_fallback
        )
        self.deadline = started_at + timeouts.total
        self.state = "idle"
        self.attempts = [0] * routes
        self.stale = [0] * routes
        self.route = 0
        """The route of the attempt that ran last."""
        self.committed = False
        self.interrupted = False
        self.verdict: Verdict | None = None
        self.expected: Expected | None = None
        """The decision of the last finished cleanup, until the next attempt starts."""
        self.decided_at = 0.0
        self.continuable = False
        """Everything delivered so far is text (the last cleanup said)."""

    def taken(self, event: LifecycleEvent, verdict: Verdict | None = None) -> None:
        """``event`` was accepted by the core; ``verdict`` is an ``AttemptFailed``'s."""
        if isinstance(event, AttemptStarted):
            self.route = event.route_index
            self.attempts[self.route] += 1
            self.verdict = self.expected = None
            self.state = "connecting"
        elif isinstance(event, FirstEventReceived):
            self.committed = True
            self.state = "streaming"
        elif isinstance(event, StreamFinished):
            self.state = "completed"
        elif isinstance(event, StallDetected):
            total = event.clock == "total"
            if not total:
                self.stale[self.route] += 1
            self.verdict = Verdict(retry=True, other_route=True, stale=not total, deadline=total)
            self.state = "cleanup"
        elif isinstance(event, AttemptFailed):
            assert verdict is not None, "an AttemptFailed without the model's verdict"
            self.verdict = verdict
            self.state = "cleanup"
        elif isinstance(event, InterruptRequested):
            self.interrupted = True
            if self.state in ("connecting", "streaming"):
                self.verdict = Verdict(retry=False, other_route=False, interrupted=True)
                self.state = "cleanup"
            else:
                self.expected = None
                self.state = "cancelled"
        elif isinstance(event, CleanupFinished):
            self.interrupted = self.interrupted or event.interrupted
            self.decided_at = event.at
            self.continuable = event.continuable
            self.expected = self._decide(event.at)
            kinds = self.expected.kinds
            self.state = " or ".join(sorted(DEST[kind] for kind in kinds))
        elif isinstance(event, RoutesExhausted):
            self.expected = Expected(kinds=frozenset({"fail"}), route=-1, rule="no route left")
            self.state = "failed"
        elif isinstance(event, DeadlinePassed):
            self.expected = None  # the decision before the wait stands in the records
            self.state = "failed"
        elif isinstance(event, RouteSkipped):
            self.expected = None
            self.state = "falling_back"

    def _decide(self, now: float) -> Expected:
        verdict = self.verdict
        assert verdict is not None, "a cleanup without a fault"
        route, policy = self.route, self.retry
        has_next = route + 1 < self.routes

        def expect(kinds: set[str], rule: str, delay: tuple[float, float] = (0.0, 0.0)) -> Expected:
            return Expected(
                kinds=frozenset(kinds),
                route=route,
                rule=rule,
                delay=delay,
            )

        def next_route_or_fail(rule: str) -> Expected:
            return expect({"fallback" if has_next else "fail"}, rule)

        if self.interrupted or verdict.interrupted:
            return expect({"cancel"}, "rule 1: interrupted")
        if verdict.deadline or now >= self.deadline:
            return expect({"fail"}, "rule 2: Timeouts.total ran out")
        if self.committed and policy.on_partial == "fail":
            return expect({"fail"}, "rule 3: output delivered, on_partial='fail'")
        limit = self.stale_limit
        if verdict.stale and limit is not None and self.stale[route] >= limit and has_next:
            return expect({"fallback"}, f"rule 4: {self.stale[route]} stale, stale_before_fallback")
        if verdict.retry and self.attempts[route] < policy.max_attempts:
            wait = verdict.retry_after
            if wait is not None and wait > policy.max_retry_after:
                return next_route_or_fail("rule 5: Retry-After above max_retry_after")
            if wait is not None:
                low = high = wait
                rule = f"rule 5: Retry-After {wait!r}"
            else:
                n = self.attempts[route]
                high = min(policy.max_backoff, policy.initial_backoff * 2 ** (n - 1))
                low = high * (1.0 - policy.jitter)
                rule = f"rule 5: backoff after {n} attempt(s)"
            kinds = {"retry"} if now + low < self.deadline else set()
            if now + high >= self.deadline:
                kinds.add("fallback" if has_next else "fail")
                rule += ", reaching Timeouts.total" + (" or not" if "retry" in kinds else "")
            return expect(kinds, rule, (low, high))
        if verdict.retry:
            return next_route_or_fail(f"rule 6: {self.attempts[route]} attempt(s), max_attempts")
        if verdict.other_route:
            return next_route_or_fail("rule 7: not retryable, another route may work")
        return expect({"fail"}, "rule 7: a request error fails fast")

    def disagreement(
        self,
        *,
        state: str,
        kind: str | None,
        route: int | None,
        delay: float,
        restart_pending: bool,
        continue_pending: bool,
    ) -> str | None:
        """Why the core's state and decision are not the model's, or None. A decision
        the model left open (a jittered wait either side of the deadline) is settled
        by the core's, once it is checked to be one of the two."""
        expected = self.expected
        if " or " in self.state and state in self.state.split(" or "):
            self.state = state
        if state != self.state:
            return f"state {state}, the model expects {self.state}" + (
                f" ({expected})" if expected is not None else ""
            )
        if not self.committed and (restart_pending or continue_pending):
            return "a restart or continuation pending before any output reached the caller"
        if expected is None or self.state not in DEST.values():
            return None
        if kind not in expected.kinds or route != expected.route_of(kind):
            return f"decided {kind} on route {route}, the model expects {expected}"
        low, high = expected.delay
        if kind == "retry":
            if not (_at_least(delay, low) and _at_least(high, delay)):
                return f"waits {delay!r}, the model expects {expected}"
            if not self.decided_at + delay < self.deadline:
                return f"waits {delay!r}, past Timeouts.total; the model expects {expected}"
        elif kind == "fallback" and delay != 0.0:
            return f"falls back after {delay!r}, the model expects {expected} at once"
        if self.committed and kind in ("retry", "fallback"):
            # on_partial="continue" continues text-only output on the same route; a
            # fallback (another model), a tool call or a thinking block restarts.
            continues = kind == "retry" and self.retry.on_partial == "continue" and self.continuable
            if continues and not continue_pending:
                return f"{kind} after text-only output, on_partial='continue': no continuation"
            if not continues and not restart_pending:
                return f"{kind} after output reached the caller: no restart pending"
        return None


def _at_least(value: float, bound: float) -> bool:
    """``value >= bound`` but for the last bits of rounding."""
    return value >= bound - 1e-9 * max(1.0, abs(bound))
