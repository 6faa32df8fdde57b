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

The scenarios and their summary live in ``_scenarios``, the burst in ``_burst``, the live
view in ``_live_board``; this module runs them, writes each run's diagrams and gives the
verdict.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import anthropic
import openai

from lifecycle import LifecycleHooks, Run
from lifecycle.diagrams import run_dot
from lifecycle.record import TransitionRecorder

from ..loopback import LoopbackServer, validation_available
from ._burst import BURST, FLAKY_ROUTE, BurstOutcome, run_burst
from ._live_board import Board, counts_text, watch_board
from ._scenarios import SCENARIOS, Check, Scenario, ScenarioResult, run_scenario, summary_text

__all__ = ["run_demo"]


def _write_diagrams(results: Sequence[ScenarioResult], directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    dot = shutil.which("dot")
    for result in results:
        if result.run is None:
            continue
        try:
            text = result.run.diagram()
        except Exception as exc:  # a diagram must never fail the demo's verdict
            print(f"   (no diagram for {result.scenario.name}: {exc})")
            continue
        path = directory / f"{result.scenario.name}.mmd"
        path.write_text(text, encoding="utf-8")
        written.append(path)
        dot_text = _run_dot_text(result.run)
        if dot and dot_text is not None:
            svg = directory / f"{result.scenario.name}.svg"
            rendered = subprocess.run(
                [dot, "-Tsvg", "-o", str(svg)], input=dot_text, text=True, capture_output=True
            )
            if rendered.returncode == 0:
                written.append(svg)
    return written


def _run_dot_text(run: Run) -> str | None:

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
    results: list[ScenarioResult] = []
    burst: BurstOutcome | None = None
    try:
        # Validating bodies needs the loopback extra; the demo runs from a plain install.
        with LoopbackServer(validate=validation_available()) as server:
            out(f"loopback provider listening on {server.url}")
            if concurrent:
                results, burst = _run_concurrently(server, stale, out, hooks=hooks, watch=watch)
            else:
                for scenario in SCENARIOS:
                    results.append(run_scenario(server, scenario, stale, out, hooks=hooks))
            server.wait_idle(5.0)
            leaked = server.open_connections
    finally:
        if recorder is not None:
            recorder.close()
    elapsed = time.monotonic() - started
    out("\n" + summary_text(results))
    if burst is not None:
        out(
            f"\n{BURST}: {sum(burst.states.values())} runs "
            f"({counts_text(dict(burst.states))}) in {burst.elapsed:.1f} s; "
            f"breaker of {FLAKY_ROUTE}: {burst.path}; ok: {'yes' if burst.ok else 'NO'}"
        )
    written = _write_diagrams(results, Path(diagrams_dir))
    if written:
        out(f"\nper-run diagrams ({len(written)} files) written to {Path(diagrams_dir).resolve()}")
    if recorder is not None and record is not None:
        out(f"\n{recorder.lines} lines recorded to {record}; summarize: lifecycle report {record}")
    status = verdict(results, burst, leaked=leaked, out=out)
    if status == 0:
        what = f"all {len(results)} scenarios" + (f" and the {BURST}" if burst else "")
        out(f"\n{what} ended as expected in {elapsed:.1f} s; 0 connections left open")
    return status


def verdict(
    results: Sequence[ScenarioResult],
    burst: BurstOutcome | None,
    *,
    leaked: int,
    out: Callable[[str], None],
) -> int:
    """The exit status: 1, after printing each failing expectation with what it expected
    and what it saw, if any failed; else 0."""
    checks = [check for result in results for check in result.checks]
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
) -> tuple[list[ScenarioResult], BurstOutcome]:
    """Every scenario on its own thread, and the breaker burst on another."""
    board = Board() if watch else None
    results: dict[str, ScenarioResult] = {}
    burst: list[BurstOutcome] = []

    def scenario_thread(scenario: Scenario) -> None:
        results[scenario.name] = run_scenario(
            server, scenario, stale, out, hooks=hooks, board=board, label=True
        )

    def burst_thread() -> None:
        burst.append(run_burst(server, stale, out, hooks=hooks, board=board))

    threads = [
        threading.Thread(target=scenario_thread, args=(s,), name=f"demo-{s.name}", daemon=True)
        for s in SCENARIOS
    ]
    threads.append(threading.Thread(target=burst_thread, name=f"demo-{BURST}", daemon=True))
    for thread in threads:
        thread.start()
    if board is not None:
        watch_board(board, lambda: not any(t.is_alive() for t in threads), out)
    for thread in threads:
        thread.join()
    missing = [s.name for s in SCENARIOS if s.name not in results]
    if missing or not burst:
        raise RuntimeError(f"demo threads ended without a result: {missing or [BURST]}")
    return [results[s.name] for s in SCENARIOS], burst[0]


if __name__ == "__main__":
    sys.exit(run_demo())
