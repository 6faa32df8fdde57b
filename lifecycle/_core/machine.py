"""The lifecycle of one streaming run, as a transition table.

Rules
-----
1. Every way out of ``connecting`` or ``streaming`` other than success goes through one
   of three fault states, ``stale`` (a clock ran out), ``dropped`` (the attempt broke:
   connection lost, malformed or truncated stream, error status or error event) or
   ``interrupted`` (the caller asked to stop), and from there through ``cleanup``.
2. The transition into ``cleanup`` carries the cleanup action. It is planned against
   the route of the attempt that is active, read from the attempt record; nothing in
   this package branches on an ``api_mode`` string, so the action cannot be aimed at
   another provider's client.
3. Only the way out of ``cleanup`` is decided by policy (``_policy.decide``): retry on
   the same route, fall back to the next, fail, or cancel. Guards read that decision.
4. ``completed``, ``failed`` and ``cancelled`` are final: no trigger leaves them.
5. Before an attempt starts, its route's circuit breaker (``_breaker``, the second
   machine) may refuse it: the run then ``skip_route``s to ``falling_back`` (the next
   route), and ``exhaust_routes`` ends it ``failed`` when no later route admits it. No
   attempt, so no cleanup: nothing was opened.

Theory of operation
-------------------
The machine is sans-I/O, in the spirit of h11: it never touches a socket, a thread or
a clock. Drivers (``_sync_driver`` for threads, ``_async_driver`` for asyncio) feed it
the frozen, timestamped events of ``_events`` and carry out what it decides: the
``CleanupPlan`` it leaves in ``RunCore.pending_cleanup``, and the ``Decision`` (with its
backoff) in ``RunCore.decision``. The watchdog and ``interrupt()`` never feed the
machine; they only abort the active connection (socket shutdown) and leave a note that
the owning thread reads when its blocked read returns, so the machine is only ever
touched by the thread or task that owns the run.

The machine is built once per process and fed on state changes only; per-event
progress is plain counters on the run. A row the machine would take with nothing to
evaluate (no guard, no action: ``PLAIN_ROWS``, read from the built machine) is assigned
by ``RunCore.feed`` instead of pulled as a ``transitions`` trigger, which costs 30-50 µs
on a 2-core runner; every guarded row, every cleanup and every decision is pulled.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

from transitions import EventData, Machine, MachineError

from .config import RetryPolicy, Timeouts
from .errors import Fault
from .events import (
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
from .policy import Decision, decide
from .records import AttemptRecord, Transition
from .redaction import header_subset, redact

__all__ = ["FINAL_STATES", "STATES", "TRANSITIONS", "CleanupPlan", "RouteInfo", "RunCore"]

IN_FLIGHT: Final = ("connecting", "streaming")
FAULTS: Final = ("stale", "dropped", "interrupted")
RECOVERY: Final = ("cleanup", "retrying", "falling_back")
FINAL_STATES: Final = ("completed", "failed", "cancelled")
STATES: Final = ("idle", *IN_FLIGHT, *FAULTS, *RECOVERY, *FINAL_STATES)

# The cleanup steps every fault transition carries, in order. ``abort`` is a socket
# shutdown of the attempt's own connection (idempotent: the watchdog or interrupt()
# may already have done it from their thread); ``close`` and ``rebuild`` retire the
# attempt's client and build its successor on the run's own thread.
CLEANUP_STEPS: Final = ("abort", "close", "rebuild")


@dataclass(frozen=True, kw_only=True, slots=True)
class RouteInfo:
    """What the machine knows of a route: enough to plan, nothing to do I/O with."""

    api_mode: str
    model: str
    target: object
    """The route object itself; the driver calls cleanup on exactly this object."""


@dataclass(frozen=True, kw_only=True, slots=True)
class CleanupPlan:
    attempt: AttemptRecord
    route: object
    """The route whose client is cleaned: always the route of ``attempt``."""
    api_mode: str
    steps: tuple[str, ...]


# Guards and actions: plain functions over EventData, referenced from the table below.
def _decided(kind: str) -> Callable[[EventData], bool]:
    def guard(ev: EventData) -> bool:
        core = cast(RunCore, ev.model)
        return core.decision is not None and core.decision.kind == kind

    guard.__name__ = f"decided_{kind}"
    guard.__qualname__ = guard.__name__
    return guard


decided_retry = _decided("retry")
decided_fallback = _decided("fallback")
decided_fail = _decided("fail")
decided_cancel = _decided("cancel")


def plan_cleanup(ev: EventData) -> None:
    """abort + close(api_mode) + rebuild, aimed at the active attempt's own route."""
    core = cast(RunCore, ev.model)
    core.plan_cleanup()


