"""The transition table and the policy, through ``RunCore`` alone: no I/O, no clock.

Every ``RunCore`` made here goes through ``Sim`` and is remembered, so the last test can
check that the unit tests, between them, walked every row of ``_machine.TRANSITIONS``.
"""

from __future__ import annotations

import inspect
import random
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mutations import MUTATIONS
from transitions import MachineError

from lifecycle import FINAL_STATES, STATES, TRANSITIONS, Fault, RetryPolicy, Timeouts
from lifecycle._core import machine as _machine
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
from lifecycle._core.machine import TRIGGER_OF, RouteInfo, RunCore
from providers._sdk.classify import status_fault

pytestmark = pytest.mark.timeout(60)

T0 = 1000.0
ANTHROPIC = "anthropic_messages"
OPENAI = "chat_completions"

RETRYABLE = Fault(
    outcome="dropped", retryable=True, fallback_eligible=True, reason="connection lost"
)

_CORES: list[RunCore] = []
"""Every core the tests of this module built, for the coverage check at the end."""


@dataclass(frozen=True)
class Target:
    """Stands for a provider route object: the machine only carries it around."""

    api_mode: str
    index: int


SIM_POLICY = RetryPolicy(
    max_attempts=2, initial_backoff=0.5, max_backoff=4.0, jitter=0.0, stale_before_fallback=None
)
"""Stalls are retried on their route like any transient fault, so that the scenarios
below walk the ``retrying`` rows after a stall as well; the default's at-once fallback
after a stall has scenarios of its own (``test_a_stall_falls_back_at_once_by_default``)."""


class Sim:
    """Feeds a ``RunCore`` the events a driver would, on a fake monotonic timeline."""

    def __init__(
        self,
        modes: tuple[str, ...] = (ANTHROPIC, OPENAI),
        *,
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
        seed: int = 0,
    ) -> None:
        routes = tuple(
            RouteInfo(api_mode=mode, model=f"model-{i}", target=Target(mode, i))
            for i, mode in enumerate(modes)
        )
        self.core = RunCore(
            routes=routes,
            timeouts=timeouts or Timeouts(first_token=1.0, stale=1.0, total=100.0),
            retry=retry or SIM_POLICY,
            started_at=T0,
            rng=random.Random(seed),
        )
        self.t = T0
        _CORES.append(self.core)

    # -- the timeline ------------------------------------------------------------------
    def tick(self, dt: float = 0.01) -> float:
        self.t += dt
        return self.t

    def feed(self, event: LifecycleEvent) -> Sim:
        self.core.feed(event)
        return self

    # -- what a driver reports --------------------------------------------------------
    def start(self, route_index: int | None = None) -> Sim:
        if route_index is None:
            decision = self.core.decision
            route_index = decision.route_index if decision is not None else 0
        return self.feed(AttemptStarted(at=self.tick(), route_index=route_index))

    def first(self) -> Sim:
        return self.feed(FirstEventReceived(at=self.tick()))

    def finish(self) -> Sim:
        return self.feed(StreamFinished(at=self.tick()))

    def stall(self, clock: str = "stale") -> Sim:
        at = self.tick()
        return self.feed(StallDetected(at=at, clock=clock, deadline=at))  # type: ignore[arg-type]

    def fail(self, fault: Fault = RETRYABLE) -> Sim:
        return self.feed(AttemptFailed(at=self.tick(), fault=fault))

    def status(self, code: int, headers: dict[str, str] | None = None) -> Sim:
        mode = self.core.active_attempt.api_mode
        return self.fail(status_fault(code, api_mode=mode, message="x", headers=headers))

    def interrupt(self) -> Sim:
        return self.feed(InterruptRequested(at=self.tick()))

    def cleaned(self, *, interrupted: bool = False) -> Sim:
        return self.feed(CleanupFinished(at=self.tick(), interrupted=interrupted))

    def expire(self) -> Sim:
        return self.feed(DeadlinePassed(at=self.tick()))

    def skip(self, route_index: int, reason: str = "breaker open") -> Sim:
        return self.feed(RouteSkipped(at=self.tick(), route_index=route_index, reason=reason))

    def exhaust(self, reason: str = "no route admits the run") -> Sim:
        return self.feed(RoutesExhausted(at=self.tick(), reason=reason))

    # -- what happened -------------------------------------------------------------------
    @property
    def state(self) -> str:
        return self.core.state

    def path(self) -> list[str]:
        history = self.core.history
        return [history[0].source, *(t.dest for t in history)] if history else [self.state]

    def rows(self) -> set[tuple[str, str, str]]:
        return {(t.trigger, t.source, t.dest) for t in self.core.history}


