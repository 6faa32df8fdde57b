"""The rows ``RunCore.feed`` assigns without pulling a ``transitions`` trigger
(``_machine.PLAIN_ROWS``): the same destination and the same record as the trigger, read
from the machine itself, and a healthy run's whole path goes through them."""

from __future__ import annotations

import random
from typing import Any

import pytest
from transitions import Machine

from lifecycle import TRANSITIONS, Fault, RetryPolicy, Timeouts
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
from lifecycle._core.machine import MACHINE, PLAIN_ROWS, RouteInfo, RunCore, plain_rows

pytestmark = pytest.mark.timeout(60)

ROUTES = (
    RouteInfo(api_mode="anthropic_messages", model="a", target=object()),
    RouteInfo(api_mode="chat_completions", model="b", target=object()),
)
FAULT = Fault(outcome="dropped", retryable=True, fallback_eligible=True, reason="lost")
EVENT_OF: dict[str, LifecycleEvent] = {
    "start_attempt": AttemptStarted(at=1.0, route_index=0),
    "receive_first_event": FirstEventReceived(at=1.5),
    "finish": StreamFinished(at=2.0),
    "stall": StallDetected(at=2.0, clock="stale", deadline=2.0),
    "drop": AttemptFailed(at=2.0, fault=FAULT),
    "interrupt": InterruptRequested(at=2.0),
    "expire": DeadlinePassed(at=2.0),
    "skip_route": RouteSkipped(at=1.0, route_index=0, reason="open"),
    "exhaust_routes": RoutesExhausted(at=1.0, reason="every breaker is open"),
}


def new_core() -> RunCore:
    return RunCore(
        routes=ROUTES,
        timeouts=Timeouts(),
        retry=RetryPolicy(),
        started_at=0.0,
        rng=random.Random(0),
    )


FINAL_ROUTE_FAULT = Fault(outcome="dropped", retryable=False, fallback_eligible=True, reason="404")
REACH: dict[str, tuple[LifecycleEvent, ...]] = {
    "idle": (),
    "connecting": (AttemptStarted(at=1.0, route_index=0),),
    "streaming": (AttemptStarted(at=1.0, route_index=0), FirstEventReceived(at=1.2)),
    "retrying": (
        AttemptStarted(at=1.0, route_index=0),
        AttemptFailed(at=1.1, fault=FAULT),
        CleanupFinished(at=1.2),
    ),
    "falling_back": (
        AttemptStarted(at=1.0, route_index=0),
        AttemptFailed(at=1.1, fault=FINAL_ROUTE_FAULT),
        CleanupFinished(at=1.2),
    ),
}


def snapshot(core: RunCore) -> dict[str, Any]:
    return {k: v for k, v in vars(core).items() if k not in ("rng", "listeners")}


def test_plain_rows_are_exactly_the_unguarded_single_rows_of_the_table() -> None:
    expected = {}
    for trigger in {row["trigger"] for row in TRANSITIONS}:
        for source in {row["source"] for row in TRANSITIONS if row["trigger"] == trigger}:
            rows = [r for r in TRANSITIONS if r["trigger"] == trigger and r["source"] == source]
            if len(rows) == 1 and not set(rows[0]) - {"trigger", "source", "dest"}:
                expected[(trigger, source)] = rows[0]["dest"]
    assert expected == PLAIN_ROWS
    # The three rows of a healthy run are among them.
    assert {("start_attempt", "idle"), ("receive_first_event", "connecting")} <= set(PLAIN_ROWS)
    assert ("finish", "streaming") in PLAIN_ROWS


@pytest.mark.parametrize("row", sorted(PLAIN_ROWS), ids="-".join)
def test_a_plain_row_leaves_the_core_as_its_trigger_does(
    row: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    trigger, source = row
    assigned, pulled = new_core(), new_core()
    for core in (assigned, pulled):
        for event in REACH[source]:
            core.feed(event)
        assert core.state == source
    seen: dict[str, list[Any]] = {"assigned": [], "pulled": []}
    assigned.listeners = (seen["assigned"].append,)
    pulled.listeners = (seen["pulled"].append,)
    event = EVENT_OF[trigger]
    assigned.feed(event)
    monkeypatch.setattr(_machine, "PLAIN_ROWS", {})
    pulled.feed(event)
    assert assigned.state == pulled.state
    assert snapshot(assigned) == snapshot(pulled)
    assert seen["assigned"] == seen["pulled"] and len(seen["pulled"]) >= 1
    assert seen["pulled"][0].dest == PLAIN_ROWS[row]


def test_a_healthy_run_pulls_no_trigger(monkeypatch: pytest.MonkeyPatch) -> None:
    pulled: list[str] = []
    original = type(MACHINE.events["finish"]).trigger

    def counting(self: Any, model: Any, *args: Any, **kwargs: Any) -> bool:
        pulled.append(self.name)
        return bool(original(self, model, *args, **kwargs))

    monkeypatch.setattr(type(MACHINE.events["finish"]), "trigger", counting)
    core = new_core()
    core.feed(AttemptStarted(at=1.0, route_index=0))
    core.feed(FirstEventReceived(at=1.5))
    core.feed(StreamFinished(at=2.0))
    assert pulled == []
    assert [(t.source, t.trigger, t.dest, t.at) for t in core.history] == [
        ("idle", "start_attempt", "connecting", 1.0),
        ("connecting", "receive_first_event", "streaming", 1.5),
        ("streaming", "finish", "completed", 2.0),
    ]
    # A fault still goes through the machine: its cleanup is an action of the table.
    core = new_core()
    core.feed(AttemptStarted(at=1.0, route_index=0))
    core.feed(StallDetected(at=2.0, clock="stale", deadline=2.0))
    assert pulled == ["begin_cleanup"]
    assert core.state == "cleanup" and core.pending_cleanup is not None


def test_a_machine_with_any_other_callback_has_no_plain_rows() -> None:
    def quiet(**extra: Any) -> Machine:
        return Machine(
            model=None,
            states=list(_machine.STATES),
            transitions=[dict(row) for row in TRANSITIONS],
            initial="idle",
            auto_transitions=False,
            send_event=True,
            after_state_change=_machine._record_transition,
            model_attribute="state",
            **extra,
        )

    assert plain_rows(quiet()) == PLAIN_ROWS
    assert plain_rows(quiet(before_state_change=lambda ev: None)) == {}
    assert plain_rows(quiet(prepare_event=lambda ev: None)) == {}
    entered = quiet()
    entered.states["streaming"].add_callback("enter", lambda ev: None)
    assert ("receive_first_event", "connecting") not in plain_rows(entered)
    assert ("finish", "streaming") not in plain_rows(entered)
