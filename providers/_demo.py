"""``lifecycle demo``: the real SDKs through a gallery of faults on the loopback server.

Each scenario prints its path through the states as it happens (the transition that
ends an attempt names the attempt and its outcome, the words of ``lifecycle.OUTCOMES``),
then a summary table whose recovery columns are explained above it: from the stall
deadline (or the failure) to the next attempt's start, split into detection, cleanup,
rebuild and backoff from the times the engine records. Exit status 0 means every
expectation held (``Check``: each scenario's final state, the burst's outcomes, no
connection left open); otherwise each failing one is printed with what it expected and
what it saw.

``--record FILE`` attaches a ``lifecycle.record.TransitionRecorder`` to every engine of
the demo (``lifecycle report FILE`` summarizes it). ``--concurrent`` runs the scenarios
at once, each on its own thread, plus a burst of async runs against a route that keeps
failing until its breaker opens, is probed and closes again; ``--watch`` implies it and
shows the runs in flight and the breakers live (rich, refreshed 4 times a second on a
terminal; a plain snapshot every second otherwise).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anthropic
import openai

from lifecycle import (
    AsyncRun,
    AttemptRecord,
    BreakerChange,
    BreakerPolicy,
    Interrupted,
    LifecycleError,
    LifecycleHooks,
    RetryPolicy,
    Route,
    Run,
    StreamEngine,
    StreamFailed,
    Timeouts,
    Transition,
)
from lifecycle._outcomes import attempt_text, ending_of
from lifecycle._run_base import RunBase
from lifecycle.record import TransitionRecorder

from .anthropic_messages import AnthropicMessages
from .loopback import (
    DropAfterEvents,
    Healthy,
    HttpError,
    LoopbackServer,
    PingsOnly,
    ServerFault,
    StallAfterEvents,
    StallAfterHeaders,
    StallBeforeHeaders,
    validation_available,
)
from .openai_chat_completions import OpenAIChatCompletions

__all__ = ["run_demo"]


@dataclass(frozen=True, kw_only=True)
class Scenario:
    name: str
    title: str
    first: str  # "anthropic" or "openai": the first route
    faults: tuple[ServerFault, ...]
    expect: str  # final state
    interrupt_after: float | None = None
    max_attempts: int = 3


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        name="stuck-anthropic",
        title="Anthropic stream: 200, one event, then silence",
        first="anthropic",
        faults=(StallAfterEvents(n=1),),
        expect="completed",
    ),
    Scenario(
        name="stuck-openai",
        title="OpenAI stream: 200, one chunk, then silence",
        first="openai",
        faults=(StallAfterEvents(n=1),),
        expect="completed",
    ),
    Scenario(
        name="pings-only",
        title="Anthropic stream of pings only (bytes, no progress)",
        first="anthropic",
        faults=(PingsOnly(interval=0.05),),
        expect="completed",
    ),
    Scenario(
        name="stuck-before-headers",
        title="OpenAI request accepted, no response headers ever",
        first="openai",
        faults=(StallBeforeHeaders(),),
        expect="completed",
    ),
    Scenario(
        name="tcp-drop",
        title="Anthropic TCP reset mid-stream after 3 events",
        first="anthropic",
        faults=(DropAfterEvents(n=3),),
        expect="completed",
    ),
    Scenario(
        name="overload-fallback",
        title="Anthropic 529 overloaded twice, fallback to OpenAI",
        first="anthropic",
        faults=(HttpError(status=529), HttpError(status=529)),
        expect="completed",
        max_attempts=2,
    ),
    Scenario(
        name="user-interrupt",
        title="Stuck stream, the user interrupts after 0.3 s",
        first="anthropic",
        faults=(StallAfterEvents(n=1),),
        expect="cancelled",
        interrupt_after=0.3,
    ),
)


@dataclass(frozen=True, kw_only=True, slots=True)
class Check:
    """One expectation of the demo, named, with what was expected and what was seen."""

    name: str
    ok: bool
    expected: str
    seen: str

    def line(self) -> str:
        return f"{self.name}: expected {self.expected}; saw {self.seen}"


RECOVERY_PARTS = ("detection", "cleanup", "rebuild", "backoff")
RECOVERY_LEGEND = "\n".join(
    (
        "recovery = detection + cleanup + rebuild + backoff, from the stall deadline (or the",
        "moment a failure is seen) to the next attempt's start, for the run's first fault:",
        "  detection: the stall clock running out to the run's owner noticing (0 for a failure)",
        "  cleanup:   socket abort, stream and client close",
        "  rebuild:   building the route's next client",
        "  backoff:   the policy's decision, its backoff sleep, the next route's admission",
    )
)


@dataclass(frozen=True, kw_only=True, slots=True)
class Recovery:
    """The first recovery of a run, in seconds, from the diagnostics the engine records
    (``stall_deadline``, ``elapsed``, the cleanup steps' times, the next ``started_at``,
    all on the run's monotonic clock); the parts add up to ``total``."""

    total: float
    detection: float
    cleanup: float
    rebuild: float
    backoff: float


def recovery_of(attempts: Sequence[AttemptRecord]) -> Recovery | None:
    """The recovery after the first attempt that failed and was followed by another."""
    for failed, following in itertools.pairwise(attempts):
        diag = failed.diagnostics
        if failed.outcome in (None, "completed") or diag.elapsed is None:
            continue
        noticed = failed.started_at + diag.elapsed
        deadline = diag.stall_deadline if diag.stall_deadline is not None else noticed
        deadline = min(deadline, noticed)
        # Step times are when each step finished; the parts are consecutive spans, each
        # starting where the previous ended, so they add up to the whole.
        rebuilds = [s.at for s in diag.cleanup if s.step == "rebuild"]
        others = [s.at for s in diag.cleanup if s.step != "rebuild"]
        cleaned = max([noticed, *(failed.started_at + at for at in others)])
        rebuilt = max([cleaned, *(failed.started_at + at for at in rebuilds)])
        started = max(rebuilt, following.started_at)
        return Recovery(
            total=started - deadline,
            detection=noticed - deadline,
            cleanup=cleaned - noticed,
            rebuild=rebuilt - cleaned,
            backoff=started - rebuilt,
        )
    return None


@dataclass
class Outcome:
    scenario: Scenario
    state: str
    elapsed: float
    attempts: str
    recovery: Recovery | None
    path: list[str] = field(default_factory=list)
    text: str = ""
    run: Run | None = None
    failure: str | None = None
    """The message of the error the run raised to the caller, if any."""

    @property
    def checks(self) -> list[Check]:
        seen = f"{self.state} ({self.attempts or 'no attempt'})"
        if self.failure is not None:
            seen += f": {self.failure}"
        return [
            Check(
                name=f"{self.scenario.name} final state",
                ok=self.state == self.scenario.expect,
                expected=self.scenario.expect,
                seen=seen,
            )
        ]

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)


