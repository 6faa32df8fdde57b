"""The pure ``RunCore`` as a Hypothesis state machine: any event, any time, any routes.

Each example builds a ``RunCore`` over a random list of routes (``anthropic_messages``
and ``chat_completions`` mixed, 1 to 4 of them), a random ``RetryPolicy`` and
``Timeouts``, then feeds it random events of every type at random increasing times.
An event the table does not allow in the current state must raise
``transitions.MachineError`` and change nothing; an allowed one must take a row of
``TRANSITIONS``. After every step the invariants below hold. Like a driver, the test
starts each attempt on the route the last decision named (route 0 at first), so the
retry budget is the policy's to keep.

The policy's decisions are checked against ``policy_model``, a reference model written
from the README and the config's docstrings (it imports nothing of ``_policy``): after
every step the state, and after every finished cleanup the decision (retry on the same
route with the right wait, fall back at once, fail, cancel), the attempts and stalls
counted per route, and the restart or continuation a delivered output asks for. Faults
come two ways: every combination of the ``Fault`` flags, and faults the adapters'
classifier makes from an HTTP status and a Retry-After header (unparsable ones
included), judged by the status and the header alone, as the README's "What each
failure means" table does.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import Iterator
from typing import Any, ClassVar, Literal

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from hypothesis_profiles import PROFILE, budget
from invariants import report
from policy_model import UNSET, PolicyModel, Verdict, status_verdict
from transitions import MachineError

from lifecycle import FINAL_STATES, STATES, TRANSITIONS, Fault, RetryPolicy, Timeouts
from lifecycle._core.events import (
    AttemptFailed,
    AttemptStarted,
    CleanupFinished,
    FirstEventReceived,
    LifecycleEvent,
    RoutesExhausted,
    RouteSkipped,
    StallDetected,
    StreamFinished,
)
from lifecycle._core.machine import CLEANUP_STEPS, FAULTS, IN_FLIGHT, TRIGGER_OF, RouteInfo, RunCore
from providers._sdk.classify import status_fault

# Green, the test takes about a minute; red, Hypothesis then shrinks for up to 300 s
# (MAX_SHRINKING_SECONDS), and a timeout in the middle of that loses the counterexample
# (it surfaces as a FlakyStrategyDefinition instead).
pytestmark = pytest.mark.timeout(480)

MODES = ("anthropic_messages", "chat_completions")
ROWS = frozenset((r["trigger"], r["source"], r["dest"]) for r in TRANSITIONS)
T0 = 5000.0


class CoreViolation(AssertionError):
    """An invariant of the pure core failed."""


# -- strategies ---------------------------------------------------------------------------

seconds = st.floats(0.0, 0.5) | st.floats(0.0, 120.0)
"""Time between two events: mostly short (retries fit in Timeouts.total), sometimes long."""


# Edges drawn on purpose: no jitter (the wait is exact, so the model pins it), a cap the
# backoff reaches at once, a max_retry_after equal to a Retry-After sent. Built once:
# building a strategy inside a draw costs more than the core's whole example.
_INITIAL_BACKOFF = st.floats(0.0, 5.0)
_CAP_FACTOR = st.sampled_from([1.0, 1.5]) | st.floats(1.0, 8.0)
_CAP_EXTRA = st.just(0.0) | st.floats(0.0, 30.0)
_JITTER = st.sampled_from([0.0, 1.0]) | st.floats(0.0, 1.0)
_MAX_RETRY_AFTER = st.sampled_from((0.25, 0.5, 90.0)) | st.floats(0.0, 120.0)
_ON_PARTIAL = st.sampled_from(["restart", "fail", "continue"])
# UNSET leaves the field out: the model then applies the README's default, not the
# policy's, so a changed default disagrees with it.
_STALE_BEFORE_FALLBACK: st.SearchStrategy[int | Literal["unset"] | None] = (
    st.just(UNSET) | st.none() | st.integers(1, 3)
)
RetryChoice = tuple[RetryPolicy, int | Literal["unset"] | None]
"""A policy and the ``stale_before_fallback`` the caller passed to it (or ``UNSET``)."""


@st.composite
def retry_policies(draw: st.DrawFn) -> RetryChoice:
    initial = draw(_INITIAL_BACKOFF)
    stale_before_fallback = draw(_STALE_BEFORE_FALLBACK)
    policy = RetryPolicy(
        max_attempts=draw(st.integers(1, 4)),
        initial_backoff=initial,
        max_backoff=initial * draw(_CAP_FACTOR) + draw(_CAP_EXTRA),
        jitter=draw(_JITTER),
        max_retry_after=draw(_MAX_RETRY_AFTER),
        on_partial=draw(_ON_PARTIAL),
        **(
            {}
            if stale_before_fallback == UNSET
            else {"stale_before_fallback": stale_before_fallback}
        ),
    )
    return policy, stale_before_fallback


@st.composite
def timeouts(draw: st.DrawFn) -> Timeouts:
    total = draw(st.floats(1.0, 600.0))
    return Timeouts(
        connect=draw(st.floats(0.1, total)),
        first_token=draw(st.floats(0.1, total)),
        stale=draw(st.floats(0.1, 600.0)),
        total=total,
    )


_FLAGGED = [
    (
        Fault(
            outcome=outcome,
            retryable=retryable,
            fallback_eligible=fallback,
            reason=reason,
            http_status=status,
            retry_after=retry_after,
            api_mode=mode,
        ),
        Verdict(retry=retryable, other_route=fallback, retry_after=retry_after),
    )
    for outcome, reason, status in (
        ("dropped", "connection lost", None),
        ("error", "HTTP 529: overloaded", 529),
        ("error", "HTTP 401: sk-ant-secret12345 is invalid", 401),
        ("error", "HTTP 400: bad request", 400),
    )
    for retryable in (True, False)
    for fallback in (True, False)
    for retry_after, mode in ((None, None), (0.5, MODES[0]), (90.0, MODES[1]))
]
"""Every combination of the policy's inputs, judged by the Fault's own flags (its
docstring: retryable, fallback-eligible, or neither: a request error)."""

HEADERS: tuple[tuple[dict[str, str], float | None], ...] = (
    ({}, None),
    ({"retry-after": "0.5"}, 0.5),
    ({"retry-after": "90"}, 90.0),
    ({"retry-after-ms": "250"}, 0.25),
    ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),  # a date past: now
    # README: "Retry-After that says nothing usable ... is treated as absent".
    ({"retry-after": "soon"}, None),
    ({"retry-after": "120s"}, None),
    ({"retry-after": "Wed, 99 Foo 2015 07:28:00 GMT"}, None),
    ({"retry-after": "-3"}, None),
    ({"retry-after": "nan"}, None),
)
"""Retry-After headers, with the wait the README says each one asks for."""

_CLASSIFIED = [
    (
        status_fault(status, api_mode=mode, message="from the provider", headers=headers),
        status_verdict(status, wait),
    )
    for status in (400, 413, 422, 401, 403, 404, 402, 418, 408, 409, 429, 500, 503, 529)
    for (headers, wait), mode in zip(HEADERS, itertools.cycle(MODES), strict=False)
]
"""Faults as the adapters' classifier makes them from a status and headers, judged by
the status and the header alone (the README's table), not by the flags it set."""

FAULT_CASES = _FLAGGED + _CLASSIFIED

KINDS = list(TRIGGER_OF)
EVENT_FIELDS = {"pick": st.integers(0, 7), "dt": seconds, "param": st.integers(0, 2**16)}

STATS: Counter[str] = Counter()
ROWS_TAKEN: Counter[tuple[str, str, str]] = Counter()


class CoreMachine(RuleBasedStateMachine):
    """Random events against one ``RunCore``; the invariants are checked after each step."""

    trace: ClassVar[bool] = False

    def __init__(self) -> None:
        super().__init__()
        STATS["examples"] += 1
        self.core: RunCore | None = None
        self.model: PolicyModel | None = None
        self.verdict: Verdict | None = None
        self.t = T0
        self.final: str | None = None
        self.fed: list[str] = []

    @initialize(
        modes=st.lists(st.sampled_from(MODES), min_size=1, max_size=4),
        retry=retry_policies(),
        clocks=timeouts(),
        seed=st.integers(0, 2**32 - 1),
    )
    def start(self, modes: list[str], retry: RetryChoice, clocks: Timeouts, seed: int) -> None:
        policy, stale_before_fallback = retry
        STATS["runs"] += 1
        self.final = None
        self.fed = []
        self.t = T0
        routes = [
            RouteInfo(api_mode=mode, model=f"model-{i}", target=("route", i, mode))
            for i, mode in enumerate(modes)
        ]
        self.core = RunCore(
            routes=routes, timeouts=clocks, retry=policy, started_at=T0, rng=random.Random(seed)
        )
        self.model = PolicyModel(
            routes=len(routes),
            retry=policy,
            stale_before_fallback=stale_before_fallback,
            timeouts=clocks,
            started_at=T0,
        )

    def _check(self, condition: bool, message: str) -> None:
        if not condition:
            core = self.core
            path = " -> ".join(
                [core.history[0].source, *(f"{t.dest} ({t.trigger})" for t in core.history)]
                if core is not None and core.history
                else ["idle"]
            )
            routes = [r.api_mode for r in core.routes] if core is not None else []
            raise CoreViolation(
                f"{message}\n  routes: {routes}\n  {core.retry if core else ''}\n"
                f"  {core.timeouts if core else ''}, started at {T0}\n"
                f"  path: {path}\n  events fed: " + "\n    ".join(["", *self.fed[-15:]])
            )

    # -- feeding --------------------------------------------------------------------------
    def _snapshot(self) -> Any:
        """Everything a rejected event could have touched."""
        core = self.core
        assert core is not None
        return (
            core.state,
            list(core.history),
            [a.as_dict() for a in core.attempts],
            list(core.attempts_per_route),
            core.committed,
            core.restart_pending,
            core.interrupt_requested,
            core.last_fault,
            core.total_expired,
            core.decision,
            core.pending_cleanup,
            self.t,
        )

    def _feed(self, event: LifecycleEvent) -> None:
        core = self.core
        assert core is not None
        STATS["steps"] += 1
        self.fed.append(f"{event!r} in {core.state}")
        trigger = TRIGGER_OF[type(event)]
        allowed = any(row[0] == trigger and row[1] == core.state for row in ROWS)
        before_state = core.state
        before_len = len(core.history)
        if not allowed:
            snapshot = self._snapshot()
            try:
                core.feed(event)
            except MachineError:
                STATS["rejected"] += 1
            else:
                raise CoreViolation(f"{type(event).__name__} accepted in {before_state}")
            self._check(self._snapshot() == snapshot, f"a rejected {trigger} changed the records")
            return
        core.feed(event)
        STATS["accepted"] += 1
        assert self.model is not None
        self.model.taken(event, self.verdict if isinstance(event, AttemptFailed) else None)
        if isinstance(event, CleanupFinished) and core.decision is not None:
            STATS[f"decided {core.decision.kind}"] += 1
        new = core.history[before_len:]
        self._check(bool(new), f"{trigger} allowed in {before_state} but took no transition")
        self._check(new[0].trigger == trigger, f"{trigger} took {new[0]}")
        for transition in new:
            ROWS_TAKEN[(transition.trigger, transition.source, transition.dest)] += 1
        if new[0].dest in FAULTS:
            self._check(
                len(new) == 2 and new[1].trigger == "begin_cleanup",
                f"a fault state was rested in: {new}",
            )
        if trigger == "finish_cleanup":
            self._check(core.state != "cleanup", "finish_cleanup left the run in cleanup")
        if self.final is None and core.state in FINAL_STATES:
            self.final = core.state

    def _tick(self, dt: float) -> float:
        self.t += dt
        return self.t

    # -- events -------------------------------------------------------------------------
    def _event(self, kind: type, dt: float, param: int) -> LifecycleEvent:
        """An event of ``kind``, ``dt`` after the previous one; ``param`` picks its fields
        (one integer draw: Hypothesis' draws, not the core, are what an example costs)."""
        core = self.core
        assert core is not None
        at = self._tick(dt)
        clock = ("first_token", "stale", "total")[param % 3]
        fault, self.verdict = FAULT_CASES[param % len(FAULT_CASES)]
        interrupted = bool(param & 1)
        route = param % 4
        if kind is AttemptStarted:
            if core.state in ("idle", "retrying", "falling_back"):
                route = _next_route(core)  # where a driver goes
            else:  # rejected anyway: any route
                route %= len(core.routes)
            return AttemptStarted(at=at, route_index=route)
        if kind in (RouteSkipped, RoutesExhausted):
            # A breaker refused the route the driver was about to use: it skips it while
            # a later route is left, and gives up when none is.
            nxt = _next_route(core) if core.state in ("idle", "retrying", "falling_back") else 0
            if nxt + 1 < len(core.routes) and kind is RouteSkipped:
                return RouteSkipped(at=at, route_index=nxt, reason="breaker open")
            return RoutesExhausted(at=at, reason="no route admits the run")
        if kind is StallDetected:
            return StallDetected(at=at, clock=clock, deadline=at)  # type: ignore[arg-type]
        if kind is AttemptFailed:
            return AttemptFailed(at=at, fault=fault)
        if kind is CleanupFinished:
            return CleanupFinished(at=at, interrupted=interrupted, continuable=bool(param & 2))
        return kind(at=at)  # type: ignore[no-any-return]

    def _allowed(self) -> list[type]:
        core = self.core
        assert core is not None
        return [
            kind
            for kind, trigger in TRIGGER_OF.items()
            if any(row[0] == trigger and row[1] == core.state for row in ROWS)
        ]

    # Every rule draws the same three numbers up front: ``pick`` chooses the kind of
    # event, ``param`` its fields. The events fed are listed in any failure's message.
    @precondition(lambda self: self.core is not None and not self.core.is_final)
    @rule(**EVENT_FIELDS)
    def any_event(self, pick: int, dt: float, param: int) -> None:
        """Any of the eight kinds, allowed in the current state or not."""
        self._feed(self._event(KINDS[pick % len(KINDS)], dt, param))

    @precondition(lambda self: self.core is not None and not self.core.is_final)
    @rule(**EVENT_FIELDS)
    def allowed_event(self, pick: int, dt: float, param: int) -> None:
        """A kind the state allows: most random events are rejected (a state allows one
        to three kinds of eight), and runs must get deep too, through retries and
        fallbacks over several routes to every final state."""
        kinds = self._allowed()
        self._feed(self._event(kinds[pick % len(kinds)], dt, param))

    @precondition(lambda self: self.core is not None and not self.core.is_final)
    @rule(**EVENT_FIELDS)
    def driver_step(self, pick: int, dt: float, param: int) -> None:
        """What a driver meeting faults reports: an attempt wherever one may start, mostly
        a fault while one runs, the end of a cleanup the caller did not interrupt. Runs
        go deep, through the retries and fallbacks where the policy decides."""
        core = self.core
        assert core is not None
        kind: type = {
            "connecting": (AttemptFailed, StallDetected, FirstEventReceived)[pick % 3],
            "streaming": (AttemptFailed, StallDetected, AttemptFailed, StreamFinished)[pick % 4],
            "cleanup": CleanupFinished,
        }.get(core.state, AttemptStarted)
        self._feed(self._event(kind, dt, param & ~1 if kind is CleanupFinished else param))

    @precondition(lambda self: self.core is not None and self.core.is_final)
    @rule(**EVENT_FIELDS)
    def after_the_end(self, pick: int, dt: float, param: int) -> None:
        """A final state allows nothing: any event is rejected and changes nothing."""
        self._feed(self._event(KINDS[pick % len(KINDS)], dt, param))

    @precondition(lambda self: self.core is not None and self.core.is_final)
    @rule(
        modes=st.lists(st.sampled_from(MODES), min_size=1, max_size=4),
        retry=retry_policies(),
        clocks=timeouts(),
        seed=st.integers(0, 2**32 - 1),
    )
    def next_run(self, modes: list[str], retry: RetryChoice, clocks: Timeouts, seed: int) -> None:
        """The run is over: the rest of the example drives a new one."""
        self.start(modes, retry, clocks, seed)

    # -- invariants -----------------------------------------------------------------------
    @invariant()
    def state_is_known_and_final_states_absorb(self) -> None:
        core = self.core
        if core is None:
            return
        self._check(core.state in STATES, f"unknown state {core.state}")
        self._check(core.state not in FAULTS, f"resting in the fault state {core.state}")
        if self.final is not None:
            self._check(core.state == self.final, f"left the final state {self.final}")

    @invariant()
    def history_is_contiguous(self) -> None:
        core = self.core
        if core is None:
            return
        history = core.history
        if not history:
            self._check(core.state == "idle", f"no transition but state {core.state}")
            return
        self._check(history[0].source == "idle", f"history starts at {history[0].source}")
        for before, after in itertools.pairwise(history):
            self._check(after.source == before.dest, f"{before} then {after}")
            self._check(after.at >= before.at, f"time went back: {before} then {after}")
        self._check(history[-1].dest == core.state, f"state {core.state}, last {history[-1]}")
        for t in history:
            self._check((t.trigger, t.source, t.dest) in ROWS, f"{t} is no row of TRANSITIONS")
        finals = [i for i, t in enumerate(history) if t.dest in FINAL_STATES]
        self._check(finals in ([], [len(history) - 1]), f"final states at {finals}")

    @invariant()
    def attempts_match_the_history(self) -> None:
        core = self.core
        if core is None:
            return
        starts = sum(1 for t in core.history if t.trigger == "start_attempt")
        self._check(len(core.attempts) == starts, f"{len(core.attempts)} attempts, {starts} starts")
        counts = [0] * len(core.routes)
        for attempt in core.attempts:
            route = core.routes[attempt.route_index]
            self._check(attempt.api_mode == route.api_mode, f"attempt {attempt.number} mode")
            counts[attempt.route_index] += 1
        self._check(counts == core.attempts_per_route, "attempts_per_route disagrees")
        self._check(
            max(counts, default=0) <= core.retry.max_attempts,
            f"attempts per route {counts} > max_attempts {core.retry.max_attempts}",
        )
        for attempt in core.attempts[:-1]:
            self._check(attempt.outcome is not None, f"attempt {attempt.number} never closed")
        if core.attempts:
            active = core.attempts[-1]
            self._check(
                (active.outcome is None) == (core.state in IN_FLIGHT),
                f"active attempt outcome {active.outcome} in {core.state}",
            )
        streamed = any(t.trigger == "receive_first_event" for t in core.history)
        self._check(core.committed == streamed, "committed disagrees with the history")

    @invariant()
    def cleanup_targets_the_active_attempts_route(self) -> None:
        core = self.core
        if core is None:
            return
        plan = core.pending_cleanup
        if core.state == "cleanup":
            self._check(plan is not None, "in cleanup without a plan")
        if plan is None:
            return
        attempt = core.active_attempt
        route = core.routes[attempt.route_index]
        self._check(plan.attempt is attempt, f"plan for attempt {plan.attempt.number}")
        self._check(
            plan.route is route.target,
            f"cleanup of attempt {attempt.number} ({attempt.api_mode}, route "
            f"{attempt.route_index}) aimed at {plan.route!r}",
        )
        self._check(
            plan.api_mode == attempt.api_mode == route.api_mode,
            f"cleanup names {plan.api_mode}, the attempt runs on {attempt.api_mode}",
        )
        self._check(plan.steps == CLEANUP_STEPS, f"steps {plan.steps}")

    @invariant()
    def decisions_are_consistent(self) -> None:
        core = self.core
        if core is None or not core.attempts:
            return
        decision = core.decision
        attempt = core.active_attempt
        if core.state == "retrying":
            self._check(decision is not None and decision.kind == "retry", f"{decision}")
            assert decision is not None
            self._check(decision.route_index == attempt.route_index, "retry on another route")
            self._check(decision.delay >= 0, f"negative backoff {decision.delay}")
        if core.history and core.history[-1].trigger == "skip_route":
            skipped = core.skips[-1][0]
            self._check(skipped + 1 < len(core.routes), "skipped the last route")
            self._check(_next_route(core) == skipped + 1, "a skip does not lead to the next route")
        elif core.state == "falling_back":
            self._check(decision is not None and decision.kind == "fallback", f"{decision}")
            assert decision is not None
            self._check(decision.route_index == attempt.route_index + 1, "fallback skips a route")
            self._check(decision.route_index < len(core.routes), "fallback past the last route")
        for before, after in zip(core.history, core.history[2:], strict=False):
            if before.dest == "interrupted":
                self._check(
                    after.dest == "cancelled", f"an interrupted attempt led to {after.dest}"
                )

    @invariant()
    def the_policy_decides_as_the_reference_model(self) -> None:
        """State and decision after every step are what ``policy_model`` says the README
        asks for, from the config and the events alone; so are the counts per route."""
        core, model = self.core, self.model
        if core is None or model is None:
            return
        self._check(
            core.attempts_per_route == model.attempts,
            f"attempts per route {core.attempts_per_route}, the model counts {model.attempts}",
        )
        self._check(
            core.stale_per_route == model.stale,
            f"stale attempts per route {core.stale_per_route}, the model counts {model.stale}",
        )
        decision = core.decision
        wrong = model.disagreement(
            state=core.state,
            kind=decision.kind if decision else None,
            route=decision.route_index if decision else None,
            delay=decision.delay if decision else 0.0,
            restart_pending=core.restart_pending,
            continue_pending=core.continue_pending,
        )
        self._check(wrong is None, f"policy: {wrong}")


def _next_route(core: RunCore) -> int:
    """The route a driver starts next: after a breaker's skip, the one after it; else
    the last decision's (route 0 at first)."""
    if core.history and core.history[-1].trigger == "skip_route":
        return core.skips[-1][0] + 1
    if core.state == "idle" or core.decision is None:
        return 0
    return core.decision.route_index


def run_core_machine(**overrides: Any) -> None:
    chosen: dict[str, Any] = {
        "max_examples": budget("core"),
        "stateful_step_count": budget("core_steps"),
    }
    run_state_machine_as_test(CoreMachine, settings=settings(**(chosen | overrides)))


@pytest.fixture(scope="module")
def counts(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    report(
        request.config,
        [
            f"test_stateful_core ({PROFILE} profile): max_examples={budget('core')}, "
            f"{STATS['examples']} state machines run (Hypothesis' count includes discarded "
            f"and replayed ones), {STATS['runs']} runs, {STATS['steps']} events "
            f"({STATS['accepted']} taken, {STATS['rejected']} rejected with MachineError), "
            f"{len(ROWS_TAKEN)}/{len(ROWS)} rows of TRANSITIONS taken; decisions checked "
            "against the policy model: "
            + ", ".join(
                f"{STATS[f'decided {k}']} {k}" for k in ("retry", "fallback", "fail", "cancel")
            )
        ],
    )


def test_the_core_keeps_its_invariants_under_any_events(counts: None) -> None:
    run_core_machine()
    assert set(ROWS_TAKEN) == set(ROWS), f"rows never taken: {set(ROWS) - set(ROWS_TAKEN)}"
