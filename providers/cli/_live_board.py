"""``lifecycle demo --watch``: the live board.

A ``Board`` holds the runs in flight (fed by ``InFlight`` hooks) and the engines whose
breakers are shown; ``watch_board`` shows it until the demo is done: rich.live on a
terminal, a plain snapshot every second otherwise.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lifecycle import LifecycleHooks, RunView, StreamEngine

__all__ = ["Board", "BreakerRow", "InFlight", "RunRow", "counts_text", "watch_board"]


class InFlight(LifecycleHooks):
    """Tracks one engine's runs in flight on a ``Board``: ``on_run_start`` adds the run,
    ``on_run_end`` removes it (and counts its final state)."""

    def __init__(self, board: Board, label: str) -> None:
        self.board = board
        self.label = label

    def on_run_start(self, run: RunView) -> None:
        self.board.started(self.label, run)

    def on_run_end(self, run: RunView) -> None:
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
        self._runs: dict[str, tuple[str, RunView]] = {}
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

    def started(self, label: str, run: RunView) -> None:
        with self._lock:
            self._runs[run.id] = (label, run)

    def ended(self, run: RunView) -> None:
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


def counts_text(finished: dict[str, int]) -> str:
    return ", ".join(f"{state} {n}" for state, n in sorted(finished.items())) or "none"


def _plain_snapshot(board: Board) -> str:
    rows, breakers, finished = board.snapshot()
    elapsed = time.monotonic() - board.started_at
    lines = [f"[watch {elapsed:5.1f}s] {len(rows)} in flight; finished: {counts_text(finished)}"]
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
        f"finished: {counts_text(finished)}",
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


def watch_board(board: Board, done: Callable[[], bool], out: Callable[[str], None]) -> None:
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