def _routes(server: LoopbackServer, first: str, key: str) -> list[Route]:
    headers = {"x-loopback-key": key}
    anthropic_route = AnthropicMessages(
        lambda: anthropic.Anthropic(
            base_url=server.anthropic_base_url, api_key="demo-key", default_headers=headers
        ),
        model="claude-demo",
    )
    openai_route = OpenAIChatCompletions(
        lambda: openai.OpenAI(
            base_url=server.openai_base_url, api_key="demo-key", default_headers=headers
        ),
        model="gpt-demo",
    )
    if first == "anthropic":
        return [anthropic_route, openai_route]
    return [openai_route, anthropic_route]


def _run_scenario(
    server: LoopbackServer,
    scenario: Scenario,
    stale: float,
    out: Callable[[str], None],
    *,
    hooks: Sequence[LifecycleHooks] = (),
    board: Board | None = None,
    label: bool = False,
) -> Outcome:
    """One scenario on its own engine. ``label``: prefix every line with the scenario's
    name (scenarios running at once share the terminal)."""
    key = f"demo-{scenario.name}-{time.monotonic_ns()}"
    server.script(key, list(scenario.faults))
    tag = f"[{scenario.name}] " if label else ""

    def say(line: str) -> None:
        out(tag + line)

    say(f"== {scenario.title}" if label else f"\n== {scenario.name}: {scenario.title}")

    engine = StreamEngine(
        routes=_routes(server, scenario.first, key),
        timeouts=Timeouts(connect=5, first_token=stale, stale=stale, total=30),
        retry=RetryPolicy(
            max_attempts=scenario.max_attempts, initial_backoff=0.05, max_backoff=0.2
        ),
        hooks=[
            _TransitionLog(say),
            *hooks,
            *([InFlight(board, scenario.name)] if board is not None else []),
        ],
    )
    if board is not None:
        board.add_engine(scenario.name, engine)
    started = time.monotonic()
    text: list[str] = []
    state = "?"
    run: Run | None = None
    failure: str | None = None
    try:
        with engine:
            run = engine.stream(messages=[{"role": "user", "content": "Hi"}], max_tokens=256)
            if scenario.interrupt_after is not None:
                timer = threading.Timer(scenario.interrupt_after, run.interrupt)
                timer.daemon = True
                timer.start()
            with run:
                for event in run:
                    if event.type == "text":
                        text.append(event.text)
                    elif event.type == "restart":
                        say("   ...... restart: the consumer discards what it showed")
                        text.clear()
    except Interrupted:
        say("   Interrupted raised to the caller")
    except StreamFailed as exc:
        failure = f"StreamFailed: {exc}"
        say(f"   {failure}")
    finally:
        if board is not None:
            board.remove_engine(scenario.name)
    if run is not None:
        state = run.state
    elapsed = time.monotonic() - started
    attempts = ", ".join(attempt_text(a) for a in (run.attempts if run is not None else ()))
    return Outcome(
        scenario=scenario,
        state=state,
        elapsed=elapsed,
        attempts=attempts,
        recovery=recovery_of(run.attempts) if run is not None else None,
        text="".join(text),
        run=run,
        failure=failure,
    )


