"""``lifecycle demo``: the real SDKs through a gallery of faults on the loopback server.

Each scenario prints its path through the states as it happens, then a summary table.
Exit status 0 means every scenario ended the way the lifecycle promises.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anthropic
import openai

from lifecycle import (
    Interrupted,
    RetryPolicy,
    Route,
    Run,
    StreamEngine,
    StreamFailed,
    Timeouts,
    Transition,
)

from .anthropic_messages import AnthropicMessages
from .loopback import (
    DropAfterEvents,
    HttpError,
    LoopbackServer,
    PingsOnly,
    StallAfterEvents,
    StallBeforeHeaders,
)
from .loopback import Fault as LoopbackFault
from .openai_chat_completions import OpenAIChatCompletions

__all__ = ["run_demo"]


@dataclass(frozen=True, kw_only=True)
class Scenario:
    name: str
    title: str
    first: str  # "anthropic" or "openai": the first route
    faults: tuple[LoopbackFault, ...]
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


@dataclass
class Outcome:
    scenario: Scenario
    state: str
    elapsed: float
    attempts: str
    recovery: float | None
    path: list[str] = field(default_factory=list)
    text: str = ""
    run: Run | None = None

    @property
    def ok(self) -> bool:
        return self.state == self.scenario.expect


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


def _recovery(history: Sequence[Transition]) -> float | None:
    """Seconds from the first fault to the start of the next attempt."""
    fault_at: float | None = None
    for step in history:
        if fault_at is None and step.dest in ("stale", "dropped"):
            fault_at = step.at
        elif fault_at is not None and step.trigger == "start_attempt":
            return step.at - fault_at
    return None


def _run_scenario(
    server: LoopbackServer, scenario: Scenario, stale: float, out: Callable[[str], None]
) -> Outcome:
    key = f"demo-{scenario.name}-{time.monotonic_ns()}"
    server.script(key, list(scenario.faults))
    out(f"\n== {scenario.name}: {scenario.title}")

    def show(step: Transition) -> None:
        out(f"   {step.at:7.3f}s  {step.source:>12} -> {step.dest:<12} ({step.trigger})")

    engine = StreamEngine(
        routes=_routes(server, scenario.first, key),
        timeouts=Timeouts(connect=5, first_token=stale, stale=stale, total=30),
        retry=RetryPolicy(
            max_attempts=scenario.max_attempts, initial_backoff=0.05, max_backoff=0.2
        ),
        on_transition=show,
    )
    started = time.monotonic()
    text: list[str] = []
    state = "?"
    run: Run | None = None
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
                        out("   ...... restart: the consumer discards what it showed")
                        text.clear()
    except Interrupted:
        out("   Interrupted raised to the caller")
    except StreamFailed as exc:
        out(f"   StreamFailed: {exc}")
    if run is not None:
        state = run.state
    elapsed = time.monotonic() - started
    attempts = ", ".join(
        f"{a.api_mode}:{a.outcome}" for a in (run.attempts if run is not None else ())
    )
    return Outcome(
        scenario=scenario,
        state=state,
        elapsed=elapsed,
        attempts=attempts,
        recovery=_recovery(run.history) if run is not None else None,
        text="".join(text),
        run=run,
    )


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


def run_demo(*, diagrams_dir: str = "demo-diagrams", stale: float = 0.5) -> int:
    def out(line: str) -> None:
        print(line, flush=True)

    # The demo must not depend on the caller's real credentials or proxies.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        os.environ.pop(name, None)
    out(
        f"lifecycle demo: real anthropic {anthropic.__version__} and openai "
        f"{openai.__version__} SDKs against a loopback provider; stale = {stale}s"
    )
    outcomes: list[Outcome] = []
    with LoopbackServer() as server:
        out(f"loopback provider listening on {server.url}")
        for scenario in SCENARIOS:
            outcomes.append(_run_scenario(server, scenario, stale, out))
        server.wait_idle(5.0)
        leaked = server.open_connections
    out("\n" + _table(outcomes))
    written = _write_diagrams(outcomes, Path(diagrams_dir))
    if written:
        out(f"\nper-run diagrams ({len(written)} files) written to {Path(diagrams_dir).resolve()}")
    failed = [o.scenario.name for o in outcomes if not o.ok]
    if leaked:
        out(f"\n{leaked} connection(s) still open at the server after the demo")
    if failed or leaked:
        out(f"\nFAILED: {', '.join(failed) or 'leaked connections'}")
        return 1
    out(f"\nall {len(outcomes)} scenarios ended as expected; 0 connections left open")
    return 0


def _table(outcomes: Sequence[Outcome]) -> str:
    header = ("scenario", "final", "ok", "recovery", "elapsed", "attempts")
    rows = [
        (
            o.scenario.name,
            o.state,
            "yes" if o.ok else "NO",
            "-" if o.recovery is None else f"{o.recovery * 1000:.0f} ms",
            f"{o.elapsed:.2f} s",
            o.attempts,
        )
        for o in outcomes
    ]
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines.extend("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(run_demo())