def table_rows() -> set[tuple[str, str, str]]:
    return {(row["trigger"], row["source"], row["dest"]) for row in _machine.TRANSITIONS}


def assert_cleanup_targets_active_route(core: RunCore) -> None:
    plan = core.pending_cleanup
    assert plan is not None, "a fault state was passed without a cleanup plan"
    attempt = core.active_attempt
    route = core.routes[attempt.route_index]
    assert plan.attempt is attempt
    assert plan.route is route.target, (
        f"cleanup aimed at {plan.route!r}, the active attempt runs on {route.target!r}"
    )
    assert plan.api_mode == attempt.api_mode == route.api_mode
    assert plan.steps == ("abort", "close", "rebuild")


# -- every row, one scenario at a time ------------------------------------------------------


def test_completes_on_the_first_attempt() -> None:
    sim = Sim().start().first().finish()
    assert sim.path() == ["idle", "connecting", "streaming", "completed"]
    assert sim.core.is_final
    assert sim.core.attempts[0].outcome == "completed"
    assert sim.core.pending_cleanup is None


def test_stall_while_connecting_then_retry() -> None:
    sim = Sim().start().stall("first_token")
    assert sim.state == "cleanup"
    assert_cleanup_targets_active_route(sim.core)
    assert sim.core.attempts[0].outcome == "stale"
    assert sim.core.attempts[0].diagnostics.stall_clock == "first_token"
    sim.cleaned()
    assert sim.state == "retrying"
    assert sim.core.decision is not None and sim.core.decision.kind == "retry"
    assert sim.core.restart_pending is False  # nothing was delivered: retried invisibly
    sim.start().first().finish()
    assert sim.path() == [
        "idle",
        "connecting",
        "stale",
        "cleanup",
        "retrying",
        "connecting",
        "streaming",
        "completed",
    ]
    assert [a.route_index for a in sim.core.attempts] == [0, 0]


@pytest.mark.parametrize("delivered", [False, True], ids=["connecting", "streaming"])
def test_a_stall_falls_back_at_once_by_default(delivered: bool) -> None:
    policy = RetryPolicy(max_attempts=2, initial_backoff=0.5, max_backoff=4.0, jitter=0.0)
    sim = Sim(retry=policy).start()
    if delivered:
        sim.first()
    sim.stall("stale" if delivered else "first_token").cleaned()
    assert sim.state == "falling_back"
    decision = sim.core.decision
    assert decision is not None and (decision.kind, decision.route_index) == ("fallback", 1)
    assert decision.delay == 0
    assert sim.core.restart_pending is delivered
    # On the last route nothing else can answer: its stall is retried there.
    sim.start().stall("first_token").cleaned()
    assert sim.state == "retrying"
    assert sim.core.decision is not None and sim.core.decision.route_index == 1
    sim.start().first().finish()
    assert [(a.route_index, a.outcome) for a in sim.core.attempts] == [
        (0, "stale"),
        (1, "stale"),
        (1, "completed"),
    ]


def test_stall_while_streaming_then_restart() -> None:
    sim = Sim().start().first().stall("stale")
    assert sim.path()[-3:] == ["streaming", "stale", "cleanup"]
    assert_cleanup_targets_active_route(sim.core)
    sim.cleaned()
    assert sim.state == "retrying"
    assert sim.core.restart_pending is True  # output was delivered: the caller must restart
    sim.start().first().finish()
    assert sim.state == "completed"


def test_drop_while_connecting_then_fall_back() -> None:
    sim = Sim(retry=RetryPolicy(max_attempts=1)).start().fail()
    assert sim.path() == ["idle", "connecting", "dropped", "cleanup"]
    assert_cleanup_targets_active_route(sim.core)
    sim.cleaned()
    assert sim.state == "falling_back"
    decision = sim.core.decision
    assert decision is not None and decision.route_index == 1 and decision.delay == 0
    sim.start()
    assert sim.state == "connecting"
    assert sim.core.active_attempt.route_index == 1
    assert sim.core.active_attempt.api_mode == OPENAI
    sim.first().finish()
    assert sim.path()[-5:] == ["cleanup", "falling_back", "connecting", "streaming", "completed"]