class _TransitionLog(LifecycleHooks):
    """One line per transition; the transition that ends an attempt also names the
    attempt and its outcome (``lifecycle.OUTCOMES``): a 529 passes through the state
    ``dropped``, but the attempt's outcome, and so what the demo calls it, is ``error``."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say = say

    def on_transition(self, run: RunBase, transition: Transition) -> None:
        attempts = run.attempts
        ending = ending_of(transition, attempts[-1] if attempts else None)
        line = (
            f"   {transition.at:7.3f}s  {transition.source:>12} -> {transition.dest:<12} "
            f"({transition.trigger})"
        )
        if ending is not None:
            line = f"{line:<60} {ending}"
        self.say(line)


# -- runs in flight, for --watch -----------------------------------------------------------
class InFlight(LifecycleHooks):
    """Tracks one engine's runs in flight on a ``Board``: ``on_run_start`` adds the run,
    ``on_run_end`` removes it (and counts its final state)."""

    def __init__(self, board: Board, label: str) -> None:
        self.board = board
        self.label = label

    def on_run_start(self, run: RunBase) -> None:
        self.board.started(self.label, run)

    def on_run_end(self, run: RunBase) -> None:
        self.board.ended(run)


@dataclass(frozen=True, kw_only=True, slots=True)
class RunRow:
    run_id: str
    label: str
    state: str
    attempt: int
    route: str
    age: float | None
    """Seconds since the run's last meaningful event (or, before its attempt's first
    one, since the attempt started)."""
    waiting_first: bool


@dataclass(frozen=True, kw_only=True, slots=True)
class BreakerRow:
    label: str
    route: str
    state: str
    failures: int
    openings: int
    reopen_in: float | None


class Board:
    """What ``--watch`` shows: the runs in flight (fed by ``InFlight`` hooks) and the
    engines whose breakers are shown. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: dict[str, tuple[str, RunBase]] = {}
        self._engines: dict[str, StreamEngine] = {}
        self.always_shown: set[str] = set()
        """Engines whose breakers are shown even when closed and clean."""
        self.finished: Counter[str] = Counter()
        self.started_at = time.monotonic()

    def add_engine(self, label: str, engine: StreamEngine) -> None:
        with self._lock:
            self._engines[label] = engine

    def remove_engine(self, label: str) -> None:
        with self._lock:
            self._engines.pop(label, None)

    def started(self, label: str, run: RunBase) -> None:
        with self._lock:
            self._runs[run.id] = (label, run)

    def ended(self, run: RunBase) -> None:
        with self._lock:
            if self._runs.pop(run.id, None) is not None:
                self.finished[run.state] += 1

    def snapshot(self) -> tuple[list[RunRow], list[BreakerRow], dict[str, int]]:
        with self._lock:
            runs = list(self._runs.values())
            engines = list(self._engines.items())
            finished = dict(self.finished)
        now = time.monotonic()
        rows: list[RunRow] = []
        for label, run in runs:
            attempts = run.attempts
            last = run.last_progress_at
            waiting_first = last is None
            if last is None and attempts:
                last = attempts[-1].started_at
            route = run.route_names[attempts[-1].route_index] if attempts else "-"
            rows.append(
                RunRow(
                    run_id=run.id,
                    label=label,
                    state=run.state,
                    attempt=len(attempts),
                    route=route,
                    age=None if last is None else max(0.0, now - last),
                    waiting_first=waiting_first,
                )
            )
        breakers: list[BreakerRow] = []
        for label, engine in engines:
            for route, status in engine.breakers().items():
                if label in self.always_shown or status.state != "closed" or status.failures:
                    breakers.append(
                        BreakerRow(
                            label=label,
                            route=route,
                            state=status.state,
                            failures=status.failures,
                            openings=status.openings,
                            reopen_in=status.reopen_in,
                        )
                    )
        return rows, breakers, finished


