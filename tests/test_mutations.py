"""The verification suite must see the bugs it exists for: each mutation of
``mutations`` (a patch of the real function with a buggy variant) re-creates one, and
every check here must then find it.

- ``misdirect_cleanup``: the cleanup plan aims at the route after the active one (the
  bug that started this project: an Anthropic stall "cleaned up" on the OpenAI client).
- ``leak_connection``: cleanup skips the abort and the stream close.
- ``close_on_watchdog``: the clock's thread (or loop timer) closes the client itself.

For each mutation: the path replays of ``test_paths`` (a few paths that pass through the
switch's code, some faulting a later route), on each driver, must break an invariant,
with the expected name, and pass without the switch (the control); the Hypothesis
state machines of ``test_stateful_engine`` (both drivers) and, for the machine-level
mutation, ``test_stateful_core`` must find a counterexample.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import test_paths
import test_stateful_core
import test_stateful_engine
from hypothesis import Phase
from hypothesis.errors import FlakyStrategyDefinition
from invariants import (
    IDLE_WAIT,
    Flavor,
    InvariantViolation,
    check_run,
    drive_sync,
    make_routes,
    start_run,
)
from invariants import violations as violations_of
from mutations import MUTATIONS, mutation

from lifecycle import RetryPolicy, StreamEngine, Timeouts
from providers.loopback import Healthy, LoopbackServer

pytestmark = pytest.mark.timeout(180)

SWITCHES = tuple(MUTATIONS)

# Paths (in test_paths' short notation) that take each switch's code, and the invariant
# that must break, on each driver. A stall is needed for the clock to fire; any cleanup for
# the others. Some fault a later route: route 1 (its only stall, for the clock), route 2.
PATHS = {
    "misdirect_cleanup": (
        [
            "C-S-stale-cl-retry-C-S-OK",
            "C-drop-cl-fallback-C-S-OK",
            "C-S-drop-cl-retry-C-S-OK",
            "C-drop-cl-fallback-C-S-drop-cl-retry-C-S-OK",
            "C-drop-cl-fallback-C-drop-cl-fallback-C-S-drop-cl-FAILED",
        ],
        "no_foreign_adapter",
    ),
    "leak_connection": (
        ["C-S-stale-cl-retry-C-S-OK", "C-S-drop-cl-retry-C-S-OK", "C-intr-cl-CANCELLED"],
        "own_cleanup",
    ),
    "close_on_watchdog": (
        [
            "C-S-stale-cl-retry-C-S-OK",
            "C-stale-cl-fallback-C-S-OK",
            "C-drop-cl-fallback-C-S-stale-cl-retry-C-S-OK",
        ],
        "cleanup_on_owner",
    ),
    "rebuild_on_the_run": (
        [
            "C-S-stale-cl-retry-C-S-OK",
            "C-drop-cl-fallback-C-S-drop-cl-retry-C-S-OK",
        ],
        "cleanup_on_owner",
    ),
}
ENGINE_FINDS = {
    "misdirect_cleanup": "no_foreign_adapter",
    "leak_connection": "own_cleanup",
    "close_on_watchdog": "cleanup_on_owner",
    "rebuild_on_the_run": "cleanup_on_owner",
}
HUNT = {"phases": (Phase.explicit, Phase.generate), "database": None, "max_examples": 30}
"""No shrinking: each shrink step is a real run; the first counterexample is proof enough."""


@contextmanager
def untallied() -> Iterator[None]:
    """Hunts must not add to the counts (and rows taken) the stateful modules report."""
    saved = [
        (counter, counter.copy())
        for counter in (
            test_stateful_core.STATS,
            test_stateful_core.ROWS_TAKEN,
            *test_stateful_engine.STATS.values(),
        )
    ]
    try:
        yield
    finally:
        for counter, copy in saved:
            counter.clear()
            counter.update(copy)


@contextmanager
def switched(name: str | None) -> Iterator[None]:
    if name is None:
        yield
        return
    with mutation(name):
        yield


def _path(short: str) -> test_paths.Path:
    matches = [p for p in test_paths.DISTINCT.values() if test_paths.path_id(p) == short]
    assert matches, f"no replayed path {short}"
    return matches[0]


@pytest.mark.parametrize("flavor", test_paths.DRIVERS)
@pytest.mark.parametrize("switch", SWITCHES)
def test_path_replays_find_the_mutation(
    server: LoopbackServer, switch: str, flavor: Flavor
) -> None:
    shorts, expected = PATHS[switch]
    for i, short in enumerate(shorts):
        path = _path(short)
        scenario = test_paths.SCENARIOS[path]
        assert scenario is not None
        key = f"{switch}-{flavor}-{i}"
        control = test_paths.replay(server, path, scenario, f"control-{key}", 0.0, flavor)
        assert not control.problems, f"{short} fails without the switch: {control.problems}"
        with switched(switch):
            mutated = test_paths.replay(server, path, scenario, f"mutant-{key}", 0.0, flavor)
        names = {p.split("]", 1)[0].strip("[") for p in mutated.problems}
        assert expected in names, (
            f"{switch} on path {short} ({flavor}): expected {expected} to break, "
            f"got {mutated.problems}"
        )


@pytest.mark.parametrize("flavor", ["sync", "async"])
@pytest.mark.parametrize("switch", SWITCHES)
def test_the_engine_state_machine_finds_the_mutation(
    server: LoopbackServer, switch: str, flavor: Flavor, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every violation the hunt raises is kept: when the counterexample's final replay
    # draws differently (its race went the other way), Hypothesis reports only that.
    raised: list[InvariantViolation] = []
    init = InvariantViolation.__init__

    def init_and_keep(self: InvariantViolation, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        raised.append(self)

    monkeypatch.setattr(InvariantViolation, "__init__", init_and_keep)
    with (
        untallied(),
        switched(switch),
        pytest.raises((InvariantViolation, ExceptionGroup, FlakyStrategyDefinition)) as found,
    ):
        test_stateful_engine.run_engine_machine(server, flavor, **HUNT)
    # A counterexample whose replay raced differently (an interrupt timer against a stall
    # clock) comes wrapped in Hypothesis' FlakyFailure; the violation is inside.
    error = found.value
    names = set(getattr(error, "invariants", ()))
    if isinstance(error, ExceptionGroup):
        inner = error.subgroup(InvariantViolation)
        assert inner is not None, f"no invariant violation in {error!r}"
        names = {n for e in inner.exceptions for n in getattr(e, "invariants", ())}
    elif isinstance(error, FlakyStrategyDefinition):
        names = {n for e in raised for n in e.invariants}
    assert ENGINE_FINDS[switch] in names, str(error)


def test_the_core_state_machine_finds_a_misdirected_cleanup() -> None:
    with (
        untallied(),
        switched("misdirect_cleanup"),
        pytest.raises(test_stateful_core.CoreViolation, match="aimed at"),
    ):
        test_stateful_core.run_core_machine(
            phases=(Phase.explicit, Phase.generate), database=None, max_examples=500
        )


def test_a_leaked_connection_is_seen_by_the_server(server: LoopbackServer) -> None:
    """The server's view needs a shared client to see a leak: alone, the faulty attempt's
    client is closed at once, and closing it closes its pool and every connection in it.
    Here run B streams slowly on the client run A also leases. A's caller leaves its
    loop at the first event (``break``): the body is still open, the client stays open
    while B uses it, and only cleanup's abort (a socket shutdown) and stream close end
    A's connection. With the switch it stays open after A's final state, as the server
    sees. (An HTTP error answer would not do: it is read whole and its connection goes
    back to the pool, no longer the attempt's.)"""
    for switch in (None, "leak_connection"):
        found = _two_runs_sharing_a_client(server, switch)
        if switch is None:
            assert found == [], found
        else:
            assert "connections" in found, found


def _two_runs_sharing_a_client(server: LoopbackServer, switch: str | None) -> list[str]:
    tag = f"-leak-{switch}"
    engine = StreamEngine(
        routes=make_routes(server, "sync", ("anthropic",), tag=tag),
        timeouts=Timeouts(connect=1, first_token=5, stale=5, total=4 * IDLE_WAIT),
        retry=RetryPolicy(max_attempts=2, initial_backoff=0, max_backoff=0),
    )
    found: list[str] = []
    try:
        # The slow run holds its first event (time in the loop body is not silence) until
        # the quick run has been checked, so the shared client stays in use for as long as
        # the invariant waits for the server to see the quick run's connection closed.
        slow = start_run(engine, server, f"slow{tag}", "sync", [Healthy(drip=0.05)])
        slow.exclusive = False  # the quick run builds clients on its routes meanwhile
        started, checked = threading.Event(), threading.Event()
        holder: dict[str, Any] = {}

        def hold_until_checked(record: Any, event: Any) -> None:
            if not started.is_set():
                started.set()
                checked.wait(3 * IDLE_WAIT)

        def stream_slowly() -> None:
            holder["record"] = drive_sync(slow, hold_until_checked)

        thread = threading.Thread(target=stream_slowly, name=f"slow-run{tag}")
        thread.start()
        try:
            assert started.wait(10), "the slow run never streamed"
            with switched(switch):
                quick = start_run(engine, server, f"quick{tag}", "sync", [Healthy(drip=0.05)])
                _leave_at_the_first_event(quick)
                # final_state is written for callers that loop to the end (a cancelled
                # run must have raised Interrupted to them); this one left by itself.
                found = [name for name, _ in violations_of(quick) if name != "final_state"]
        finally:
            checked.set()
            thread.join(30)
        check_run(holder["record"])
    finally:
        engine.close()
    return found


def _leave_at_the_first_event(record: Any) -> None:
    run = record.run
    with run:
        for event in run:
            record.seen.append((event.type, run.state, time.monotonic()))
            break
    record.ended_at = time.monotonic()
    record.stop_timers()