def test_drop_while_streaming_then_fail_when_routes_are_used_up() -> None:
    sim = Sim((ANTHROPIC,), retry=RetryPolicy(max_attempts=1)).start().first().fail()
    assert sim.path() == ["idle", "connecting", "streaming", "dropped", "cleanup"]
    sim.cleaned()
    assert sim.state == "failed"
    assert sim.core.decision is not None and "every route used up" in sim.core.decision.reason


def test_interrupt_while_connecting() -> None:
    sim = Sim().start().interrupt()
    assert sim.path() == ["idle", "connecting", "interrupted", "cleanup"]
    assert_cleanup_targets_active_route(sim.core)
    assert sim.core.attempts[0].outcome == "interrupted"
    sim.cleaned(interrupted=True)
    assert sim.state == "cancelled"
    assert sim.core.decision is not None and sim.core.decision.kind == "cancel"


def test_interrupt_while_streaming() -> None:
    sim = Sim().start().first().interrupt()
    assert sim.path()[-3:] == ["streaming", "interrupted", "cleanup"]
    sim.cleaned(interrupted=True)
    assert sim.state == "cancelled"


def test_interrupt_before_any_attempt() -> None:
    sim = Sim().interrupt()
    assert sim.path() == ["idle", "cancelled"]
    assert sim.core.attempts == []


def test_interrupt_during_backoff() -> None:
    sim = Sim().start().fail().cleaned()
    assert sim.state == "retrying"
    sim.interrupt()
    assert sim.state == "cancelled"
    assert len(sim.core.attempts) == 1


def test_interrupt_while_falling_back() -> None:
    sim = Sim().start().status(401).cleaned()
    assert sim.state == "falling_back"
    sim.interrupt()
    assert sim.state == "cancelled"


def test_interrupt_during_cleanup_cancels() -> None:
    """interrupt() while the driver cleans up after a retryable fault: no retry."""
    sim = Sim().start().fail().cleaned(interrupted=True)
    assert sim.state == "cancelled"


def test_deadline_during_backoff_fails() -> None:
    sim = Sim().start().fail().cleaned()
    assert sim.state == "retrying"
    sim.expire()
    assert sim.path()[-2:] == ["retrying", "failed"]


def test_deadline_while_falling_back_fails() -> None:
    sim = Sim().start().status(403).cleaned()
    assert sim.state == "falling_back"
    sim.expire()
    assert sim.path()[-2:] == ["falling_back", "failed"]


def test_an_open_breaker_skips_the_first_route() -> None:
    """The first route's breaker refuses the run before any attempt: it falls back."""
    sim = Sim().skip(0)
    assert sim.path() == ["idle", "falling_back"]
    assert sim.core.attempts == [] and sim.core.skips == [(0, "breaker open")]
    sim.start(1).first().finish()
    assert sim.path()[-4:] == ["falling_back", "connecting", "streaming", "completed"]
    assert sim.core.attempts[0].route_index == 1


def test_a_retry_on_a_route_whose_breaker_opened_falls_back() -> None:
    sim = Sim().start().stall().cleaned()
    assert sim.state == "retrying"
    sim.skip(0).start(1).first().finish()
    assert sim.path()[-5:] == ["retrying", "falling_back", "connecting", "streaming", "completed"]
    assert [a.route_index for a in sim.core.attempts] == [0, 1]


def test_skips_chain_while_falling_back() -> None:
    sim = Sim((ANTHROPIC, OPENAI, ANTHROPIC)).skip(0).skip(1)
    assert sim.path() == ["idle", "falling_back", "falling_back"]
    sim.start(2).first().finish()
    assert sim.state == "completed"


@pytest.mark.parametrize("before", ["idle", "retrying", "falling_back"])
def test_no_route_admitting_the_run_fails_it(before: str) -> None:
    sim = Sim()
    if before == "retrying":
        sim.start().fail().cleaned()
    elif before == "falling_back":
        sim.skip(0)
    assert sim.state == before
    sim.exhaust("no route admits the run (x)")
    assert sim.path()[-2:] == [before, "failed"]
    assert sim.core.last_fault is not None and "no route admits" in sim.core.last_fault.reason
    assert sim.core.decision is not None and sim.core.decision.kind == "fail"