def _age_text(row: RunRow) -> str:
    if row.age is None:
        return "-"
    return f"{row.age:.2f}s" + (" (no event yet)" if row.waiting_first else "")


def _counts_text(finished: dict[str, int]) -> str:
    return ", ".join(f"{state} {n}" for state, n in sorted(finished.items())) or "none"


def _plain_snapshot(board: Board) -> str:
    rows, breakers, finished = board.snapshot()
    elapsed = time.monotonic() - board.started_at
    lines = [f"[watch {elapsed:5.1f}s] {len(rows)} in flight; finished: {_counts_text(finished)}"]
    for r in rows:
        lines.append(
            f"    run {r.run_id} {r.label}: {r.state}, attempt {r.attempt}, {r.route}, "
            f"last event {_age_text(r)}"
        )
    for b in breakers:
        reopen = f", probe in {b.reopen_in:.1f}s" if b.reopen_in is not None else ""
        lines.append(
            f"    breaker {b.label}/{b.route}: {b.state} ({b.failures} failures, "
            f"{b.openings} openings{reopen})"
        )
    return "\n".join(lines)


def _rich_view(board: Board) -> Any:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    rows, breakers, finished = board.snapshot()
    elapsed = time.monotonic() - board.started_at
    head = Text(
        f"lifecycle demo --watch  {elapsed:5.1f}s  {len(rows)} run(s) in flight; "
        f"finished: {_counts_text(finished)}",
        style="bold",
    )
    runs = Table(title="runs in flight", title_justify="left", expand=False)
    for column in ("run", "scenario", "state", "attempt", "route", "last meaningful event"):
        runs.add_column(column, justify="right" if column == "attempt" else "left")
    styles = {"stale": "red", "dropped": "red", "cleanup": "yellow", "retrying": "yellow"}
    for r in sorted(rows, key=lambda r: (r.label, r.run_id)):
        runs.add_row(
            r.run_id,
            r.label,
            Text(r.state, style=styles.get(r.state, "")),
            str(r.attempt),
            r.route,
            _age_text(r),
        )
    table = Table(title="breakers", title_justify="left", expand=False)
    for column in ("engine", "route", "state", "failures", "openings", "next probe"):
        table.add_column(column)
    colours = {"closed": "green", "open": "red", "half_open": "yellow", "probing": "yellow"}
    for b in breakers:
        table.add_row(
            b.label,
            b.route,
            Text(b.state, style=colours.get(b.state, "")),
            str(b.failures),
            str(b.openings),
            "-" if b.reopen_in is None else f"in {b.reopen_in:.1f}s",
        )
    return Group(head, runs, table)


