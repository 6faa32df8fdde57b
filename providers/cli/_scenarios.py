"""The demo's fault scenarios and their summary.

A ``Scenario`` is one run on its own engine over two routes of the loopback server,
scripted with its faults, expecting a final state; ``run_scenario`` runs it, printing
each transition, and returns its ``ScenarioResult`` (final state, attempts, the first
``Recovery`` and its parts, its ``Check``). ``summary_text`` is the table of the results
under the legend of what recovery spans.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import anthropic
import openai

from lifecycle import (
    AttemptRecord,
    Interrupted,
    LifecycleHooks,
    RetryPolicy,
    Run,
    RunView,
    StreamEngine,
    StreamFailed,
    Timeouts,
    Transition,
    attempt_text,
    ending_of,
)
from lifecycle.adapters import Route

from ..anthropic_messages import AnthropicMessages
from ..loopback import (
    DropAfterEvents,
    HttpError,
    LoopbackServer,
    PingsOnly,
    ServerFault,
    StallAfterEvents,
    StallBeforeHeaders,
)
from ..openai_chat_completions import OpenAIChatCompletions
from ._live_board import Board, InFlight

__all__ = [
    "RECOVERY_LEGEND",
    "RECOVERY_PARTS",
    "SCENARIOS",
    "Check",
    "Recovery",
    "Scenario",
    "ScenarioResult",
    "recovery_of",
    "run_scenario",
    "summary_text",
]


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
class ScenarioResult:
    """What one scenario did: its final state, its attempts, its first recovery, its run."""

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


def run_scenario(
    server: LoopbackServer,
    scenario: Scenario,
    stale: float,
    out: Callable[[str], None],
    *,
    hooks: Sequence[LifecycleHooks] = (),
    board: Board | None = None,
    label: bool = False,
) -> ScenarioResult:
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
    return ScenarioResult(
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

    def on_transition(self, run: RunView, transition: Transition) -> None:
        attempts = run.attempts
        ending = ending_of(transition, attempts[-1] if attempts else None)
        line = (
            f"   {transition.at:7.3f}s  {transition.source:>12} -> {transition.dest:<12} "
            f"({transition.trigger})"
        )
        if ending is not None:
            line = f"{line:<60} {ending}"
        self.say(line)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def summary_text(results: Sequence[ScenarioResult]) -> str:
    """What recovery spans, then the table."""
    return RECOVERY_LEGEND + "\n\n" + _table(results)


def _table(results: Sequence[ScenarioResult]) -> str:
    """The summary table; ``RECOVERY_LEGEND`` says what its recovery columns span."""
    header = ("scenario", "final", "ok", "recovery", *RECOVERY_PARTS, "elapsed", "attempts")
    rows = [
        (
            result.scenario.name,
            result.state,
            "yes" if result.ok else "NO",
            _ms(None if result.recovery is None else result.recovery.total),
            *(
                _ms(None if result.recovery is None else getattr(result.recovery, part))
                for part in RECOVERY_PARTS
            ),
            f"{result.elapsed:.2f} s",
            result.attempts,
        )
        for result in results
    ]
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])