def test_request_error_fails() -> None:
    sim = Sim().start().status(400).cleaned()
    assert sim.path() == ["idle", "connecting", "dropped", "cleanup", "failed"]
    assert sim.core.attempts[0].diagnostics.http_status == 400
    assert sim.core.attempts[0].outcome == "error"


# -- rejected triggers and final states ------------------------------------------------------


def _event_of(kind: type, at: float) -> LifecycleEvent:
    if kind is AttemptStarted:
        return AttemptStarted(at=at, route_index=0)
    if kind is StallDetected:
        return StallDetected(at=at, clock="stale", deadline=at)
    if kind is AttemptFailed:
        return AttemptFailed(at=at, fault=RETRYABLE)
    if kind is RouteSkipped:
        return RouteSkipped(at=at, route_index=0, reason="breaker open")
    if kind is RoutesExhausted:
        return RoutesExhausted(at=at, reason="no route admits the run")
    return kind(at=at)  # type: ignore[no-any-return]


def _sim_in(state: str) -> Sim:
    """A core resting in ``state``, reached by the events a driver would feed.

    The fault states are never rested in (``begin_cleanup`` follows at once), so they
    are set on a core whose attempt is in flight."""
    sim = Sim()
    if state == "idle":
        return sim
    if state == "connecting":
        return sim.start()
    if state == "streaming":
        return sim.start().first()
    if state in ("stale", "dropped", "interrupted"):
        sim.start().first()
        sim.core.state = state
        return sim
    if state == "cleanup":
        return sim.start().fail()
    if state == "retrying":
        return sim.start().fail().cleaned()
    if state == "falling_back":
        return sim.start().status(404).cleaned()
    if state == "completed":
        return sim.start().first().finish()
    if state == "failed":
        return sim.start().status(422).cleaned()
    if state == "cancelled":
        return sim.interrupt()
    raise AssertionError(state)


def test_every_state_is_reachable_for_the_rejection_tests() -> None:
    for state in STATES:
        assert _sim_in(state).state == state


INVALID = [
    (state, kind)
    for state in STATES
    for kind, trigger in TRIGGER_OF.items()
    if not any(row["trigger"] == trigger and row["source"] == state for row in TRANSITIONS)
]


@pytest.mark.parametrize(
    ("state", "kind"), INVALID, ids=[f"{k.__name__}-in-{s}" for s, k in INVALID]
)
def test_invalid_trigger_raises_machine_error(state: str, kind: type) -> None:
    """An event the table has no row for is a driver bug: MachineError, state unchanged."""
    sim = _sim_in(state)
    with pytest.raises(MachineError):
        sim.feed(_event_of(kind, sim.tick()))
    assert sim.state == state


def _records(core: RunCore) -> tuple[Any, ...]:
    return (
        [
            (a.number, a.route_index, a.outcome, a.reason, a.diagnostics.elapsed)
            for a in core.attempts
        ],
        list(core.attempts_per_route),
        core.last_fault,
        core.committed,
        core.decision,
        len(core.history),
    )


@pytest.mark.parametrize(
    ("state", "kind"), INVALID, ids=[f"{k.__name__}-in-{s}" for s, k in INVALID]
)
def test_rejected_event_leaves_the_records_unchanged(state: str, kind: type) -> None:
    """A rejected event must not half-apply: no attempt opened, no outcome overwritten."""
    sim = _sim_in(state)
    before = _records(sim.core)
    with pytest.raises(Exception):  # noqa: B017 - the kind is checked by the test above
        sim.feed(_event_of(kind, sim.tick()))
    assert _records(sim.core) == before


@pytest.mark.parametrize("state", FINAL_STATES)
def test_final_states_have_no_way_out(state: str) -> None:
    assert not [row for row in TRANSITIONS if row["source"] == state]
    sim = _sim_in(state)
    assert sim.core.is_final
    assert _machine.MACHINE.get_triggers(state) == []
    history = len(sim.core.history)
    for kind in TRIGGER_OF:
        with pytest.raises(MachineError):
            sim.feed(_event_of(kind, sim.tick()))
        assert sim.state == state
    assert len(sim.core.history) == history


def test_fault_states_are_never_rested_in() -> None:
    for sim in (Sim().start().stall(), Sim().start().fail(), Sim().start().first().interrupt()):
        assert sim.state == "cleanup"


# -- the policy ------------------------------------------------------------------------------