def decide_next(ev: EventData) -> None:
    core = cast(RunCore, ev.model)
    event = ev.kwargs["event"]
    core.decide_next(event.at, continuable=getattr(event, "continuable", False))


# The table. Triggers are named for what the driver reports; the order of rows with
# the same trigger and source matters only for guarded rows (first true guard wins).
TRANSITIONS: Final[tuple[dict[str, Any], ...]] = (
    {"trigger": "start_attempt", "source": "idle", "dest": "connecting"},
    {"trigger": "start_attempt", "source": "retrying", "dest": "connecting"},
    {"trigger": "start_attempt", "source": "falling_back", "dest": "connecting"},
    {"trigger": "receive_first_event", "source": "connecting", "dest": "streaming"},
    {"trigger": "finish", "source": "streaming", "dest": "completed"},
    {"trigger": "stall", "source": "connecting", "dest": "stale"},
    {"trigger": "stall", "source": "streaming", "dest": "stale"},
    {"trigger": "drop", "source": "connecting", "dest": "dropped"},
    {"trigger": "drop", "source": "streaming", "dest": "dropped"},
    {"trigger": "interrupt", "source": "connecting", "dest": "interrupted"},
    {"trigger": "interrupt", "source": "streaming", "dest": "interrupted"},
    {"trigger": "interrupt", "source": "idle", "dest": "cancelled"},
    {"trigger": "interrupt", "source": "retrying", "dest": "cancelled"},
    {"trigger": "interrupt", "source": "falling_back", "dest": "cancelled"},
    {"trigger": "begin_cleanup", "source": "stale", "dest": "cleanup", "after": plan_cleanup},
    {"trigger": "begin_cleanup", "source": "dropped", "dest": "cleanup", "after": plan_cleanup},
    {
        "trigger": "begin_cleanup",
        "source": "interrupted",
        "dest": "cleanup",
        "after": plan_cleanup,
    },
    {
        "trigger": "finish_cleanup",
        "source": "cleanup",
        "dest": "cancelled",
        "prepare": decide_next,
        "conditions": decided_cancel,
    },
    {
        "trigger": "finish_cleanup",
        "source": "cleanup",
        "dest": "retrying",
        "conditions": decided_retry,
    },
    {
        "trigger": "finish_cleanup",
        "source": "cleanup",
        "dest": "falling_back",
        "conditions": decided_fallback,
    },
    {
        "trigger": "finish_cleanup",
        "source": "cleanup",
        "dest": "failed",
        "conditions": decided_fail,
    },
    {"trigger": "expire", "source": "retrying", "dest": "failed"},
    {"trigger": "expire", "source": "falling_back", "dest": "failed"},
    {"trigger": "skip_route", "source": "idle", "dest": "falling_back"},
    {"trigger": "skip_route", "source": "retrying", "dest": "falling_back"},
    {"trigger": "skip_route", "source": "falling_back", "dest": "falling_back"},
    {"trigger": "exhaust_routes", "source": "idle", "dest": "failed"},
    {"trigger": "exhaust_routes", "source": "retrying", "dest": "failed"},
    {"trigger": "exhaust_routes", "source": "falling_back", "dest": "failed"},
)

# Which trigger each reported event pulls. Fault events are followed at once by
# ``begin_cleanup``: a fault state is a place the run passes through, never rests in.
TRIGGER_OF: Final[dict[type, str]] = {
    AttemptStarted: "start_attempt",
    FirstEventReceived: "receive_first_event",
    StreamFinished: "finish",
    StallDetected: "stall",
    AttemptFailed: "drop",
    InterruptRequested: "interrupt",
    CleanupFinished: "finish_cleanup",
    DeadlinePassed: "expire",
    RouteSkipped: "skip_route",
    RoutesExhausted: "exhaust_routes",
}


def build_machine(model: object | None = None) -> Machine:
    """The machine: built once per process, shared by every run. Runs are not added to it
    as models (no trigger methods are bound to them): a run holds its own ``state`` and
    the driver pulls a trigger with ``MACHINE.events[name].trigger(run_core, event=...)``,
    which is all ``transitions`` needs for a model it does not own. Building a machine
    costs ~190 µs here; a run costs nothing beyond its own records."""
    return Machine(
        model=model,
        states=list(STATES),
        transitions=[dict(row) for row in TRANSITIONS],
        initial="idle",
        auto_transitions=False,
        send_event=True,
        after_state_change=_record_transition,
        model_attribute="state",
    )