def _rich_terminal() -> bool:
    """rich is installed and stdout is a terminal it can redraw."""
    try:
        from rich.console import Console
    except ImportError:
        return False
    console = Console()
    return console.is_terminal and not console.is_dumb_terminal


def _watch(board: Board, done: Callable[[], bool], out: Callable[[str], None]) -> None:
    """Show the board until ``done()``: rich.live on a terminal (4 refreshes a second),
    else a plain snapshot every second (rich.live would only print the last frame)."""
    if _rich_terminal():
        from rich.live import Live

        with Live(get_renderable=lambda: _rich_view(board), refresh_per_second=4):
            while not done():
                time.sleep(0.05)
        return
    next_at = time.monotonic()
    while not done():
        if time.monotonic() >= next_at:
            out(_plain_snapshot(board))
            next_at += 1.0
        time.sleep(0.05)
    out(_plain_snapshot(board))


# -- the breaker burst -------------------------------------------------------------------
BURST = "breaker-burst"
FLAKY_ROUTE = "flaky-anthropic"
BACKUP_ROUTE = "backup-openai"
RECOVER_AFTER = 2.5
"""Seconds into the burst at which the flaky provider recovers."""
BURST_LIMIT = 20.0
"""Stop launching runs after this long even if the breaker never closed again. On an idle
machine the breaker closes 5-7 s in and launching stops then; the margin is for a busy
one, whose verdict must not turn on timings."""


@dataclass
class BurstOutcome:
    states: Counter[str] = field(default_factory=Counter)
    changes: list[BreakerChange] = field(default_factory=list)
    elapsed: float = 0.0
    error: str | None = None
    failures: list[str] = field(default_factory=list)
    """The errors raised to the callers of runs that did not complete."""
    recover_after: float = RECOVER_AFTER
    limit: float = BURST_LIMIT

    @property
    def path(self) -> str:
        steps = [c for c in self.changes if c.route == FLAKY_ROUTE]
        if not steps:
            return "closed (never changed)"
        return " -> ".join([steps[0].source, *(c.dest for c in steps)])

    @property
    def checks(self) -> list[Check]:
        """What the burst promises, about outcomes rather than timings: every run
        completes (the backup answers while the flaky route fails or is refused), the
        flaky route's breaker opens, and a probe after the recovery closes it."""
        dests = [c.dest for c in self.changes if c.route == FLAKY_ROUTE]
        runs = sum(self.states.values())
        not_completed = runs - self.states["completed"]
        seen_runs = f"{runs} runs: {_counts_text(dict(self.states))}"
        if self.failures:
            seen_runs += f"; first error: {self.failures[0]}"
        recovered = (
            f"the flaky route recovers at {self.recover_after:.1f}s"
            if self.recover_after < self.limit
            else f"the flaky route does not recover before launching stops at {self.limit:.1f}s"
        )
        return [
            Check(
                name=f"{BURST} ran",
                ok=self.error is None,
                expected="the burst to run without an exception",
                seen=self.error or "no exception",
            ),
            Check(
                name=f"{BURST} every run completed",
                ok=runs > 0 and not_completed == 0,
                expected="at least one run, and every run completed",
                seen=seen_runs,
            ),
            Check(
                name=f"{BURST} breaker opened",
                ok="open" in dests,
                expected=f"the breaker of {FLAKY_ROUTE} to open after its failures",
                seen=f"{self.path}",
            ),
            Check(
                name=f"{BURST} breaker closed again",
                ok=dests[-1:] == ["closed"],
                expected=f"a probe after the recovery to close the breaker of {FLAKY_ROUTE}",
                seen=f"{self.path} (last state {dests[-1] if dests else 'closed, never opened'}"
                f"; {recovered}; the burst took {self.elapsed:.1f}s)",
            ),
        ]

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)