def test_retries_within_max_attempts_then_falls_back() -> None:
    sim = Sim(retry=RetryPolicy(max_attempts=3, initial_backoff=0.5, max_backoff=4, jitter=0))
    delays = []
    for _ in range(3):
        sim.start().fail().cleaned()
        assert sim.core.decision is not None
        delays.append(sim.core.decision.delay)
    assert sim.state == "falling_back"
    assert [a.route_index for a in sim.core.attempts] == [0, 0, 0]
    assert delays == [0.5, 1.0, 0.0]  # exponential backoff, then the next route at once
    sim.start().first().finish()
    assert sim.core.attempts[-1].route_index == 1
    assert sim.core.attempts_per_route == [3, 1]


def test_backoff_is_capped_and_jittered() -> None:
    policy = RetryPolicy(max_attempts=6, initial_backoff=0.5, max_backoff=2.0, jitter=1.0)
    sim = Sim((ANTHROPIC,), retry=policy, seed=7)
    for n in range(1, 6):
        sim.start().fail().cleaned()
        decision = sim.core.decision
        assert decision is not None and decision.kind == "retry"
        assert 0.0 <= decision.delay <= min(2.0, 0.5 * 2 ** (n - 1))
    sim.start().fail().cleaned()
    assert sim.state == "failed"
    assert len(sim.core.attempts) == 6


@pytest.mark.parametrize("status", [401, 403, 404])
def test_route_errors_fall_back_at_once(status: int) -> None:
    sim = Sim(retry=RetryPolicy(max_attempts=3)).start().status(status).cleaned()
    assert sim.state == "falling_back"
    decision = sim.core.decision
    assert decision is not None and decision.route_index == 1 and decision.delay == 0
    assert len(sim.core.attempts) == 1


@pytest.mark.parametrize("status", [401, 403, 404])
def test_route_errors_on_the_last_route_fail(status: int) -> None:
    sim = Sim((ANTHROPIC,), retry=RetryPolicy(max_attempts=3)).start().status(status).cleaned()
    assert sim.state == "failed"


@pytest.mark.parametrize("status", [400, 413, 422])
def test_request_errors_fail_fast(status: int) -> None:
    sim = Sim(retry=RetryPolicy(max_attempts=3)).start().status(status).cleaned()
    assert sim.state == "failed"
    assert len(sim.core.attempts) == 1
    assert sim.core.last_fault is not None and sim.core.last_fault.http_status == status


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 529])
def test_transient_statuses_retry(status: int) -> None:
    sim = Sim(retry=RetryPolicy(max_attempts=2)).start().status(status).cleaned()
    assert sim.state == "retrying"


def test_retry_after_above_max_backoff_is_honoured() -> None:
    policy = RetryPolicy(max_attempts=3, initial_backoff=0.1, max_backoff=1.0, max_retry_after=10)
    sim = Sim(retry=policy).start().status(429, {"retry-after": "5"}).cleaned()
    assert sim.state == "retrying"
    assert sim.core.decision is not None and sim.core.decision.delay == 5.0


def test_retry_after_ms_is_honoured() -> None:
    policy = RetryPolicy(max_attempts=3, initial_backoff=0.1, max_backoff=1.0, max_retry_after=10)
    sim = Sim(retry=policy).start().status(529, {"retry-after-ms": "2500"}).cleaned()
    assert sim.core.decision is not None and sim.core.decision.delay == 2.5


def test_retry_after_longer_than_max_retry_after_moves_on_at_once() -> None:
    policy = RetryPolicy(max_attempts=3, max_backoff=1.0, max_retry_after=10)
    sim = Sim(retry=policy).start().status(429, {"retry-after": "30"}).cleaned()
    assert sim.state == "falling_back"
    decision = sim.core.decision
    assert decision is not None and decision.route_index == 1 and decision.delay == 0


def test_retry_after_longer_than_max_retry_after_on_the_last_route_fails() -> None:
    policy = RetryPolicy(max_attempts=3, max_backoff=1.0, max_retry_after=10)
    sim = Sim((OPENAI,), retry=policy).start().status(429, {"retry-after": "30"}).cleaned()
    assert sim.state == "failed"
    assert sim.core.decision is not None and "max_retry_after" in sim.core.decision.reason