def _record_transition(ev: EventData) -> None:
    transition = ev.transition
    assert transition is not None and transition.dest is not None
    event: LifecycleEvent = ev.kwargs["event"]
    _record(cast(RunCore, ev.model), transition.source, ev.event.name, transition.dest, event)


def _record(core: RunCore, source: str, trigger: str, dest: str, event: LifecycleEvent) -> None:
    record = Transition(source=source, trigger=trigger, dest=dest, at=event.at - core.started_at)
    core.history.append(record)
    for listener in core.listeners:
        listener(record)


MACHINE: Final = build_machine()


def plain_rows(machine: Machine) -> dict[tuple[str, str], str]:
    """``(trigger, source) -> dest`` for every row the machine takes with nothing to
    evaluate: the only row of its trigger and source, with no guard and no action, between
    states with no enter or exit callbacks, on a machine whose only machine-wide callback
    is the recorder. Read from the built machine, so the table stays the one place that
    says where a trigger leads. ``RunCore.feed`` assigns these instead of pulling the
    trigger (a ``transitions`` trigger costs 30-50 µs on a 2-core runner: the three of a
    healthy run were a fifth of the engine's whole cost per run) and pulls every other."""
    callbacks = ("before_state_change", "prepare_event", "finalize_event", "on_exception")
    if any(getattr(machine, name, None) for name in callbacks):
        return {}
    if machine.after_state_change != [_record_transition]:
        return {}
    quiet = {
        name for name, state in machine.states.items() if not (state.on_enter or state.on_exit)
    }
    rows: dict[tuple[str, str], str] = {}
    for trigger, event in machine.events.items():
        for source, candidates in event.transitions.items():
            if len(candidates) != 1:
                continue
            row = candidates[0]
            if row.dest is None or row.conditions or row.prepare or row.before or row.after:
                continue
            if source in quiet and row.dest in quiet:
                rows[(trigger, source)] = row.dest
    return rows


PLAIN_ROWS: Final = plain_rows(MACHINE)


