"""Every path of the lifecycle, from the machine's own table, replayed on the real engine.

The paths are enumerated from ``lifecycle._core.machine.TRANSITIONS`` itself (not a copy;
the rows of a breaker's refusal are replayed by ``test_breaker``):

- every *simple* path (no state twice) from ``idle`` to each final state;
- every path with up to ``ATTEMPT_BOUND`` attempts over two routes with different
  api_modes (``anthropic_messages``, then ``chat_completions``), falling back at most once;
- every such path that falls back twice, over three routes (the third is
  ``anthropic_messages`` again): so that each route of a chain, not only route 0, is one
  whose attempt stalls, drops or is interrupted and cleaned up after attempts on others.

Each path is mapped to a concrete scenario: a loopback fault script (one fault per
request), a ``RetryPolicy`` and ``Timeouts``, and what the caller does and when:
``interrupt()`` from a timer thread while a request is stuck, or from ``on_transition``
at a given transition (on the run's own thread); an ``on_transition`` listener that holds
the run's thread until Timeouts.total is about to run out, so that it runs out during the
backoff that follows (the "expire" row) or during the attempt that follows (the total
clock). The mapping is found and checked with the pure ``RunCore`` (same table, same
policy), fed the faults the adapters classify. A path that no scenario produces under
the engine's policy is *infeasible* and only counted: an interrupted attempt always ends
the run cancelled, and a retryable fault other than a stall never falls back before
``max_attempts`` (one policy for both routes; a stall falls back at once by default, and
is retried on a route before the last only under ``stale_before_fallback=None``).

Scenarios are deduplicated and replayed on both real drivers, the real SDKs and the
loopback server: the sync driver ``WORKERS`` at a time (each run owns its worker thread,
which is what "on the owner" is checked against), the async driver (``engine.astream``)
on ``ASYNC_LOOPS`` event loops of ``RUNS_PER_LOOP`` runs (each run owns its task). The
caller's acts mean the same on both: a stuck async attempt is interrupted from outside
its task (a loop callback or a timer thread, half the paths each), an on_transition
interrupt runs in the run's task, and a hold blocks the run's loop (so a holding async
run has its loop to itself). Each must take exactly its path and keep every
invariant of ``tests/invariants.py``. A replay that took another path while keeping every
invariant (a stall clock beat a slow answer on a loaded host), or whose only fault is a
connection the server saw open after the final state (``KNOWN_OPEN``: an open issue, not
yet explained), is run once more alone and its first try reported; every other invariant
violation fails at once. The replays run in shards of
at most ``SHARD_SIZE`` scenarios per driver, each its own test with its own timeout and
its own loopback server.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import random
import sys
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Final

import pytest
from invariants import (
    API_MODE,
    Flavor,
    InvariantViolation,
    RunRecord,
    drive_async,
    drive_sync,
    interrupt_on_loop,
    make_routes,
    report,
    start_run,
    violations,
)

from lifecycle import FINAL_STATES, Fault, RetryPolicy, StreamEngine, Timeouts
from lifecycle._core import machine as _machine
from lifecycle._core.events import (
    AttemptFailed,
    AttemptStarted,
    CleanupFinished,
    DeadlinePassed,
    FirstEventReceived,
    InterruptRequested,
    StallDetected,
    StreamFinished,
)
from lifecycle._core.machine import RouteInfo, RunCore
from providers._sdk.classify import malformed_fault, status_fault, transport_fault
from providers.loopback import (
    DropAfterEvents,
    Healthy,
    HttpError,
    LoopbackServer,
    MalformedEvent,
    PingsOnly,
    StallAfterEvents,
    StallAfterHeaders,
    StallBeforeHeaders,
)

pytestmark = pytest.mark.timeout(120)

PROVIDERS: Final = ("anthropic", "openai")
CHAIN: Final = ("anthropic", "openai", "anthropic")
"""The routes of a replay, in order: the first two for every enumerated path; the third
(the first's provider again, so that a cleanup aimed at route 0 instead names the right
api_mode and only the routes' client counts give it away) for the paths that fall back
twice, so that every route of the chain is one whose attempt stalls, drops or is cut."""
MODES: Final = tuple(API_MODE[p] for p in CHAIN)
ATTEMPT_BOUND: Final = 3
FIRST_TOKEN: Final = 0.6
STALE: Final = 0.4
"""The stall clocks, in seconds: first_token is the longer one because it also absorbs
how long a request takes to reach the in-process server while a dozen runs share the GIL."""
INTERRUPT_AFTER: Final = 0.06
"""A timer interrupts a stuck attempt this long after it started (or streamed)."""
RETRY_AFTER: Final = "0.2"
GENEROUS_TOTAL: Final = 5.0
WORKERS: Final = 12
"""Sync scenarios replayed at once, each run on its own worker thread (the owner)."""
ASYNC_LOOPS: Final = 6
RUNS_PER_LOOP: Final = 2
"""Async scenarios replayed at once: ASYNC_LOOPS event loops, each on a worker thread of
its own, each running up to RUNS_PER_LOOP runs, each run in its own task (the owner)."""
DRIVERS: Final[tuple[Flavor, ...]] = ("sync", "async")

Row = tuple[str, str, str]
Path = tuple[Row, ...]


# -- the paths, from the table --------------------------------------------------------------


BREAKER_TRIGGERS: Final = frozenset({"skip_route", "exhaust_routes"})
"""Rows taken when a route's circuit breaker refuses a run. Their scenarios need breaker
state built up by earlier runs, so ``tests/test_breaker.py`` replays them (every row,
on both drivers, with these same invariants); the attempts' paths are enumerated here."""


def table_rows() -> list[Row]:
    return [
        (row["trigger"], row["source"], row["dest"])
        for row in _machine.TRANSITIONS
        if row["trigger"] not in BREAKER_TRIGGERS
    ]


def _rows_from(state: str) -> list[Row]:
    return [row for row in table_rows() if row[1] == state]


def simple_paths() -> list[Path]:
    """Every path from idle to a final state that visits no state twice."""
    found: list[Path] = []

    def walk(state: str, seen: frozenset[str], path: tuple[Row, ...]) -> None:
        if state in FINAL_STATES:
            found.append(path)
            return
        for row in _rows_from(state):
            if row[2] not in seen:
                walk(row[2], seen | {row[2]}, (*path, row))

    walk("idle", frozenset({"idle"}), ())
    return found


def bounded_paths(attempts: int = ATTEMPT_BOUND, routes: int = len(PROVIDERS)) -> list[Path]:
    """Every path from idle to a final state with at most ``attempts`` attempts, over
    ``routes`` routes taken in order (a fallback moves to the next route, which must exist)."""
    found: list[Path] = []

    def walk(state: str, route: int, started: int, path: tuple[Row, ...]) -> None:
        if state in FINAL_STATES:
            found.append(path)
            return
        for row in _rows_from(state):
            trigger, source, dest = row
            next_route, next_started = route, started
            if trigger == "start_attempt":
                if started == attempts:
                    continue
                next_started += 1
                if source == "falling_back":
                    next_route += 1
            if dest == "falling_back" and route + 1 >= routes:
                continue
            walk(dest, next_route, next_started, (*path, row))

    walk("idle", 0, 0, ())
    return found


def path_text(path: Path) -> str:
    if not path:
        return "idle"
    return " -> ".join([path[0][1], *(row[2] for row in path)])


# -- one path as attempts ---------------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    """One attempt of a path: how it ended and what came after its cleanup."""

    start: int
    """Index (in the path) of its start_attempt transition."""
    streamed: bool
    """It reached streaming (received a first meaningful event)."""
    exit: str
    """completed, stale, dropped or interrupted."""
    cleanup_exit: str | None = None
    """Where cleanup led: cancelled, failed, retrying or falling_back."""
    then: str | None = None
    """After retrying/falling_back: "next" (another attempt), "cancelled" or "expired"."""


def segments_of(path: Path) -> tuple[bool, list[Segment]]:
    """(interrupted before any attempt, the attempts)."""
    if path and path[0] == ("interrupt", "idle", "cancelled"):
        return True, []
    segments: list[Segment] = []
    i = 0
    while i < len(path):
        trigger = path[i][0]
        assert trigger == "start_attempt", path
        start = i
        i += 1
        streamed = path[i][2] == "streaming"
        if streamed:
            i += 1
        exit_ = path[i][2]
        i += 1
        if exit_ == "completed":
            segments.append(Segment(start, streamed, exit_))
            break
        assert path[i][2] == "cleanup"
        cleanup_exit = path[i + 1][2]
        i += 2
        then = None
        if cleanup_exit in ("retrying", "falling_back"):
            nxt = path[i]
            then = {"start_attempt": "next", "interrupt": "cancelled", "expire": "expired"}[nxt[0]]
            if then != "next":
                i += 1
        segments.append(Segment(start, streamed, exit_, cleanup_exit, then))
    return False, segments


# -- scenarios ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """What a replay does: the server's script, the engine's configuration, the caller's acts.
    Transition indexes count the run's transitions from 0 (``on_transition`` calls)."""

    script: tuple[Any, ...]
    retry: RetryPolicy
    routes: int = len(PROVIDERS)
    """How many routes of ``CHAIN`` the engine has."""
    total: float = GENEROUS_TOTAL
    interrupt_first: bool = False
    """interrupt() before iterating: idle -> cancelled."""
    timers: tuple[int, ...] = ()
    """At these transitions a timer thread starts that calls interrupt() INTERRUPT_AFTER
    later, while the attempt is stuck in a read (a stall that outlasts the timer)."""
    interrupts: tuple[int, ...] = ()
    """At these transitions on_transition calls interrupt(), on the run's own thread."""
    hold: tuple[int, float] | None = None
    """(transition, lead): on_transition holds the run's thread until ``lead`` seconds
    before Timeouts.total runs out, so the total deadline passes during the next step
    (the backoff that follows, or the attempt that follows)."""

    def estimate(self) -> float:
        """Rough seconds the replay takes."""
        if self.hold is not None:
            return self.total
        return sum(_duration(f) for f in self.script) + _backoffs(self)


def _duration(fault: Any) -> float:
    if isinstance(fault, StallBeforeHeaders | StallAfterHeaders) or (
        isinstance(fault, PingsOnly) and fault.after_events == 0
    ):
        return FIRST_TOKEN + 0.03
    if isinstance(fault, StallAfterEvents | PingsOnly):
        return STALE + 0.03
    if isinstance(fault, HttpError) and fault.headers and fault.headers[0][1] == RETRY_AFTER:
        return 0.03 + float(RETRY_AFTER)
    return 0.03


def _backoffs(scenario: Scenario) -> float:
    return scenario.retry.initial_backoff * max(0, len(scenario.script) - 1)


# Faults for each kind of attempt (how it ends, whether it streamed first), each with how
# the adapter classifies it: ("status", code, headers), ("transport",), ("malformed",), or
# None where the driver reports no Fault (a stall, a success, an interrupt).
_CANDIDATES: Final[dict[tuple[str, bool], list[tuple[Any, Any]]]] = {
    ("completed", True): [(Healthy(), None)],
    ("stale", False): [
        (StallBeforeHeaders(), None),
        (StallAfterHeaders(), None),
        (PingsOnly(interval=0.05), None),
    ],
    ("stale", True): [
        (StallAfterEvents(n=1), None),
        (PingsOnly(interval=0.05, after_events=1), None),
    ],
    ("dropped", False): [
        (HttpError(status=500), ("status", 500, ())),
        (DropAfterEvents(n=0), ("transport",)),
        (HttpError(status=529), ("status", 529, ())),
        (MalformedEvent(after_events=0), ("malformed",)),
        (HttpError(status=429), ("status", 429, ())),
        # not interchangeable: tried in this order when the cheap ones do not fit
        (HttpError(status=401), ("status", 401, ())),
        (HttpError(status=403), ("status", 403, ())),
        (HttpError(status=400), ("status", 400, ())),
        (
            HttpError(status=529, headers=(("retry-after", "120"),)),
            ("status", 529, (("retry-after", "120"),)),
        ),
        (
            HttpError(status=529, headers=(("retry-after", RETRY_AFTER),)),
            ("status", 529, (("retry-after", RETRY_AFTER),)),
        ),
    ],
    ("dropped", True): [
        (DropAfterEvents(n=1), ("transport",)),
        (MalformedEvent(after_events=1), ("malformed",)),
    ],
    ("interrupted", False): [(StallBeforeHeaders(), None)],
    ("interrupted", True): [(StallAfterEvents(n=1), None)],
}
_INTERCHANGEABLE: Final = {("dropped", False): 5}
"""How many leading candidates of a kind are interchangeable (rotated for variety)."""


def _classified(kind: Any, api_mode: str) -> Fault:
    if kind[0] == "status":
        return status_fault(kind[1], api_mode=api_mode, message="x", headers=dict(kind[2]))
    if kind[0] == "transport":
        return transport_fault(ConnectionResetError(), api_mode=api_mode)
    return malformed_fault(ValueError("not JSON"), api_mode=api_mode)


POLICIES: Final = tuple(
    RetryPolicy(
        max_attempts=max_attempts,
        initial_backoff=backoff,
        max_backoff=backoff,
        jitter=0.0,
        on_partial=on_partial,  # type: ignore[arg-type]
        **stale_retries,
    )
    for stale_retries in ({}, {"stale_before_fallback": None})
    for backoff in (0.0, 0.2)
    for on_partial in ("restart", "fail")
    for max_attempts in (2, 1, 3)
)
"""Tried in order; the default stall rule first (a stall falls back at once when a later
route exists), then the caller's same-route stall retries (``stale_before_fallback=None``),
for the paths that retry a stall on a route before the last; zero backoff first (a
backoff is only needed for a deadline to pass)."""


class _Oracle:
    """The pure core, fed what a driver reports, on a fake clock."""

    def __init__(self, retry: RetryPolicy, routes: int = len(PROVIDERS)) -> None:
        infos = [RouteInfo(api_mode=m, model=f"m{i}", target=i) for i, m in enumerate(MODES)]
        self.t = 1000.0
        self.core = RunCore(
            routes=infos[:routes],
            timeouts=Timeouts(
                connect=1, first_token=FIRST_TOKEN, stale=STALE, total=GENEROUS_TOTAL
            ),
            retry=retry,
            started_at=self.t,
            rng=random.Random(0),
        )

    def feed(self, event_type: type, **kwargs: Any) -> None:
        self.t += 0.01
        self.core.feed(event_type(at=self.t, **kwargs))

    def copy(self) -> _Oracle:
        clone = _Oracle(self.core.retry, len(self.core.routes))
        clone.t = self.t
        for name, value in vars(self.core).items():
            setattr(clone.core, name, list(value) if isinstance(value, list) else value)
        return clone


@dataclass(frozen=True)
class _Plan:
    script: tuple[Any, ...] = ()
    timers: tuple[int, ...] = ()
    interrupts: tuple[int, ...] = ()
    hold: tuple[int, float] | None = None


_CHOICES: dict[tuple[Any, ...], tuple[str, int] | None] = {}
"""What ``_attempt_plan`` chose, by the core's abstract state and the attempt's kind: the
same question comes up for thousands of paths, and the core is slow to ask (~80 us/event)."""


def _attempt_plan(oracle: _Oracle, seg: Segment, plan: _Plan) -> tuple[_Oracle, _Plan] | None:
    """A fault (and what the caller does) for one attempt, such that the core, fed what
    the driver would report, takes ``seg``'s way; None if no candidate does."""
    candidates = _CANDIDATES[(seg.exit, seg.streamed)]
    swappable = candidates[: _INTERCHANGEABLE.get((seg.exit, seg.streamed), len(candidates))]
    shift = seg.start % len(swappable)  # vary the fault type with the path's shape
    order = swappable[shift:] + swappable[:shift] + candidates[len(swappable) :]
    clocks: list[str] = ["stale" if seg.streamed else "first_token"]
    if seg.exit == "stale" and seg.cleanup_exit == "failed":
        clocks.append("total")  # Timeouts.total ends the attempt, and with it the run
    core0 = oracle.core
    decision0 = core0.decision
    key = (
        core0.retry,
        len(core0.routes),
        core0.state,
        None if decision0 is None else (decision0.kind, decision0.route_index, decision0.delay),
        tuple(core0.attempts_per_route),
        core0.committed,
        core0.interrupt_requested,
        core0.total_expired,
        seg.streamed,
        seg.exit,
        seg.cleanup_exit,
        seg.then,
        shift,
    )
    options = [(clock, i) for clock in clocks for i in range(len(order))]
    if key in _CHOICES:
        known = _CHOICES[key]
        options = [] if known is None else [known]
    for clock, index in options:
        fault, classified = order[index]
        if True:
            trial = oracle.copy()
            core = trial.core
            route = core.decision.route_index if core.decision is not None else 0
            trial.feed(AttemptStarted, route_index=route)
            if seg.streamed:
                trial.feed(FirstEventReceived)
            if seg.exit == "completed":
                trial.feed(StreamFinished)
                _CHOICES[key] = (clock, index)
                return trial, replace(plan, script=(*plan.script, fault))
            if seg.exit == "stale":
                trial.feed(StallDetected, clock=clock, deadline=trial.t)
            elif seg.exit == "dropped":
                trial.feed(AttemptFailed, fault=_classified(classified, MODES[route]))
            else:
                trial.feed(InterruptRequested)
            interrupted = seg.exit == "interrupted" or seg.cleanup_exit == "cancelled"
            trial.feed(CleanupFinished, interrupted=interrupted)
            if core.state != seg.cleanup_exit:
                continue
            delay = core.decision.delay if core.decision is not None else 0.0
            if seg.then != "expired" and delay > 0 and core.retry.initial_backoff == 0:
                continue  # a retry-after wait this path does not need
            cleanup_at = seg.start + (2 if seg.streamed else 1) + 1
            timers, interrupts, hold = plan.timers, plan.interrupts, plan.hold
            if seg.exit == "interrupted":
                timers = (*timers, seg.start + (1 if seg.streamed else 0))
            elif seg.cleanup_exit == "cancelled":
                interrupts = (*interrupts, cleanup_at)
            if clock == "total":
                hold = (seg.start, 0.1)  # the attempt starts 0.1 s before the deadline
            if seg.then == "cancelled":
                trial.feed(InterruptRequested)
                interrupts = (*interrupts, cleanup_at + 1)
            elif seg.then == "expired":
                trial.feed(DeadlinePassed)
                # With a backoff, it outlasts what remains; without one (a fallback or a
                # zero-delay retry), the run's thread is held just past the deadline.
                hold = (cleanup_at + 1, 0.05 if delay > 0 else -0.02)
            _CHOICES[key] = (clock, index)
            return trial, _Plan((*plan.script, fault), timers, interrupts, hold)
    _CHOICES[key] = None
    return None


@functools.cache
def _prefix_plan(
    policy: int, segments: tuple[Segment, ...], routes: int
) -> tuple[_Oracle, _Plan] | None:
    if not segments:
        return _Oracle(POLICIES[policy], routes), _Plan()
    before = _prefix_plan(policy, segments[:-1], routes)
    if before is None:
        return None
    return _attempt_plan(before[0], segments[-1], before[1])


def scenario_for(path: Path, routes: int = len(PROVIDERS)) -> Scenario | None:
    """A scenario that makes the engine take ``path`` over the first ``routes`` routes of
    ``CHAIN``, or None if its policy allows none."""
    before_any, segments = segments_of(path)
    if before_any:
        return Scenario(script=(), retry=POLICIES[0], interrupt_first=True)
    for policy in range(len(POLICIES)):
        found = _prefix_plan(policy, tuple(segments), routes)
        if found is None:
            continue
        oracle, plan = found
        observed = tuple((t.trigger, t.source, t.dest) for t in oracle.core.history)
        assert observed == path, f"the mapping is wrong: {observed} for {path}"
        scenario = Scenario(
            script=plan.script,
            retry=POLICIES[policy],
            routes=routes,
            timers=plan.timers,
            interrupts=plan.interrupts,
            hold=plan.hold,
        )
        if plan.hold is not None:
            needed = sum(_duration(f) for f in plan.script) + _backoffs(scenario)
            scenario = replace(scenario, total=round(needed + 0.6, 3))
        return scenario
    return None


def falls_back_twice(path: Path) -> bool:
    return sum(1 for row in path if row == ("start_attempt", "falling_back", "connecting")) == 2


SIMPLE: Final = simple_paths()
BOUNDED: Final = bounded_paths()
THIRD_ROUTE: Final = [p for p in bounded_paths(routes=len(CHAIN)) if falls_back_twice(p)]
"""The paths that reach the third route (over all three): only these need it; every other
path over three routes is one of ``BOUNDED`` with a route the run never reaches."""
SCENARIOS: Final = {
    **{path: scenario_for(path) for path in BOUNDED},
    **{path: scenario_for(path, routes=len(CHAIN)) for path in THIRD_ROUTE},
}
FEASIBLE: Final = [path for path, scenario in SCENARIOS.items() if scenario is not None]
INFEASIBLE: Final = [path for path, scenario in SCENARIOS.items() if scenario is None]
DISTINCT: Final = {SCENARIOS[path]: path for path in FEASIBLE}
"""One path per distinct scenario: paths that map to the same scenario are replayed once."""

_SHORT = {
    "connecting": "C",
    "streaming": "S",
    "stale": "stale",
    "dropped": "drop",
    "interrupted": "intr",
    "cleanup": "cl",
    "retrying": "retry",
    "falling_back": "fallback",
    "completed": "OK",
    "failed": "FAILED",
    "cancelled": "CANCELLED",
}


def path_id(path: Path) -> str:
    return "-".join(_SHORT[dest] for _, _, dest in path)


# -- replay ---------------------------------------------------------------------------------


@dataclass
class Replay:
    path: Path
    scenario: Scenario
    flavor: Flavor = "sync"
    record: RunRecord | None = None
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    first_try: str = ""
    """The path a first try took instead (short notation), when it was run again alone."""
    first_problems: list[str] = field(default_factory=list)
    """What the first try broke, when it was run again alone."""
    interrupters: list[str] = field(default_factory=list)
    """Async: who called interrupt() on a stuck attempt ("loop" or "thread"), per timer."""

    @property
    def only_timing(self) -> bool:
        """The run broke no invariant but the two that a concurrent replay can break
        without a bug of its own: it took another path (a clock ran out first on a loaded
        host, a request slower than FIRST_TOKEN to be answered), or the server saw one of
        its connections open after the final state. The second is also how an open issue
        shows (see ``KNOWN_OPEN``): such a replay is run again alone, and its first try's
        problems are printed in the report. Rules about cleanup, owners, adapters and
        bounds are never excused; run again alone, a deterministic leak leaks again."""
        return bool(self.problems) and all(p.startswith(TIMING_PROBLEMS) for p in self.problems)


KNOWN_OPEN: Final = (
    "Seen in about one full replay in three (both SDK stacks, loaded and idle hosts): an "
    "attempt aborted while connecting (an interrupt or Timeouts.total) whose request still "
    "reaches the server 0.2-0.9 s later, on a connection left open until engine.close(). "
    "Not reproduced alone; not yet explained."
)


TIMING_PROBLEMS: Final = ("[path]", "[connections]")


def _listener(
    scenario: Scenario, holder: list[RunRecord], arm_timer: Callable[[RunRecord], None]
) -> Callable[[Any], None]:
    """The caller's acts at the scenario's transitions, on the run's own thread (sync) or
    in its own task (async). A hold sleeps there: on the async driver that holds the loop,
    and with it the run's task, as a slow listener would (so a holding replay runs alone
    on its loop)."""
    count = [0]

    def on_transition(_: Any) -> None:
        index = count[0]
        count[0] += 1
        record = holder[0]
        if index in scenario.timers:
            arm_timer(record)
        if index in scenario.interrupts:
            record.interrupt()
        if scenario.hold is not None and index == scenario.hold[0]:
            until = record.t_start + scenario.total - scenario.hold[1]
            time.sleep(max(0.0, until - time.monotonic()))

    return on_transition


def _engine(
    server: LoopbackServer,
    scenario: Scenario,
    key: str,
    flavor: Flavor,
    on_transition: Callable[[Any], None],
) -> StreamEngine:
    routes = make_routes(server, flavor, CHAIN[: scenario.routes], tag=f"-{key}", shared_tls=True)
    for index, route in enumerate(routes):
        route.name = f"{route.name}#{index}"  # routes 0 and 2 share a model: one breaker each
    return StreamEngine(
        routes=routes,
        timeouts=Timeouts(
            connect=min(1.0, scenario.total),
            first_token=FIRST_TOKEN,
            stale=STALE,
            total=scenario.total,
        ),
        retry=scenario.retry,
        on_transition=on_transition,
    )


def _left_open(server: LoopbackServer, key: str) -> Callable[[], bool]:
    return lambda: not [c for c in server.connection_log if key in c.keys and c.closed_at is None]


def replay(
    server: LoopbackServer,
    path: Path,
    scenario: Scenario,
    key: str,
    delay: float = 0.0,
    flavor: Flavor = "sync",
) -> Replay:
    """Run ``scenario`` on the real ``flavor`` driver on this thread (async: in a task of
    an event loop of its own); check the path it took and every invariant before the
    engine is closed, and that closing it leaves nothing open."""
    if flavor == "async":
        return asyncio.run(areplay(server, path, scenario, key, delay))
    time.sleep(delay)  # stagger the first runs of a pool: a burst of cold starts
    result = Replay(path, scenario, flavor)
    began = time.monotonic()
    holder: list[RunRecord] = []
    engine = _engine(
        server,
        scenario,
        key,
        "sync",
        _listener(scenario, holder, lambda record: record.interrupt_later(INTERRUPT_AFTER)),
    )
    record: RunRecord | None = None
    try:
        record = _begin(engine, server, key, "sync", scenario, path, holder)
        drive_sync(record)
        result.record = record
        if tuple(record.path()) != path:
            result.problems.append(f"[path] took {record.path_text()}")
        result.problems += [f"[{name}] {message}" for name, message in violations(record)]
    finally:
        if record is not None:
            record.stop_timers()
        engine.close()
    if not server.wait_until(_left_open(server, key), timeout=2.0):
        result.problems.append("[connections] engine.close() left a connection of the run open")
    result.seconds = time.monotonic() - began
    return result


def _begin(
    engine: StreamEngine,
    server: LoopbackServer,
    key: str,
    flavor: Flavor,
    scenario: Scenario,
    path: Path,
    holder: list[RunRecord],
) -> RunRecord:
    """The run of a replay, known to its listener, interrupted first if the path says so."""
    record = start_run(engine, server, key, flavor, scenario.script)
    record.notes.append(f"expected path: {path_text(path)}")
    holder.append(record)
    if scenario.interrupt_first:
        record.interrupt()
    return record


def interrupter(path: Path) -> str:
    """Who interrupts a stuck async attempt: a callback of the run's loop (the asyncio
    caller's ``loop.call_later``: on the owner's thread, not in its task) or, as for the
    sync driver, a timer thread. Fixed by the path, half of the paths each."""
    return "thread" if zlib.crc32(path_id(path).encode()) % 2 else "loop"


async def areplay(
    server: LoopbackServer, path: Path, scenario: Scenario, key: str, delay: float = 0.0
) -> Replay:
    """``replay`` on the async driver (``engine.astream``), iterated in the current task:
    the run's owner. Blocking checks run in a worker thread, so that other replays on the
    same loop keep their clocks."""
    await asyncio.sleep(delay)
    result = Replay(path, scenario, "async")
    began = time.monotonic()
    holder: list[RunRecord] = []
    handles: list[asyncio.TimerHandle] = []
    via = interrupter(path)

    def arm_timer(record: RunRecord) -> None:
        result.interrupters.append(via)
        if via == "thread":
            record.interrupt_later(INTERRUPT_AFTER)
        else:
            handles.append(interrupt_on_loop(record, INTERRUPT_AFTER))

    engine = _engine(server, scenario, key, "async", _listener(scenario, holder, arm_timer))
    record: RunRecord | None = None
    try:
        record = _begin(engine, server, key, "async", scenario, path, holder)
        await drive_async(record)
        for handle in handles:
            handle.cancel()
        result.record = record
        if tuple(record.path()) != path:
            result.problems.append(f"[path] took {record.path_text()}")
        found = await asyncio.to_thread(violations, record)
        result.problems += [f"[{name}] {message}" for name, message in found]
    finally:
        for handle in handles:
            handle.cancel()
        if record is not None:
            record.stop_timers()
        await engine.aclose()
    if not await asyncio.to_thread(server.wait_until, _left_open(server, key), 2.0):
        result.problems.append("[connections] engine.close() left a connection of the run open")
    result.seconds = time.monotonic() - began
    return result


def _broken_replay(path: Path, scenario: Scenario, flavor: Flavor, exc: BaseException) -> Replay:
    """The replay itself broke (not the run): reported as a problem of its path."""
    result = Replay(path, scenario, flavor)
    result.problems.append(f"[replay] {exc!r}")
    return result


def _replay_sync(
    server: LoopbackServer, ordered: list[tuple[Scenario, Path]]
) -> dict[Path, Replay]:
    results: dict[Path, Replay] = {}
    with ThreadPoolExecutor(WORKERS, thread_name_prefix="path-replay") as pool:
        futures = {
            pool.submit(
                replay,
                server,
                path,
                scenario,
                f"path-{path_id(path)}-{i}",
                0.03 * i if i < WORKERS else 0.0,
            ): (scenario, path)
            for i, (scenario, path) in enumerate(ordered)
        }
        for future, (scenario, path) in futures.items():
            try:
                results[path] = future.result(timeout=60)
            except Exception as exc:
                results[path] = _broken_replay(path, scenario, "sync", exc)
    return results


async def _replay_on_one_loop(
    server: LoopbackServer, batch: list[tuple[int, Scenario, Path]]
) -> list[Replay]:
    """The batch's replays at once, each in a task of its own (each task its run's owner)."""

    async def one(i: int, scenario: Scenario, path: Path) -> Replay:
        try:
            async with asyncio.timeout(60):
                return await areplay(
                    server,
                    path,
                    scenario,
                    f"apath-{path_id(path)}-{i}",
                    0.03 * i if i < ASYNC_LOOPS * RUNS_PER_LOOP else 0.0,
                )
        except Exception as exc:
            return _broken_replay(path, scenario, "async", exc)

    tasks = [
        asyncio.create_task(one(i, scenario, path), name=f"path-replay-{i}")
        for i, scenario, path in batch
    ]
    return list(await asyncio.gather(*tasks))


def _replay_async(
    server: LoopbackServer, ordered: list[tuple[Scenario, Path]]
) -> dict[Path, Replay]:
    # Up to RUNS_PER_LOOP replays share a loop; one whose listener holds the loop (a hold)
    # would hold its neighbours' clocks too, so it gets a loop of its own.
    batches: list[list[tuple[int, Scenario, Path]]] = []
    shared: list[tuple[int, Scenario, Path]] = []
    for i, (scenario, path) in enumerate(ordered):
        if scenario.hold is not None:
            batches.append([(i, scenario, path)])
            continue
        shared.append((i, scenario, path))
        if len(shared) == RUNS_PER_LOOP:
            batches.append(shared)
            shared = []
    if shared:
        batches.append(shared)
    results: dict[Path, Replay] = {}
    with ThreadPoolExecutor(ASYNC_LOOPS, thread_name_prefix="path-replay-loop") as pool:
        futures = {
            pool.submit(asyncio.run, _replay_on_one_loop(server, batch)): batch for batch in batches
        }
        for future, batch in futures.items():
            try:
                replays = future.result(timeout=90)
            except Exception as exc:
                replays = [
                    _broken_replay(path, scenario, "async", exc) for _, scenario, path in batch
                ]
            results.update((r.path, r) for r in replays)
    return results


def replay_all(
    server: LoopbackServer, work: list[tuple[Scenario, Path]], flavor: Flavor = "sync"
) -> dict[Path, Replay]:
    """Replay scenarios concurrently, longest first: sync, WORKERS at a time, each run on
    its own worker thread (its owner); async, on ASYNC_LOOPS event loops (one per worker
    thread), up to RUNS_PER_LOOP runs on each, each run in its own task (its owner)."""
    ordered = sorted(work, key=lambda item: -item[0].estimate())
    # A dozen runs and the server's loop share the GIL: hand it over every 1 ms rather than
    # 5 ms, so a request is not held up for a quarter second behind a convoy of threads.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.001)
    try:
        if flavor == "sync":
            results = _replay_sync(server, ordered)
        else:
            results = _replay_async(server, ordered)
    finally:
        sys.setswitchinterval(interval)
    # A replay whose only problems are a deviation or a connection seen open (only_timing)
    # is run once more, alone: only the second try counts; the first is reported.
    for path, result in list(results.items()):
        if result.only_timing:
            again = replay(
                server, path, result.scenario, f"path-again-{flavor}-{path_id(path)}", 0.0, flavor
            )
            assert result.record is not None
            again.first_try = path_id(tuple(result.record.path()))
            if again.first_try == path_id(path):
                again.first_try += " (same path)"
            again.first_problems = list(result.problems)
            results[path] = again
    return results


SHARD_SIZE: Final = 40
"""Scenarios per replay test. The replays of each driver are split so that one slow or
stuck shard (its own ``pytest-timeout``) fails one test, not the whole enumeration; dealt
round-robin from the longest-first order, every shard gets a like mix of long and short
scenarios."""


def shards() -> list[list[tuple[Scenario, Path]]]:
    ordered = sorted(DISTINCT.items(), key=lambda item: (-item[0].estimate(), path_id(item[1])))
    count = -(-len(ordered) // SHARD_SIZE)
    return [ordered[k::count] for k in range(count)]


SHARDS: Final = shards()
REPLAYED: Final[dict[Flavor, dict[Path, Replay]]] = {flavor: {} for flavor in DRIVERS}
"""Every replay this session ran, by driver, for the module's report."""
SHARD_SECONDS: Final[dict[Flavor, float]] = dict.fromkeys(DRIVERS, 0.0)
SHARDS_RUN: Final[dict[Flavor, int]] = dict.fromkeys(DRIVERS, 0)


def _driver_lines(flavor: Flavor) -> list[str]:
    results = REPLAYED[flavor]
    if not results:
        return []
    failed = sum(1 for r in results.values() if r.problems)
    again = sum(1 for r in results.values() if r.first_try)
    if flavor == "sync":
        how = f"the real sync driver ({WORKERS} threads at a time"
    else:
        via = Counter(v for r in results.values() for v in r.interrupters)
        how = (
            f"the real async driver, engine.astream ({ASYNC_LOOPS} loops on their own threads, "
            f"up to {RUNS_PER_LOOP} runs each, a holding run alone; timer interrupts from a "
            f"loop callback {via['loop']}, from a thread {via['thread']}"
        )
    reruns = [
        f"test_paths:   {flavor}: {path_id(r.path)} took {r.first_try} first"
        + (
            f" ({'; '.join(p for p in r.first_problems if not p.startswith('[path]'))})"
            if len(r.first_problems) > 1
            else ""
        )
        for r in results.values()
        if r.first_try
    ]
    return [
        f"test_paths: {flavor}: replayed {len(results)} of {len(DISTINCT)} distinct scenarios on "
        f"{how}) in {SHARDS_RUN[flavor]} of {len(SHARDS)} shards, {SHARD_SECONDS[flavor]:.1f}s "
        f"({sum(r.seconds for r in results.values()):.0f}s of runs), {failed} with problems, "
        f"{again} run again alone after a timing deviation",
        *reruns[:5],
        *(
            [f"test_paths:   {flavor}: a first try left a connection open: {KNOWN_OPEN}"]
            if any(
                p.startswith("[connections]") for r in results.values() for p in r.first_problems
            )
            else []
        ),
    ]


@pytest.fixture(scope="module", autouse=True)
def replay_report(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if not any(REPLAYED.values()):
        return
    kinds = Counter(type(f).__name__ for s in DISTINCT for f in s.script)
    third = sum(1 for p in THIRD_ROUTE if SCENARIOS[p] is not None)
    report(
        request.config,
        [
            f"test_paths: {len(SIMPLE)} simple paths idle -> final; {len(BOUNDED)} paths of up to "
            f"{ATTEMPT_BOUND} attempts over {' then '.join(MODES[:2])} and {len(THIRD_ROUTE)} "
            f"more that fall back twice, to a third route ({MODES[2]}): {len(FEASIBLE)} "
            f"feasible under the engine's policy ({third} of them over three routes), "
            f"{len(INFEASIBLE)} not; faults per driver: {dict(kinds)}",
            *(line for flavor in DRIVERS for line in _driver_lines(flavor)),
        ],
    )


# -- the tests --------------------------------------------------------------------------------


def test_the_enumeration_is_sound() -> None:
    rows = set(table_rows())
    simple = set(SIMPLE)
    assert len(simple) == len(SIMPLE) and simple <= set(BOUNDED)
    for path in BOUNDED:
        assert path[0][1] == "idle" and path[-1][2] in FINAL_STATES
        assert all(a[2] == b[1] for a, b in itertools.pairwise(path))
        assert set(path) <= rows
    # Every simple path is as long as its states are distinct; each visits connecting once.
    assert all(sum(1 for r in p if r[0] == "start_attempt") <= 1 for p in SIMPLE)
    assert max(sum(1 for r in p if r[0] == "start_attempt") for p in BOUNDED) == ATTEMPT_BOUND


def test_every_row_is_on_an_enumerated_path() -> None:
    rows = set(table_rows())
    # A simple path never comes back to connecting: only the start_attempt rows out of
    # retrying and falling_back need a second attempt.
    off_simple = rows - {row for path in SIMPLE for row in path}
    assert off_simple == {
        ("start_attempt", "retrying", "connecting"),
        ("start_attempt", "falling_back", "connecting"),
    }
    assert rows == {row for path in BOUNDED for row in path}, "rows on no path"


def test_every_simple_path_is_feasible_or_explained() -> None:
    """The simple paths the engine cannot take are the ones its policy rules out: an
    interrupted attempt never retries or falls back, and the drivers never let the total
    deadline pass while falling back (no backoff there). Anything else is a mapping gap."""
    for path in SIMPLE:
        if SCENARIOS[path] is not None:
            continue
        _, segments = segments_of(path)
        seg = segments[0]
        explained = (seg.exit == "interrupted" and seg.cleanup_exit != "cancelled") or (
            seg.cleanup_exit == "falling_back" and seg.then == "expired"
        )
        assert explained, f"no scenario for {path_text(path)}"


def _shard_timeout(shard: list[tuple[Scenario, Path]], flavor: Flavor) -> float:
    """Generous: the shard's runs as if only a quarter of the workers made progress, plus
    the lone reruns, plus a minute of slack for a machine busy with other work. Async
    counts its loops, not its runs: a holding run has a loop to itself."""
    runs = sum(scenario.estimate() for scenario, _ in shard)
    at_once = WORKERS if flavor == "sync" else ASYNC_LOOPS
    return 60.0 + 4 * runs / at_once + max(scenario.estimate() for scenario, _ in shard) * 4


@pytest.mark.parametrize(
    ("flavor", "shard"),
    [
        pytest.param(
            flavor,
            shard,
            id=f"{flavor}-shard-{k:02d}-of-{len(SHARDS)}",
            marks=pytest.mark.timeout(_shard_timeout(shard, flavor)),
        )
        for flavor in DRIVERS
        for k, shard in enumerate(SHARDS)
    ],
)
@pytest.mark.usefixtures("server")  # the module's server warms both SDK stacks up
def test_paths_replay_on_the_real_engine(
    flavor: Flavor, shard: list[tuple[Scenario, Path]]
) -> None:
    """Each path of the shard is taken exactly on the ``flavor`` driver, and every
    invariant holds on it. On a server of its own: the invariants read the server's
    request and connection logs, which it copies whole under its lock on every read, so
    with 2,000 replays' worth in one server the reads starve it of its lock (a shard took
    four times as long in the second half of the module, and replays broke deadlines)."""
    began = time.monotonic()
    with LoopbackServer() as own:
        results = replay_all(own, shard, flavor)
    SHARD_SECONDS[flavor] += time.monotonic() - began
    SHARDS_RUN[flavor] += 1
    broken = [r for r in results.values() if r.problems]
    details = []
    for r in broken:
        description = ""
        if r.record is not None:
            times = [(t.dest, round(t.at, 3)) for t in r.record.run.history]
            description = f"{r.record.describe()}\n  transitions at: {times}"
        details.append(
            f"{flavor} {path_id(r.path)} ({path_text(r.path)}):\n  "
            + "\n  ".join(r.problems)
            + (f"\n{description}" if description else "")
        )
    # The report needs no run: kept, 2,000 records keep their engines, clients and SDK
    # objects alive, and the collector's full passes over them stop every thread (seen:
    # 0.73 s with the async half alone; async holding replays late in the module overran
    # Timeouts.total by 1.2-1.5 s).
    for r in results.values():
        r.record = None
    REPLAYED[flavor].update(results)
    if broken:
        raise InvariantViolation(
            [
                (
                    p.split("] ", 1)[0].strip("["),
                    f"{flavor} {path_id(r.path)}: {p.split('] ', 1)[-1]}",
                )
                for r in broken
                for p in r.problems
            ]
        ) from AssertionError("\n\n".join(details))


def test_every_row_is_replayed() -> None:
    """Every row of the table is on a replayed path; each shard checks that every replay
    took exactly its path, so together the shards take every row (on each driver)."""
    replayed = {row for path in DISTINCT.values() for row in path}
    missing = set(table_rows()) - replayed
    assert not missing, f"rows no replay takes: {sorted(missing)}"
    assert sum(len(shard) for shard in SHARDS) == len(DISTINCT)
    assert max(len(shard) for shard in SHARDS) <= SHARD_SIZE


def attempts_of(path: Path) -> list[tuple[int, str, str | None]]:
    """(route index, how the attempt left connecting/streaming, where its cleanup led) for
    each attempt of a path: a fallback moves to the next route of the chain."""
    found: list[tuple[int, str, str | None]] = []
    route = 0
    for trigger, source, dest in path:
        if trigger == "start_attempt":
            if source == "falling_back":
                route += 1
            found.append((route, "open", None))
        elif source in ("connecting", "streaming") and dest != "streaming":
            found[-1] = (route, dest, None)
        elif source == "cleanup":
            found[-1] = (*found[-1][:2], dest)
    return found


def test_every_route_of_the_chain_faults_every_way() -> None:
    """Not only route 0: on every route of the chain some replayed attempt stalls, drops
    and is interrupted, and a cleanup of each route leads to each place it can (another
    attempt on the route, the next route, the end of the run), so that a cleanup aimed at
    the wrong route, from any route, breaks an invariant on some replay."""
    seen = {attempt for path in DISTINCT.values() for attempt in attempts_of(path)}
    exits = {(route, exit_) for route, exit_, _ in seen}
    for route in range(len(CHAIN)):
        assert {e for r, e in exits if r == route} == {
            "completed",
            "stale",
            "dropped",
            "interrupted",
        }, route
        afterwards = {after for r, _, after in seen if r == route and after is not None}
        last = route == len(CHAIN) - 1
        assert afterwards == {"retrying", "failed", "cancelled"} | (
            set() if last else {"falling_back"}
        ), (route, afterwards)


@pytest.mark.parametrize("flavor", DRIVERS)
def test_total_runs_out_while_falling_back(server: LoopbackServer, flavor: Flavor) -> None:
    path = (
        ("start_attempt", "idle", "connecting"),
        ("drop", "connecting", "dropped"),
        ("begin_cleanup", "dropped", "cleanup"),
        ("finish_cleanup", "cleanup", "falling_back"),
        ("expire", "falling_back", "failed"),
    )
    # HTTP 401 on route 0 falls back at once; the listener holds the run's thread (async:
    # its loop) on cleanup -> falling_back until 20 ms after the deadline: it must expire.
    scenario = Scenario(
        script=(HttpError(status=401), Healthy()), retry=POLICIES[0], total=1.0, hold=(3, -0.02)
    )
    result = replay(server, path, scenario, f"falling-back-expires-{flavor}", 0.0, flavor)
    assert not result.problems, "\n".join(
        [*result.problems, result.record.describe() if result.record else ""]
    )