def test_on_partial_fail_after_output_was_delivered() -> None:
    policy = RetryPolicy(max_attempts=3, on_partial="fail")
    sim = Sim(retry=policy).start().first().stall().cleaned()
    assert sim.state == "failed"
    assert sim.core.decision is not None and "on_partial" in sim.core.decision.reason
    assert sim.core.restart_pending is False


def test_on_partial_fail_still_retries_before_any_output() -> None:
    policy = RetryPolicy(max_attempts=3, on_partial="fail", stale_before_fallback=None)
    sim = Sim(retry=policy).start().stall("first_token").cleaned()
    assert sim.state == "retrying"


def test_total_clock_fails_even_a_retryable_stall() -> None:
    sim = Sim(retry=RetryPolicy(max_attempts=5)).start().first().stall("total").cleaned()
    assert sim.state == "failed"
    assert sim.core.decision is not None and "Timeouts.total" in sim.core.decision.reason


def test_fault_after_the_deadline_fails() -> None:
    sim = Sim(
        timeouts=Timeouts(connect=1, first_token=1, stale=1, total=5),
        retry=RetryPolicy(max_attempts=5),
    )
    sim.start()
    sim.tick(10.0)
    sim.fail().cleaned()
    assert sim.state == "failed"


def test_backoff_that_would_pass_the_deadline_fails_on_the_last_route() -> None:
    sim = Sim(
        (ANTHROPIC,),
        timeouts=Timeouts(connect=1, first_token=1, stale=1, total=3),
        retry=RetryPolicy(max_attempts=5, max_backoff=1, max_retry_after=10),
    )
    sim.start().status(503, {"retry-after": "5"}).cleaned()
    assert sim.state == "failed"
    assert sim.core.decision is not None and "Timeouts.total" in sim.core.decision.reason


def test_backoff_that_would_pass_the_deadline_falls_back_to_a_later_route() -> None:
    sim = Sim(
        timeouts=Timeouts(connect=1, first_token=1, stale=1, total=3),
        retry=RetryPolicy(max_attempts=5, max_backoff=1, max_retry_after=10),
    )
    sim.start().status(503, {"retry-after": "5"}).cleaned()
    assert sim.state == "falling_back"
    assert sim.core.decision is not None and sim.core.decision.route_index == 1


# -- the cleanup plan is aimed at the active attempt's route ---------------------------------


@pytest.mark.parametrize(
    "modes", [(ANTHROPIC, OPENAI), (OPENAI, ANTHROPIC)], ids=["anthropic-first", "openai-first"]
)
def test_cleanup_targets_the_active_attempts_route(modes: tuple[str, str]) -> None:
    sim = Sim(modes, retry=RetryPolicy(max_attempts=2, stale_before_fallback=None))
    sim.start().first().stall()  # route 0 stalls
    assert_cleanup_targets_active_route(sim.core)
    assert sim.core.pending_cleanup is not None
    assert sim.core.pending_cleanup.api_mode == modes[0]
    sim.cleaned().start().status(401)  # route 0 again, then a route error
    assert sim.core.pending_cleanup is not None
    assert sim.core.pending_cleanup.route == Target(modes[0], 0)
    sim.cleaned()
    assert sim.state == "falling_back"
    sim.start().stall("first_token")  # route 1 stalls
    assert_cleanup_targets_active_route(sim.core)
    assert sim.core.pending_cleanup is not None
    assert sim.core.pending_cleanup.route == Target(modes[1], 1)
    assert sim.core.pending_cleanup.api_mode == modes[1]


def test_the_cleanup_check_catches_a_misdirected_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    """The original bug (an Anthropic stall 'cleaned up' by rebuilding the OpenAI client)
    is what ``assert_cleanup_targets_active_route`` must catch."""
    MUTATIONS["misdirect_cleanup"](monkeypatch)
    core = RunCore(
        routes=(
            RouteInfo(api_mode=ANTHROPIC, model="a", target=Target(ANTHROPIC, 0)),
            RouteInfo(api_mode=OPENAI, model="o", target=Target(OPENAI, 1)),
        ),
        timeouts=Timeouts(),
        retry=RetryPolicy(),
        started_at=T0,
        rng=random.Random(0),
    )
    core.feed(AttemptStarted(at=T0 + 1, route_index=0))
    core.feed(StallDetected(at=T0 + 2, clock="stale", deadline=T0 + 2))
    with pytest.raises(AssertionError, match="cleanup aimed at"):
        assert_cleanup_targets_active_route(core)