class _BreakerLog(LifecycleHooks):
    def __init__(self, outcome: BurstOutcome, out: Callable[[str], None]) -> None:
        self.outcome = outcome
        self.out = out

    def on_breaker_change(self, change: BreakerChange) -> None:
        self.outcome.changes.append(change)
        reopen = ""
        if change.reopen_at is not None:
            reopen = f", next probe in {max(0.0, change.reopen_at - change.at):.1f}s"
        self.out(
            f"[{BURST}] breaker {change.route}: {change.source} -> {change.dest} "
            f"({change.trigger}, {change.failures} failures{reopen})"
        )


def _run_burst(
    server: LoopbackServer,
    stale: float,
    out: Callable[[str], None],
    *,
    hooks: Sequence[LifecycleHooks],
    board: Board | None,
    recover_after: float = RECOVER_AFTER,
    limit: float = BURST_LIMIT,
) -> BurstOutcome:
    """Async runs, a few every 0.2 s, over [flaky Anthropic, healthy OpenAI]. The flaky
    provider answers 503, resets the connection or goes silent until ``recover_after``;
    its breaker opens after 3 failures (runs skip to the backup route meanwhile), a
    probe fails and reopens it with a longer cooldown, and a probe after the recovery
    closes it. Launching stops a moment after it closed, or at ``limit`` seconds."""
    outcome = BurstOutcome(recover_after=recover_after, limit=limit)
    stamp = time.monotonic_ns()
    flaky_key, backup_key = f"demo-burst-flaky-{stamp}", f"demo-burst-backup-{stamp}"
    broken: list[ServerFault] = [HttpError(status=503), DropAfterEvents(n=2), StallAfterHeaders()]
    server.script(flaky_key, broken * 60)
    server.script(backup_key, [Healthy(drip=0.05)] * 500)
    out(
        f"\n== {BURST}: {FLAKY_ROUTE} fails (503, TCP reset, silence) for {recover_after}s; "
        "its breaker opens, is probed and closes"
    )

    def client(cls: Any, base_url: str, key: str) -> Callable[[], Any]:
        headers = {"x-loopback-key": key}
        return lambda: cls(base_url=base_url, api_key="demo-key", default_headers=headers)

    routes: list[Route] = [
        AnthropicMessages(
            client(anthropic.AsyncAnthropic, server.anthropic_base_url, flaky_key),
            model="claude-demo",
            name=FLAKY_ROUTE,
        ),
        OpenAIChatCompletions(
            client(openai.AsyncOpenAI, server.openai_base_url, backup_key),
            model="gpt-demo",
            name=BACKUP_ROUTE,
        ),
    ]
    all_hooks: list[LifecycleHooks] = [*hooks, _BreakerLog(outcome, out)]
    if board is not None:
        all_hooks.append(InFlight(board, BURST))

    def closed_again() -> float | None:
        for change in reversed(outcome.changes):
            if change.route == FLAKY_ROUTE:
                return change.at if change.dest == "closed" else None
        return None

    async def one(engine: StreamEngine) -> None:
        run: AsyncRun = engine.astream(messages=[{"role": "user", "content": "Hi"}], max_tokens=64)
        try:
            async with run:
                async for _ in run:
                    pass
        except LifecycleError as exc:
            outcome.failures.append(f"{type(exc).__name__}: {exc}")
        outcome.states[run.state] += 1

    async def main() -> None:
        async with StreamEngine(
            routes=routes,
            timeouts=Timeouts(connect=5, first_token=stale, stale=stale, total=30),
            retry=RetryPolicy(max_attempts=2, initial_backoff=0.05, max_backoff=0.2),
            hooks=all_hooks,
            breaker=BreakerPolicy(
                failures_to_open=3, cooldown=1.0, cooldown_factor=2.0, max_cooldown=4.0
            ),
        ) as engine:
            if board is not None:
                board.always_shown.add(BURST)
                board.add_engine(BURST, engine)
            loop = asyncio.get_running_loop()
            began = loop.time()
            tasks: list[asyncio.Task[None]] = []
            recovered = False
            while True:
                now = loop.time() - began
                if not recovered and now >= recover_after:
                    server.script(flaky_key, [Healthy(drip=0.05)] * 500)
                    out(f"[{BURST}] {FLAKY_ROUTE} recovers at {now:.1f}s")
                    recovered = True
                closed_at = closed_again()
                if recovered and closed_at is not None and time.time() - closed_at > 0.6:
                    break
                if now > limit:
                    break
                wave = 4 if not tasks else 1
                tasks.extend(asyncio.create_task(one(engine)) for _ in range(wave))
                await asyncio.sleep(0.2)
            await asyncio.gather(*tasks)
        # The board keeps the engine: its breakers stay on the watch's last frame.

    started = time.monotonic()
    try:
        asyncio.run(main())
    except Exception as exc:  # the demo reports it; the verdict fails
        outcome.error = f"{type(exc).__name__}: {exc}"
        out(f"[{BURST}] failed: {outcome.error}")
    outcome.elapsed = time.monotonic() - started
    out(
        f"[{BURST}] {sum(outcome.states.values())} runs: {_counts_text(dict(outcome.states))}; "
        f"breaker of {FLAKY_ROUTE}: {outcome.path}"
    )
    return outcome


