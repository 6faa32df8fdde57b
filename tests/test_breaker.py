"""Route circuit breakers: the machine's rules as properties, then real runs around them.

The properties (Hypothesis, model-based) drive ``BreakerCore`` with random admissions,
reports and clock jumps and check it against a reference written from the rules in
``lifecycle/_core/breaker.py``: a half-open breaker admits exactly one probe at a time, an
open breaker never outlives its cooldown without a probe being allowed, cooldowns grow
and are capped, only the probe's verdict moves a probing breaker.

The integration tests run real runs (both providers' SDKs, both drivers, the loopback
server): a route that fails repeatedly is skipped while open, probed once per half-open
period, restored by a successful probe; and every row of the run machine that a breaker
causes (``skip_route``, ``exhaust_routes`` from each source) is replayed on the real
drivers with the invariants of ``tests/invariants.py``, after a fault on route 0 and,
for the rows that follow an attempt, after faults on later routes (1 and 2) too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from invariants import drive_async, drive_sync, make_routes, start_run, violations

from lifecycle import (
    BreakerChange,
    BreakerPolicy,
    LifecycleHooks,
    RetryPolicy,
    StreamEngine,
    StreamFailed,
    Timeouts,
)
from lifecycle.health import BreakerCore
from providers.loopback import Healthy, HttpError, LoopbackServer, StallAfterEvents

pytestmark = pytest.mark.timeout(60)

TIMEOUTS = Timeouts(connect=5, first_token=2, stale=2, total=30)
ONE_EACH = RetryPolicy(max_attempts=1, initial_backoff=0.0, max_backoff=0.0)


# -- the breaker alone: properties against a reference ---------------------------------------


class Reference:
    """The rules of ``_breaker``, written out plainly (no ``transitions``)."""

    def __init__(self, policy: BreakerPolicy) -> None:
        self.policy = policy
        self.state = "closed"
        self.failures = 0
        self.openings = 0
        self.reopen_at = 0.0
        self.probe: str | None = None
        self.probe_until = 0.0
        self.incident_at: float | None = None

    def _open(self, at: float) -> None:
        self.openings += 1
        p = self.policy
        self.reopen_at = at + min(
            p.max_cooldown, p.cooldown * p.cooldown_factor ** (self.openings - 1)
        )
        self.state, self.probe = "open", None

    def tick(self, at: float) -> None:
        if self.state == "open" and at >= self.reopen_at:
            self.state = "half_open"
        if self.state == "probing" and at >= self.probe_until:
            self.state, self.probe = "half_open", None

    def admit(self, at: float, probe_id: str) -> str:
        self.tick(at)
        if self.state == "closed":
            return "pass"
        if self.state == "half_open":
            self.state, self.probe = "probing", probe_id
            self.probe_until = at + self.policy.probe_timeout
            return "probe"
        return "refuse"

    def report(self, at: float, verdict: str, probe_id: str | None, admitted_at: float) -> None:
        self.tick(at)
        # One incident: the failures of attempts admitted before the last counted one
        # was reported (they were in flight with it) count once.
        if verdict in ("stale", "dropped") and (
            self.incident_at is None or admitted_at >= self.incident_at
        ):
            self.failures += 1
            self.incident_at = at
        elif verdict == "success" and self.state == "closed":
            self.failures = 0
        if self.state == "probing" and probe_id is not None and probe_id == self.probe:
            if verdict == "success":
                self.state, self.probe, self.openings, self.failures = "closed", None, 0, 0
            elif verdict == "neutral":
                self.state, self.probe = "half_open", None
            else:
                self._open(at)
        elif (
            self.state == "closed"
            and verdict in ("stale", "dropped")
            and self.failures >= self.policy.failures_to_open
        ):
            self._open(at)


POLICIES = st.builds(
    BreakerPolicy,
    failures_to_open=st.integers(1, 4),
    cooldown=st.sampled_from([1.0, 2.5, 5.0]),
    cooldown_factor=st.sampled_from([1.0, 2.0, 3.0]),
    max_cooldown=st.just(20.0),
    probe_timeout=st.sampled_from([3.0, 50.0]),
)
COUNTS: dict[str, int] = {"machines": 0, "steps": 0, "probes": 0, "openings": 0}


class BreakerRules(RuleBasedStateMachine):
    @initialize(policy=POLICIES)
    def setup(self, policy: BreakerPolicy) -> None:
        COUNTS["machines"] += 1
        self.policy = policy
        self.t = 1_000_000.0
        self.core = BreakerCore(route="r", policy=policy)
        self.ref = Reference(policy)
        self.out: list[tuple[str, bool, float]] = []
        """Admitted attempts that have not reported: (id, is the probe, admitted at)."""
        self.serial = 0
        self.opened_at: float | None = None

    def _reload(self) -> None:
        # Every operation goes through a store's save and load: fields must round-trip.
        fields = self.core.to_fields()
        self.core = BreakerCore.from_fields(fields, route="r", policy=self.policy)
        assert self.core.to_fields() == fields

    @rule(dt=st.sampled_from([0.0, 0.1, 0.9, 2.0, 4.0, 30.0, 60.0]))
    def time_passes(self, dt: float) -> None:
        self.t += dt

    @rule()
    def admit(self) -> None:
        COUNTS["steps"] += 1
        self.serial += 1
        probe_id = f"a{self.serial}"
        admission = self.core.admit(self.t, probe_id=probe_id)
        expected = self.ref.admit(self.t, probe_id)
        assert admission.kind == expected, (admission, self.ref.state)
        if admission.kind == "probe":
            COUNTS["probes"] += 1
            # Exactly one probe at a time: no other admitted probe is still out.
            live = [a for a, is_probe, _ in self.out if is_probe and a == self.core.probe_id]
            assert live == [], "a second probe was admitted while one is out"
        assert admission.at == self.t
        if admission.kind != "refuse":
            self.out.append((probe_id, admission.kind == "probe", admission.at))
        self._reload()

    @rule(data=st.data(), verdict=st.sampled_from(["success", "stale", "dropped", "neutral"]))
    @precondition(lambda self: bool(self.out))
    def report(self, data: st.DataObject, verdict: str) -> None:
        COUNTS["steps"] += 1
        index = data.draw(st.integers(0, len(self.out) - 1))
        attempt, is_probe, admitted_at = self.out.pop(index)
        was_open = self.core.openings
        self.core.report(
            self.t,
            verdict,  # type: ignore[arg-type]
            probe_id=attempt if is_probe else None,
            admitted_at=admitted_at,
        )
        self.ref.report(self.t, verdict, attempt if is_probe else None, admitted_at)
        if self.core.openings > was_open:
            COUNTS["openings"] += 1
            expected = min(
                self.policy.max_cooldown,
                self.policy.cooldown * self.policy.cooldown_factor ** (self.core.openings - 1),
            )
            assert self.core.reopen_at == pytest.approx(self.t + expected)
        self._reload()

    @invariant()
    def matches_the_reference(self) -> None:
        # Both take time-driven transitions only when admitting or reporting, so their
        # states agree at every step, not only after advancing.
        assert self.core.state == self.ref.state, (self.core.state, self.ref.state)
        assert self.core.failures == self.ref.failures
        assert self.core.openings == self.ref.openings
        assert self.core.probe_id == self.ref.probe

    @invariant()
    def never_open_past_its_cooldown(self) -> None:
        """Advanced to now, an open breaker's cooldown has not yet run out: the first
        admission after it is always the probe."""
        copy = BreakerCore.from_fields(self.core.to_fields(), route="r", policy=self.policy)
        copy.advance(self.t)
        if copy.state == "open":
            assert copy.reopen_at is not None and self.t < copy.reopen_at
            assert copy.reopen_at - self.t <= self.policy.max_cooldown
        if copy.state == "probing":
            assert copy.probe_id is not None
            assert copy.probe_expires_at is not None and self.t < copy.probe_expires_at

    @invariant()
    def probes_only_while_probing(self) -> None:
        assert (self.core.probe_id is not None) == (self.core.state == "probing")


TestBreakerRules = BreakerRules.TestCase
TestBreakerRules.settings = settings(
    max_examples=300, stateful_step_count=40, suppress_health_check=[HealthCheck.too_slow]
)


def test_breaker_property_counts_are_reported() -> None:
    """Runs after the state machine test in file order: prints what it covered."""
    if COUNTS["machines"]:
        print(
            f"\ntest_breaker properties: {COUNTS['machines']} breakers, {COUNTS['steps']} "
            f"admissions and reports, {COUNTS['probes']} probes, {COUNTS['openings']} openings"
        )
        assert COUNTS["probes"] > 0 and COUNTS["openings"] > 0


def test_an_open_breaker_lets_exactly_one_probe_through_when_its_cooldown_ends() -> None:
    policy = BreakerPolicy(failures_to_open=2, cooldown=10, cooldown_factor=2, max_cooldown=25)
    core = BreakerCore(route="r", policy=policy)
    core.report(0, "stale", probe_id=None)
    assert core.state == "closed"
    core.report(1, "dropped", probe_id=None)
    assert (core.state, core.reopen_at) == ("open", 11)
    assert core.admit(10.9, probe_id="a").kind == "refuse"
    assert core.admit(11, probe_id="b").kind == "probe"
    assert [core.admit(11 + i, probe_id=f"c{i}").kind for i in range(5)] == ["refuse"] * 5
    core.report(12, "stale", probe_id="b")  # the probe failed: a longer cooldown
    assert (core.state, core.reopen_at) == ("open", 32)
    assert core.admit(32, probe_id="d").kind == "probe"
    core.report(33, "dropped", probe_id="d")
    assert core.reopen_at == 33 + 25  # capped at max_cooldown
    assert core.admit(58, probe_id="e").kind == "probe"
    core.report(59, "neutral", probe_id="e")  # interrupted: no verdict, the slot is free
    assert core.state == "half_open"
    assert core.admit(59, probe_id="f").kind == "probe"
    core.report(60, "success", probe_id="f")
    assert (core.state, core.openings, core.failures) == ("closed", 0, 0)
    assert [c.trigger for c in core.changes] == [
        "trip",
        "cool_down",
        "admit_probe",
        "probe_failed",
        "cool_down",
        "admit_probe",
        "probe_failed",
        "cool_down",
        "admit_probe",
        "release_probe",
        "admit_probe",
        "probe_succeeded",
    ]


def test_a_probe_that_never_reports_frees_the_slot_after_probe_timeout() -> None:
    policy = BreakerPolicy(failures_to_open=1, cooldown=5, probe_timeout=30)
    core = BreakerCore(route="r", policy=policy)
    core.report(0, "stale", probe_id=None)
    assert core.admit(5, probe_id="lost").kind == "probe"
    assert core.admit(34.9, probe_id="x").kind == "refuse"
    assert core.admit(35, probe_id="y").kind == "probe"
    core.report(36, "success", probe_id="lost")  # the lost probe's late verdict moves nothing
    assert core.state == "probing"


def test_stragglers_do_not_move_a_probing_breaker() -> None:
    core = BreakerCore(route="r", policy=BreakerPolicy(failures_to_open=1, cooldown=5))
    core.report(0, "dropped", probe_id=None)
    assert core.admit(5, probe_id="p").kind == "probe"
    core.report(6, "success", probe_id=None)  # admitted before the breaker opened
    core.report(6, "stale", probe_id=None)
    assert core.state == "probing"


# -- real runs --------------------------------------------------------------------------------


class BreakerLog(LifecycleHooks):
    def __init__(self) -> None:
        self.changes: list[BreakerChange] = []

    def on_breaker_change(self, change: BreakerChange) -> None:
        self.changes.append(change)


def test_a_failing_route_is_skipped_while_open_probed_once_per_period_and_restored(
    provider: Any,
) -> None:
    """529s on the first route: its breaker opens after two, runs skip it (not one
    request reaches it) and fall back; after the cooldown one run probes it (529 again:
    open for twice as long); the next probe succeeds and the route serves runs again."""
    cooldown = 0.5
    log = BreakerLog()
    engine = provider.engine(
        timeouts=TIMEOUTS,
        retry=ONE_EACH,
        breaker=BreakerPolicy(failures_to_open=2, cooldown=cooldown, cooldown_factor=2.0),
        hooks=[log],
    )
    name = provider.route().name
    provider.script([HttpError(status=529)] * 3 + [Healthy(), Healthy()])
    provider.script([Healthy()] * 10, model=provider.other_model)

    def run() -> Any:
        ran, seen = provider.run_to_end(engine)
        assert seen.error is None and ran.state == "completed", (seen.error, ran.history)
        return ran

    def routes_used(ran: Any) -> list[int]:
        return [a.route_index for a in ran.attempts]

    assert routes_used(run()) == [0, 1]
    assert routes_used(run()) == [0, 1]
    assert engine.breakers()[name].state == "open"
    skipped = run()
    assert routes_used(skipped) == [1]
    assert next((t.source, t.trigger, t.dest) for t in skipped.history) == (
        "idle",
        "skip_route",
        "falling_back",
    )
    assert len(provider.requests()) == 2, "a run reached the route while its breaker was open"

    time.sleep(cooldown + 0.05)
    probe = run()  # the probe: 529 again
    assert routes_used(probe) == [0, 1] and probe.attempts[0].probe
    assert engine.breakers()[name].state == "open"
    reopen_in = engine.breakers()[name].reopen_in
    assert reopen_in is not None and cooldown < reopen_in <= 2 * cooldown
    assert routes_used(run()) == [1]

    time.sleep(2 * cooldown + 0.05)
    restored = run()
    assert routes_used(restored) == [0] and restored.attempts[0].probe
    assert engine.breakers()[name].state == "closed"
    again = run()
    assert routes_used(again) == [0] and not again.attempts[0].probe
    assert len(provider.requests()) == 5
    mine = [(c.source, c.trigger, c.dest) for c in log.changes if c.route == name]
    assert mine == [
        ("closed", "trip", "open"),
        ("open", "cool_down", "half_open"),
        ("half_open", "admit_probe", "probing"),
        ("probing", "probe_failed", "open"),
        ("open", "cool_down", "half_open"),
        ("half_open", "admit_probe", "probing"),
        ("probing", "probe_succeeded", "closed"),
    ]


def test_concurrent_runs_in_a_half_open_period_send_exactly_one_probe(provider: Any) -> None:
    """Eight runs start together once the cooldown is over: one probes the route (a slow
    answer keeps the probe out), the seven others skip it and fall back."""
    cooldown = 0.3
    engine = provider.engine(
        timeouts=TIMEOUTS,
        retry=ONE_EACH,
        breaker=BreakerPolicy(failures_to_open=1, cooldown=cooldown),
    )
    name = provider.route().name
    provider.script([HttpError(status=503), Healthy(drip=0.05)])
    provider.script([Healthy()] * 20, model=provider.other_model)
    _first, _ = provider.run_to_end(engine)
    assert engine.breakers()[name].state == "open"
    time.sleep(cooldown + 0.05)
    runs = provider.run_at_once(engine, 8)
    assert [run.state for run in runs] == ["completed"] * 8
    probes = [run for run in runs if run.attempts[0].route_index == 0]
    assert len(probes) == 1 and probes[0].attempts[0].probe
    assert len(provider.requests()) == 2  # the first failure, then exactly one probe
    assert engine.breakers()[name].state == "closed"


def test_stale_before_fallback_moves_on_after_that_many_stalls(provider: Any) -> None:
    engine = provider.engine(
        timeouts=Timeouts(connect=5, first_token=0.4, stale=0.4, total=30),
        retry=RetryPolicy(
            max_attempts=3, initial_backoff=0.0, max_backoff=0.0, stale_before_fallback=2
        ),
    )
    provider.script([StallAfterEvents(n=1), StallAfterEvents(n=1), Healthy()])
    run, _seen = provider.run_to_end(engine)
    assert run.state == "completed"
    # The default (1) would fall back after the first stall; None would retry the third
    # attempt on route 0 (max_attempts=3), which the script lets complete there.
    assert [(a.route_index, a.outcome) for a in run.attempts] == [
        (0, "stale"),
        (0, "stale"),
        (1, "completed"),
    ]


def test_an_engine_without_breakers_never_skips(provider: Any) -> None:
    engine = provider.engine(timeouts=TIMEOUTS, retry=ONE_EACH, breaker=None)
    provider.script([HttpError(status=529)] * 4)
    provider.script([Healthy()] * 4, model=provider.other_model)
    for _ in range(4):
        run, _ = provider.run_to_end(engine)
        assert [a.route_index for a in run.attempts] == [0, 1]
    assert engine.breakers() == {}


# -- every breaker row of the run machine, on the real drivers, with the invariants -----------

# row[@the route whose attempt faults before the breaker acts, if not route 0] ->
# (routes, routes whose breaker is open before the run, failures_to_open, script,
#  the route of each attempt). A 403 falls back at once; a 529 is retried, and with
# failures_to_open=1 it opens its route's breaker, which then refuses the retry. The
# later-route cases put the fault (and its cleanup) on route 1 or 2, after attempts on
# the routes before it: a cleanup or breaker report aimed at another route shows there.
E403, E529 = HttpError(status=403), HttpError(status=529)
ROW_CASES: dict[str, tuple[int, set[int], int, list[Any], list[int]]] = {
    "idle->falling_back": (2, {0}, 5, [Healthy()], [1]),
    "retrying->falling_back": (2, set(), 1, [E529, Healthy()], [0, 1]),
    "retrying->falling_back@route1": (3, set(), 1, [E403, E529, Healthy()], [0, 1, 2]),
    "retrying->falling_back@route2": (4, set(), 1, [E403, E403, E529, Healthy()], [0, 1, 2, 3]),
    "falling_back->falling_back": (3, {1}, 5, [E403, Healthy()], [0, 2]),
    "falling_back->falling_back@route1": (4, {2}, 5, [E403, E403, Healthy()], [0, 1, 3]),
    "idle->failed": (1, {0}, 5, [], []),
    "retrying->failed": (1, set(), 1, [E529], [0]),
    "retrying->failed@route1": (2, set(), 1, [E403, E529], [0, 1]),
    "falling_back->failed": (3, {1, 2}, 5, [E403], [0]),
    "falling_back->failed@route1": (3, {2}, 5, [E403, E403], [0, 1]),
    "falling_back->failed@route2": (4, {3}, 5, [E403, E403, E403], [0, 1, 2]),
}


@pytest.mark.parametrize("flavor", ["sync", "async"])
@pytest.mark.parametrize("case", list(ROW_CASES))
def test_every_breaker_row_keeps_the_invariants(
    server: LoopbackServer, flavor: str, case: str
) -> None:
    count, open_before, failures_to_open, script, attempt_routes = ROW_CASES[case]
    row = case.split("@")[0]
    key = f"breaker-{case.replace('->', '-').replace('@', '-')}-{flavor}-{time.monotonic_ns()}"
    providers = ("anthropic", "openai", "anthropic", "openai")[:count]
    routes = make_routes(server, flavor, providers, tag=f"-{key}")  # type: ignore[arg-type]
    for index, route in enumerate(routes):
        route.name = f"{route.name}#{index}"
    source, dest = row.split("->")
    engine = StreamEngine(
        routes=routes,
        timeouts=TIMEOUTS,
        retry=RetryPolicy(max_attempts=2, initial_backoff=0.0, max_backoff=0.0),
        # Without fail-fast a run that every route refuses goes ahead (panic mode,
        # tests/test_breaker_panic.py): the ``failed`` rows are the opt-in's.
        breaker=BreakerPolicy(
            failures_to_open=failures_to_open,
            cooldown=60,
            fail_fast_when_all_open=dest == "failed",
        ),
    )
    assert engine.health is not None
    for index in open_before:
        for _ in range(failures_to_open):
            engine.health.report(routes[index].name, "dropped", None)
    record = start_run(engine, server, key, flavor, script)  # type: ignore[arg-type]
    try:
        if flavor == "sync":
            drive_sync(record)
        else:
            asyncio.run(drive_async(record))
        path = record.path()
        assert (source, dest) in [(r[1], r[2]) for r in path], record.path_text()
        assert [a.route_index for a in record.run.attempts] == attempt_routes, record.describe()
        if dest == "failed":
            assert record.run.state == "failed"
            assert isinstance(record.error, StreamFailed)
            assert "no route admits the run" in str(record.error)
        else:
            assert record.run.state == "completed", record.path_text()
        assert violations(record) == [], record.describe()
    finally:
        engine.close()


def test_a_raising_hook_is_logged_once_and_changes_nothing(
    provider: Any, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(LifecycleHooks):
        calls = 0

        def on_transition(self, run: Any, transition: Any) -> None:
            Broken.calls += 1
            raise RuntimeError("hook bug")

    engine = provider.engine(timeouts=TIMEOUTS, retry=ONE_EACH, hooks=[Broken()])
    provider.script([Healthy(), Healthy()])
    with caplog.at_level(logging.WARNING, logger="lifecycle"):
        for _ in range(2):
            run, seen = provider.run_to_end(engine)
            assert run.state == "completed" and seen.error is None
    assert Broken.calls == 2 * len(run.history)
    assert len([r for r in caplog.records if "hook Broken.on_transition raised" in r.message]) == 1


def test_hooks_see_each_run_and_attempt_in_order(provider: Any) -> None:
    calls: list[tuple[str, Any]] = []

    class Recorder(LifecycleHooks):
        def on_run_start(self, run: Any) -> None:
            calls.append(("start", run.id))

        def on_transition(self, run: Any, transition: Any) -> None:
            calls.append(("transition", transition.dest))

        def on_attempt_end(self, run: Any, attempt: Any) -> None:
            calls.append(("attempt_end", (attempt.number, attempt.outcome)))

        def on_run_end(self, run: Any) -> None:
            calls.append(("end", run.state))

    engine = provider.engine(
        timeouts=Timeouts(connect=5, first_token=0.4, stale=0.4, total=30),
        retry=RetryPolicy(max_attempts=2, initial_backoff=0.0, max_backoff=0.0),
        hooks=[Recorder()],
    )
    provider.script([StallAfterEvents(n=1), Healthy()])
    run, _ = provider.run_to_end(engine)
    assert run.state == "completed"
    assert calls[0] == ("start", run.id)
    assert [c for c in calls if c[0] == "attempt_end"] == [
        ("attempt_end", (1, "stale")),
        ("attempt_end", (2, "completed")),
    ]
    assert [a.route_index for a in run.attempts] == [0, 1]
    assert calls[-1] == ("end", "completed")
    assert [c[1] for c in calls if c[0] == "transition"] == [t.dest for t in run.history]
    # an attempt ends after its cleanup: right after the transition out of cleanup
    first_end = calls.index(("attempt_end", (1, "stale")))
    assert calls[first_end - 1] == ("transition", "falling_back")  # a stall: the next route