# -- random walks over the table ---------------------------------------------------------------

_KINDS = sorted(TRIGGER_OF, key=lambda k: k.__name__)


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(_KINDS),
            st.sampled_from(["stale", "first_token", "total"]),
            st.sampled_from([None, 400, 401, 404, 429, 500, 529]),
            st.floats(min_value=0.0, max_value=5.0),
        ),
        max_size=40,
    ),
    n_routes=st.integers(min_value=1, max_value=3),
    max_attempts=st.integers(min_value=1, max_value=3),
    on_partial=st.sampled_from(["restart", "fail"]),
)
def test_random_walks_obey_the_table(
    steps: list[tuple[type, str, int | None, float]],
    n_routes: int,
    max_attempts: int,
    on_partial: str,
) -> None:
    """Feed random events, skipping those the table has no row for in the current state
    (a correct driver never sends them); the run must keep every invariant."""
    modes = tuple([ANTHROPIC, OPENAI, ANTHROPIC][:n_routes])
    sim = Sim(
        modes,
        timeouts=Timeouts(first_token=1, stale=1, total=60),
        retry=RetryPolicy(max_attempts=max_attempts, on_partial=on_partial),  # type: ignore[arg-type]
    )
    core = sim.core
    rows = table_rows()
    for kind, clock, status, dt in steps:
        trigger = TRIGGER_OF[kind]
        if not any(t == trigger and s == core.state for t, s, _ in rows):
            continue
        sim.tick(dt)
        if kind is AttemptStarted:
            decision = core.decision
            if core.state != "idle" and decision is None:
                continue
            event: Any = AttemptStarted(
                at=sim.t, route_index=decision.route_index if decision else 0
            )
        elif kind is StallDetected:
            event = StallDetected(at=sim.t, clock=clock, deadline=sim.t)  # type: ignore[arg-type]
        elif kind is AttemptFailed:
            fault = (
                RETRYABLE
                if status is None
                else status_fault(status, api_mode=core.active_attempt.api_mode, message="x")
            )
            event = AttemptFailed(at=sim.t, fault=fault)
        elif kind is RouteSkipped:
            # A driver skips the route it was about to use, and only while one is left.
            decision = core.decision
            index = decision.route_index if decision is not None and core.state != "idle" else 0
            if core.state == "falling_back" and core.skips:
                index = core.skips[-1][0] + 1
            if index + 1 >= len(modes):
                continue
            event = RouteSkipped(at=sim.t, route_index=index, reason="breaker open")
        elif kind is RoutesExhausted:
            event = RoutesExhausted(at=sim.t, reason="no route admits the run")
        else:
            event = kind(at=sim.t)
        before = core.state
        core.feed(event)
        # The history is a connected path through rows of the table.
        assert core.history[0].source == "idle"
        for a, b in zip(core.history, core.history[1:], strict=False):
            assert a.dest == b.source
        assert {(t.trigger, t.source, t.dest) for t in core.history} <= rows
        assert core.state not in ("stale", "dropped", "interrupted")
        if core.state == "cleanup":
            assert_cleanup_targets_active_route(core)
        if before in FINAL_STATES:
            pytest.fail(f"left final state {before}")
        for count in core.attempts_per_route:
            assert count <= max_attempts
        if core.state == "completed":
            assert core.attempts[-1].outcome == "completed"
        if core.state == "failed" and core.committed and on_partial == "fail":
            assert core.restart_pending is False


# -- every row of the table was walked ---------------------------------------------------------


def test_every_row_of_the_table_is_exercised() -> None:
    """The union of the histories of this module's tests is exactly the table.

    The scenario tests above (those without parameters) are run again here, so the
    check holds whichever subset of the module was selected."""
    this = test_every_row_of_the_table_is_exercised
    for name, func in list(globals().items()):
        if (
            name.startswith("test_")
            and func is not this
            and inspect.isfunction(func)
            and not hasattr(func, "hypothesis")
            and not inspect.signature(func).parameters
        ):
            func()
    exercised: set[tuple[str, str, str]] = set()
    for core in _CORES:
        exercised |= {(t.trigger, t.source, t.dest) for t in core.history}
    table = table_rows()
    assert exercised - table == set(), "histories hold transitions that are not in the table"
    assert table - exercised == set(), "rows of the table no test walked"
    assert exercised == table