def _write_diagrams(outcomes: Sequence[Outcome], directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    dot = shutil.which("dot")
    for outcome in outcomes:
        if outcome.run is None:
            continue
        try:
            text = outcome.run.diagram()
        except Exception as exc:  # a diagram must never fail the demo's verdict
            print(f"   (no diagram for {outcome.scenario.name}: {exc})")
            continue
        path = directory / f"{outcome.scenario.name}.mmd"
        path.write_text(text, encoding="utf-8")
        written.append(path)
        dot_text = _run_dot_text(outcome.run)
        if dot and dot_text is not None:
            svg = directory / f"{outcome.scenario.name}.svg"
            result = subprocess.run(
                [dot, "-Tsvg", "-o", str(svg)], input=dot_text, text=True, capture_output=True
            )
            if result.returncode == 0:
                written.append(svg)
    return written


def _run_dot_text(run: Run) -> str | None:
    from lifecycle._diagram import run_dot

    return run_dot(run.history, run.attempts)


def run_demo(
    *,
    diagrams_dir: str = "demo-diagrams",
    stale: float = 0.5,
    record: str | None = None,
    watch: bool = False,
    concurrent: bool = False,
) -> int:
    """The demo; see the module docstring. Returns the exit status."""
    lock = threading.Lock()

    def out(line: str) -> None:
        with lock:
            print(line, flush=True)

    # The demo must not depend on the caller's real credentials or proxies.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        os.environ.pop(name, None)
    concurrent = concurrent or watch
    out(
        f"lifecycle demo: real anthropic {anthropic.__version__} and openai "
        f"{openai.__version__} SDKs against a loopback provider; stale = {stale}s"
        + ("; scenarios run at once, plus a breaker burst" if concurrent else "")
    )
    recorder = TransitionRecorder(path=record) if record is not None else None
    hooks: tuple[LifecycleHooks, ...] = (recorder,) if recorder is not None else ()
    started = time.monotonic()
    outcomes: list[Outcome] = []
    burst: BurstOutcome | None = None
    try:
        # Validating bodies needs the loopback extra; the demo runs from a plain install.
        with LoopbackServer(validate=validation_available()) as server:
            out(f"loopback provider listening on {server.url}")
            if concurrent:
                outcomes, burst = _run_concurrently(server, stale, out, hooks=hooks, watch=watch)
            else:
                for scenario in SCENARIOS:
                    outcomes.append(_run_scenario(server, scenario, stale, out, hooks=hooks))
            server.wait_idle(5.0)
            leaked = server.open_connections
    finally:
        if recorder is not None:
            recorder.close()
    elapsed = time.monotonic() - started
    out("\n" + summary_text(outcomes))
    if burst is not None:
        out(
            f"\n{BURST}: {sum(burst.states.values())} runs "
            f"({_counts_text(dict(burst.states))}) in {burst.elapsed:.1f} s; "
            f"breaker of {FLAKY_ROUTE}: {burst.path}; ok: {'yes' if burst.ok else 'NO'}"
        )
    written = _write_diagrams(outcomes, Path(diagrams_dir))
    if written:
        out(f"\nper-run diagrams ({len(written)} files) written to {Path(diagrams_dir).resolve()}")
    if recorder is not None and record is not None:
        out(f"\n{recorder.lines} lines recorded to {record}; summarize: lifecycle report {record}")
    status = verdict(outcomes, burst, leaked=leaked, out=out)
    if status == 0:
        what = f"all {len(outcomes)} scenarios" + (f" and the {BURST}" if burst else "")
        out(f"\n{what} ended as expected in {elapsed:.1f} s; 0 connections left open")
    return status


def verdict(
    outcomes: Sequence[Outcome],
    burst: BurstOutcome | None,
    *,
    leaked: int,
    out: Callable[[str], None],
) -> int:
    """The exit status: 1, after printing each failing expectation with what it expected
    and what it saw, if any failed; else 0."""
    checks = [check for outcome in outcomes for check in outcome.checks]
    if burst is not None:
        checks.extend(burst.checks)
    checks.append(
        Check(
            name="connections closed",
            ok=leaked == 0,
            expected="0 connections open at the server",
            seen=f"{leaked} still open after the demo",
        )
    )
    failing = [check for check in checks if not check.ok]
    if not failing:
        return 0
    out(f"\nFAILED: {len(failing)} of {len(checks)} expectations")
    for check in failing:
        out(f"  - {check.line()}")
    return 1


def _run_concurrently(
    server: LoopbackServer,
    stale: float,
    out: Callable[[str], None],
    *,
    hooks: Sequence[LifecycleHooks],
    watch: bool,
) -> tuple[list[Outcome], BurstOutcome]:
    """Every scenario on its own thread, and the breaker burst on another."""
    board = Board() if watch else None
    results: dict[str, Outcome] = {}
    burst: list[BurstOutcome] = []

    def scenario_thread(scenario: Scenario) -> None:
        results[scenario.name] = _run_scenario(
            server, scenario, stale, out, hooks=hooks, board=board, label=True
        )

    def burst_thread() -> None:
        burst.append(_run_burst(server, stale, out, hooks=hooks, board=board))

    threads = [
        threading.Thread(target=scenario_thread, args=(s,), name=f"demo-{s.name}", daemon=True)
        for s in SCENARIOS
    ]
    threads.append(threading.Thread(target=burst_thread, name=f"demo-{BURST}", daemon=True))
    for thread in threads:
        thread.start()
    if board is not None:
        _watch(board, lambda: not any(t.is_alive() for t in threads), out)
    for thread in threads:
        thread.join()
    missing = [s.name for s in SCENARIOS if s.name not in results]
    if missing or not burst:
        raise RuntimeError(f"demo threads ended without a result: {missing or [BURST]}")
    return [results[s.name] for s in SCENARIOS], burst[0]


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def summary_text(outcomes: Sequence[Outcome]) -> str:
    """What recovery spans, then the table."""
    return RECOVERY_LEGEND + "\n\n" + _table(outcomes)


def _table(outcomes: Sequence[Outcome]) -> str:
    """The summary table; ``RECOVERY_LEGEND`` says what its recovery columns span."""
    header = ("scenario", "final", "ok", "recovery", *RECOVERY_PARTS, "elapsed", "attempts")
    rows = [
        (
            o.scenario.name,
            o.state,
            "yes" if o.ok else "NO",
            _ms(None if o.recovery is None else o.recovery.total),
            *(
                _ms(None if o.recovery is None else getattr(o.recovery, part))
                for part in RECOVERY_PARTS
            ),
            f"{o.elapsed:.2f} s",
            o.attempts,
        )
        for o in outcomes
    ]
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


if __name__ == "__main__":
    sys.exit(run_demo())