class RunCore:
    """The model the machine drives: the run's records plus the policy's inputs."""

    state: str

    def __init__(
        self,
        *,
        routes: Sequence[RouteInfo],
        timeouts: Timeouts,
        retry: RetryPolicy,
        started_at: float,
        rng: random.Random,
        listeners: Sequence[Callable[[Transition], None]] = (),
    ) -> None:
        self.routes = tuple(routes)
        self.listeners = tuple(listeners)
        self.timeouts = timeouts
        self.retry = retry
        self.started_at = started_at
        self.deadline = started_at + timeouts.total
        self.rng = rng
        self.history: list[Transition] = []
        self.attempts: list[AttemptRecord] = []
        self.attempts_per_route = [0] * len(self.routes)
        self.stale_per_route = [0] * len(self.routes)
        self.skips: list[tuple[int, str]] = []
        """Routes whose breaker refused this run: (route index, why)."""
        self.committed = False
        """Some meaningful event of this run has reached the caller."""
        self.restart_pending = False
        self.continue_pending = False
        """The next attempt continues the delivered text (on_partial="continue")."""
        self.interrupt_requested = False
        self.last_fault: Fault | None = None
        self.total_expired = False
        self.decision: Decision | None = None
        self.pending_cleanup: CleanupPlan | None = None
        self.state = "idle"

    # -- feeding -----------------------------------------------------------------
    def feed(self, event: LifecycleEvent) -> None:
        """Apply one reported event. Raises ``transitions.MachineError`` if it is not
        allowed in the current state: a driver bug, never something to ignore. The check
        comes first, so a rejected event leaves the records as they were. Events are told
        apart by their exact type (``TRIGGER_OF`` knows no subclass): ``type(e) is C``
        costs no call, where each ``isinstance`` of the chain was one (~8 per event)."""
        trigger = TRIGGER_OF[type(event)]
        if self.state not in MACHINE.events[trigger].transitions:
            raise MachineError(f"{trigger} ({type(event).__name__}) is not allowed in {self.state}")
        if type(event) is AttemptStarted:
            self._open_attempt(event)
        elif type(event) is InterruptRequested:
            self.interrupt_requested = True
        elif type(event) is StallDetected:
            deadline = event.clock == "total"
            self._close_attempt(
                Fault(
                    outcome="deadline" if deadline else "stale",
                    retryable=True,
                    fallback_eligible=True,
                    reason="Timeouts.total ran out before the answer ended"
                    if deadline
                    else f"no meaningful event within Timeouts.{event.clock}",
                    api_mode=self.active_attempt.api_mode if self.attempts else None,
                ),
                event.at,
            )
            self.total_expired = deadline
            if not deadline:
                self.stale_per_route[self.active_attempt.route_index] += 1
            self.active_attempt.diagnostics.stall_clock = event.clock
        elif type(event) is AttemptFailed:
            self._close_attempt(event.fault, event.at)
        elif type(event) is FirstEventReceived:
            self.committed = True
        if type(event) is InterruptRequested and self.state in IN_FLIGHT:
            self._close_attempt(
                Fault(
                    outcome="interrupted",
                    retryable=False,
                    fallback_eligible=False,
                    reason="interrupted by the caller",
                    api_mode=self.active_attempt.api_mode,
                ),
                event.at,
            )
        elif type(event) is StreamFinished:
            self.active_attempt.outcome = "completed"
            self.active_attempt.diagnostics.elapsed = event.at - self.active_attempt.started_at
        elif type(event) is DeadlinePassed:
            self.total_expired = True
        elif type(event) is RouteSkipped:
            self.skips.append((event.route_index, event.reason))
        elif type(event) is RoutesExhausted:
            self.last_fault = Fault(
                outcome="dropped",
                retryable=False,
                fallback_eligible=False,
                reason=event.reason,
                api_mode=None,
            )
            self.decision = Decision(kind="fail", reason=event.reason, route_index=-1)
        elif type(event) is CleanupFinished and event.interrupted:
            self.interrupt_requested = True
        source = self.state
        dest = PLAIN_ROWS.get((trigger, source))
        if dest is None:
            MACHINE.events[trigger].trigger(self, event=event)
        else:
            self.state = dest
            _record(self, source, trigger, dest, event)
        if self.state in FAULTS:
            MACHINE.events["begin_cleanup"].trigger(self, event=event)

    # -- queries -----------------------------------------------------------------
    @property
    def active_attempt(self) -> AttemptRecord:
        return self.attempts[-1]

    @property
    def is_final(self) -> bool:
        return self.state in FINAL_STATES

    # -- bound actions ---------------------------------------------------------------
    def plan_cleanup(self) -> None:
        attempt = self.active_attempt
        route = self.routes[attempt.route_index]
        self.pending_cleanup = CleanupPlan(
            attempt=attempt, route=route.target, api_mode=route.api_mode, steps=CLEANUP_STEPS
        )

    def decide_next(self, now: float, *, continuable: bool = False) -> None:
        attempt = self.active_attempt
        fault = self.last_fault
        assert fault is not None, "cleanup without a fault"
        self.decision = decide(
            policy=self.retry,
            fault=fault,
            route_index=attempt.route_index,
            route_count=len(self.routes),
            attempts_on_route=self.attempts_per_route[attempt.route_index],
            stale_on_route=self.stale_per_route[attempt.route_index],
            committed=self.committed,
            interrupted=self.interrupt_requested,
            total_expired=self.total_expired or now >= self.deadline,
            now=now,
            deadline=self.deadline,
            rng=self.rng,
        )
        if self.decision.kind in ("retry", "fallback") and self.committed:
            # on_partial="continue" stitches a text-only answer on the same route; a
            # fallback (another model) or a tool call or thinking block restarts.
            if (
                self.retry.on_partial == "continue"
                and self.decision.kind == "retry"
                and continuable
            ):
                self.continue_pending = True
            else:
                self.restart_pending = True

    # -- bookkeeping -------------------------------------------------------------
    def _open_attempt(self, event: AttemptStarted) -> None:
        route = self.routes[event.route_index]
        self.attempts_per_route[event.route_index] += 1
        self.decision = None
        self.pending_cleanup = None
        self.attempts.append(
            AttemptRecord(
                number=len(self.attempts) + 1,
                route_index=event.route_index,
                api_mode=route.api_mode,
                model=route.model,
                started_at=event.at,
            )
        )

    def _close_attempt(self, fault: Fault, at: float) -> None:
        attempt = self.active_attempt
        attempt.outcome = fault.outcome
        attempt.reason = redact(fault.reason)
        if fault.headers:
            attempt.diagnostics.headers.update(header_subset(fault.headers))
        attempt.diagnostics.elapsed = at - attempt.started_at
        if fault.http_status is not None:
            attempt.diagnostics.http_status = fault.http_status
        self.last_fault = fault


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
