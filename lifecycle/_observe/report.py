"""``lifecycle report FILE``: what a ``lifecycle.record.TransitionRecorder`` file says.

``summarize(path)`` reads the JSON lines into a ``Summary`` (plain values, so tests
compare numbers, not text); ``print_summary`` prints it, with rich tables when rich is
installed (the ``watch`` extra) and plain text otherwise; ``write_diagrams`` draws one
Mermaid diagram per recorded run with the same code as ``run.diagram()``.

Figures:

- runs per final state (``run_end``); a run with no ``run_end`` (the recording stopped
  first) counts as unfinished;
- runs per path: the states each run went through, ``idle`` first;
- recovery latency: for each transition of a run into ``stale`` or ``dropped``, the time
  to that run's next ``start_attempt`` (transition ``at`` values, so the run's own
  monotonic clock); a fault after which no attempt started is no recovery;
  percentiles are nearest-rank;
- per route (by name): attempts (``attempt_end``) by outcome, probes, median ttft;
- breaker transitions per route, in recorded order.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TextIO, cast

from lifecycle import OUTCOMES as OUTCOME_TERMS
from lifecycle import AttemptRecord, CleanupStep, Diagnostics, Transition

from .._core.records import Outcome
from .recorder import FORMAT_VERSION

__all__ = [
    "BreakerStep",
    "Percentiles",
    "RecordedRun",
    "Recording",
    "RecordingError",
    "RouteFigures",
    "Summary",
    "load",
    "path_of",
    "percentile",
    "print_summary",
    "recoveries_of",
    "report_command",
    "summarize",
    "summary_of",
    "write_diagrams",
]

FAULT_STATES: Final = ("stale", "dropped")
OUTCOMES: Final = tuple(OUTCOME_TERMS)
"""The attempt outcomes, in the order lifecycle names them: the per-route columns."""
ARROW: Final = " → "


class RecordingError(Exception):
    """The file is not a recording this version can read."""


# -- the recording, rebuilt --------------------------------------------------------------
@dataclass
class RecordedRun:
    run_id: str
    routes: tuple[str, ...] = ()
    started_at: float | None = None
    history: list[Transition] = field(default_factory=list)
    attempts: list[AttemptRecord] = field(default_factory=list)
    attempt_routes: list[str] = field(default_factory=list)
    """The route name of each attempt in ``attempts``."""
    state: str | None = None
    """The final state from ``run_end``; None if the run did not end in the recording."""
    elapsed: float | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class BreakerStep:
    source: str
    trigger: str
    dest: str
    at: float
    """Wall clock."""
    failures: int
    reopen_at: float | None


@dataclass
class Recording:
    versions: list[int] = field(default_factory=list)
    started_wall: float | None = None
    runs: dict[str, RecordedRun] = field(default_factory=dict)
    breakers: dict[str, list[BreakerStep]] = field(default_factory=dict)
    bad_lines: int = 0


def _attempt(record: dict[str, Any]) -> AttemptRecord:
    """An ``AttemptRecord`` as ``AttemptRecord.as_dict()`` wrote it (``started_at`` is not
    recorded: 0.0)."""
    outcome = record.get("outcome")
    diagnostics = Diagnostics(
        http_status=record.get("http_status"),
        ttfb=record.get("ttfb"),
        ttft=record.get("ttft"),
        bytes=int(record.get("bytes") or 0),
        chunks=int(record.get("chunks") or 0),
        unknown_events=int(record.get("unknown_events") or 0),
        elapsed=record.get("elapsed"),
        error_type=record.get("error_type"),
        cause_chain=tuple(record.get("cause_chain") or ()),
        headers=dict(record.get("headers") or {}),
        cleanup=[
            CleanupStep(step=str(s[0]), thread=str(s[1]), at=float(s[2]), detail=str(s[3]))
            for s in record.get("cleanup") or ()
        ],
        stall_clock=record.get("stall_clock"),
        omitted_options=tuple(record.get("omitted_options") or ()),
    )
    return AttemptRecord(
        number=int(record["attempt"]),
        route_index=int(record["route_index"]),
        api_mode=str(record["api_mode"]),
        model=str(record["model"]),
        started_at=0.0,
        outcome=cast(Outcome, outcome) if outcome in OUTCOMES else None,
        reason=record.get("reason"),
        probe=bool(record.get("probe")),
        diagnostics=diagnostics,
    )


def load(path: str | Path) -> Recording:
    """Read a recording. Lines that are not JSON objects of a known kind are counted in
    ``bad_lines`` (a recording cut by a crash ends mid-line) and otherwise skipped."""
    recording = Recording()
    with open(path, encoding="utf-8") as file:
        for raw in file:
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
                if not isinstance(record, dict):
                    raise ValueError("not an object")
                _apply(recording, record)
            except (ValueError, KeyError, TypeError, IndexError):
                recording.bad_lines += 1
    if not recording.versions:
        raise RecordingError(f"{path}: no header line: not a lifecycle recording")
    return recording


def _apply(recording: Recording, record: dict[str, Any]) -> None:
    kind = record["kind"]
    if kind == "header":
        version = int(record["version"])
        if version != FORMAT_VERSION:
            raise RecordingError(
                f"recording format version {version}; this lifecycle reads {FORMAT_VERSION}"
            )
        recording.versions.append(version)
        if recording.started_wall is None:
            recording.started_wall = float(record["wall"])
        return
    if not recording.versions:
        raise ValueError("a record before the header")
    if kind == "breaker":
        recording.breakers.setdefault(str(record["route"]), []).append(
            BreakerStep(
                source=str(record["source"]),
                trigger=str(record["trigger"]),
                dest=str(record["dest"]),
                at=float(record["at"]),
                failures=int(record["failures"]),
                reopen_at=None if record["reopen_at"] is None else float(record["reopen_at"]),
            )
        )
        return
    if kind not in ("run_start", "transition", "attempt_end", "run_end"):
        raise ValueError(f"unknown kind {kind!r}")
    run_id = str(record["run_id"])
    run = recording.runs.get(run_id)
    if run is None:
        run = recording.runs[run_id] = RecordedRun(run_id=run_id)
    if kind == "run_start":
        run.routes = tuple(str(name) for name in record["routes"])
        run.started_at = float(record["started_at"])
    elif kind == "transition":
        run.history.append(
            Transition(
                source=str(record["source"]),
                trigger=str(record["trigger"]),
                dest=str(record["dest"]),
                at=float(record["at"]),
            )
        )
    elif kind == "attempt_end":
        run.attempts.append(_attempt(record))
        run.attempt_routes.append(str(record["route"]))
    else:
        run.state = str(record["state"])
        run.elapsed = float(record["elapsed"])


# -- the figures -------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True, slots=True)
class Percentiles:
    count: int
    p50: float
    p90: float
    p99: float
    max: float


@dataclass(frozen=True, kw_only=True, slots=True)
class RouteFigures:
    attempts: int = 0
    completed: int = 0
    stale: int = 0
    dropped: int = 0
    error: int = 0
    interrupted: int = 0
    deadline: int = 0
    """Attempts the caller's ``Timeouts.total`` ended (not charged to the route)."""
    probes: int = 0
    median_ttft: float | None = None
    """Seconds, over the attempts that had a first meaningful event."""

    def count(self, outcome: str) -> int:
        """Attempts that ended with ``outcome`` (a word of ``lifecycle.OUTCOMES``)."""
        value = getattr(self, outcome)
        assert isinstance(value, int), outcome
        return value


@dataclass(frozen=True, kw_only=True)
class Summary:
    file: str
    runs: int
    unfinished: int
    """Runs with no ``run_end`` in the recording."""
    states: dict[str, int]
    """Finished runs per final state."""
    paths: dict[str, int]
    """Runs per path (states joined by " → "), most frequent first."""
    recoveries: tuple[float, ...]
    """Every recovery latency, in seconds, in recorded order."""
    recovery: Percentiles | None
    routes: dict[str, RouteFigures]
    """Per route name, in order of first attempt."""
    breakers: dict[str, tuple[BreakerStep, ...]]
    started_wall: float | None
    bad_lines: int
    versions: tuple[int, ...]


def path_of(history: Sequence[Transition]) -> tuple[str, ...]:
    """The states a run went through: the first transition's source, then each dest."""
    if not history:
        return ("idle",)
    return (history[0].source, *(t.dest for t in history))


def recoveries_of(history: Sequence[Transition]) -> list[float]:
    """Per fault (a transition into stale or dropped): seconds to the next start_attempt."""
    found: list[float] = []
    fault_at: float | None = None
    for transition in history:
        if transition.dest in FAULT_STATES:
            fault_at = transition.at
        elif transition.trigger == "start_attempt" and fault_at is not None:
            found.append(transition.at - fault_at)
            fault_at = None
    return found


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of ``values`` (not empty)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100.0 * len(ordered)))
    return ordered[rank - 1]


def _percentiles(values: Sequence[float]) -> Percentiles | None:
    if not values:
        return None
    return Percentiles(
        count=len(values),
        p50=percentile(values, 50),
        p90=percentile(values, 90),
        p99=percentile(values, 99),
        max=max(values),
    )


def _route_figures(attempts: Iterable[AttemptRecord]) -> RouteFigures:
    attempts = list(attempts)
    outcomes = Counter(a.outcome for a in attempts)
    ttfts = [a.diagnostics.ttft for a in attempts if a.diagnostics.ttft is not None]
    return RouteFigures(
        attempts=len(attempts),
        completed=outcomes["completed"],
        stale=outcomes["stale"],
        dropped=outcomes["dropped"],
        error=outcomes["error"],
        interrupted=outcomes["interrupted"],
        deadline=outcomes["deadline"],
        probes=sum(1 for a in attempts if a.probe),
        median_ttft=statistics.median(ttfts) if ttfts else None,
    )


def summarize(path: str | Path) -> Summary:
    """The figures of the recording at ``path``; raises ``RecordingError`` if it is none."""
    return summary_of(load(path), file=str(path))


def summary_of(recording: Recording, *, file: str = "") -> Summary:
    """The figures of a loaded recording."""
    runs = list(recording.runs.values())
    states = Counter(run.state for run in runs if run.state is not None)
    paths = Counter(ARROW.join(path_of(run.history)) for run in runs)
    recoveries = [latency for run in runs for latency in recoveries_of(run.history)]
    by_route: dict[str, list[AttemptRecord]] = {}
    for run in runs:
        for route, attempt in zip(run.attempt_routes, run.attempts, strict=True):
            by_route.setdefault(route, []).append(attempt)
    return Summary(
        file=file,
        runs=len(runs),
        unfinished=sum(1 for run in runs if run.state is None),
        states=dict(states.most_common()),
        paths=dict(paths.most_common()),
        recoveries=tuple(recoveries),
        recovery=_percentiles(recoveries),
        routes={route: _route_figures(attempts) for route, attempts in by_route.items()},
        breakers={route: tuple(steps) for route, steps in recording.breakers.items()},
        started_wall=recording.started_wall,
        bad_lines=recording.bad_lines,
        versions=tuple(recording.versions),
    )


# -- diagrams --------------------------------------------------------------------------
def write_diagrams(recording: Recording | str | Path, directory: str | Path) -> list[Path]:
    """One Mermaid file per recorded run (``NNN-<run id>.mmd``, in order of start), drawn
    by ``lifecycle._observe.diagram.run_diagram`` from the recorded transitions and attempts (a
    recording, or the path of one)."""
    from .diagram import run_diagram

    if not isinstance(recording, Recording):
        recording = load(recording)
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for number, run in enumerate(recording.runs.values(), start=1):
        target = folder / f"{number:03d}-{_safe(run.run_id)}.mmd"
        target.write_text(run_diagram(run.history, run.attempts), encoding="utf-8")
        written.append(target)
    return written


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:64] or "run"


# -- printing --------------------------------------------------------------------------
def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def _breaker_line(step: BreakerStep, origin: float | None) -> str:
    when = f"+{step.at - origin:.2f}s" if origin is not None else f"{step.at:.3f}"
    text = f"{when}  {step.source} → {step.dest} ({step.trigger}, {step.failures} failures)"
    if step.reopen_at is not None:
        text += f", probe in {step.reopen_at - step.at:.1f}s"
    return text


_ROUTE_COLUMNS: Final = ("route", "attempts", *OUTCOMES, "probes", "median ttft")


def _route_rows(summary: Summary) -> list[tuple[str, ...]]:
    return [
        (
            route,
            str(f.attempts),
            *(str(f.count(word)) for word in OUTCOMES),
            str(f.probes),
            _ms(f.median_ttft),
        )
        for route, f in summary.routes.items()
    ]


def _headline(summary: Summary) -> str:
    line = f"{summary.file}: {summary.runs} runs"
    if summary.unfinished:
        line += f" ({summary.unfinished} unfinished)"
    if summary.bad_lines:
        line += f"; {summary.bad_lines} unreadable line(s) skipped"
    return line


def _recovery_line(summary: Summary) -> str:
    r = summary.recovery
    if r is None:
        return "recovery latency: no recoveries"
    return (
        f"recovery latency over {r.count} recoveries: p50 {_ms(r.p50)}, p90 {_ms(r.p90)}, "
        f"p99 {_ms(r.p99)}, max {_ms(r.max)}"
    )


def _plain_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines.extend(
        "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )
    return "\n".join(lines)


def _print_plain(summary: Summary, out: TextIO) -> None:
    def say(text: str = "") -> None:
        print(text, file=out)

    say(_headline(summary))
    say()
    say(_plain_table(("final state", "runs"), [(s, str(n)) for s, n in summary.states.items()]))
    say()
    say(_plain_table(("runs", "path"), [(str(n), p) for p, n in summary.paths.items()]))
    say()
    say(_recovery_line(summary))
    say()
    say(_plain_table(_ROUTE_COLUMNS, _route_rows(summary)))
    say()
    if not summary.breakers:
        say("breaker transitions: none")
    for route, steps in summary.breakers.items():
        say(f"breaker of {route}: {len(steps)} transition(s)")
        for step in steps:
            say("  " + _breaker_line(step, summary.started_wall))


def _print_rich(summary: Summary, out: TextIO) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(file=out, highlight=False)
    if not console.is_terminal:  # a file or a pipe: no terminal width to fit, 80 is narrow
        console = Console(file=out, highlight=False, width=140)
    console.print(_headline(summary), markup=False)
    states = Table(title="runs per final state", title_justify="left")
    states.add_column("final state")
    states.add_column("runs", justify="right")
    for state, count in summary.states.items():
        states.add_row(state, str(count))
    console.print(states)
    paths = Table(title="runs per path", title_justify="left")
    paths.add_column("runs", justify="right")
    paths.add_column("path", overflow="fold")
    for text, count in summary.paths.items():
        paths.add_row(str(count), text)
    console.print(paths)
    console.print(_recovery_line(summary), markup=False)
    routes = Table(title="per route", title_justify="left")
    for index, column in enumerate(_ROUTE_COLUMNS):
        if index == 0:
            # A route's name is what a reader greps for: kept whole; on a narrow terminal
            # the figures' headers fold instead (their figures are a few digits).
            routes.add_column(column, no_wrap=True)
        else:
            routes.add_column(column, justify="right", overflow="fold")
    for row in _route_rows(summary):
        routes.add_row(*row)
    console.print(routes)
    if not summary.breakers:
        console.print("breaker transitions: none")
        return
    breakers = Table(title="breaker transitions per route", title_justify="left")
    breakers.add_column("route", overflow="fold")
    breakers.add_column("transitions", justify="right")
    breakers.add_column("when (since the recording began)", overflow="fold")
    for route, steps in summary.breakers.items():
        lines = "\n".join(_breaker_line(s, summary.started_wall) for s in steps)
        breakers.add_row(route, str(len(steps)), lines)
    console.print(breakers)


def rich_available() -> bool:
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


def print_summary(summary: Summary, out: TextIO, *, use_rich: bool | None = None) -> None:
    """Print ``summary``: rich tables if rich is importable (or ``use_rich``), else text."""
    if use_rich is None:
        use_rich = rich_available()
    if use_rich:
        _print_rich(summary, out)
    else:
        _print_plain(summary, out)


def report_command(file: str, *, diagrams: str | None, out: TextIO, err: TextIO) -> int:
    """``lifecycle report FILE [--diagrams DIR]``: 0, 1 (not a recording), 2 (unreadable)."""
    try:
        recording = load(file)
        summary = summary_of(recording, file=file)
        written = write_diagrams(recording, diagrams) if diagrams is not None else []
    except OSError as exc:
        print(f"lifecycle report: {exc}", file=err)
        return 2
    except RecordingError as exc:
        print(f"lifecycle report: {exc}", file=err)
        return 1
    print_summary(summary, out)
    if diagrams is not None:
        print(
            f"\n{len(written)} per-run diagram(s) written to {Path(diagrams).resolve()}", file=out
        )
    return 0
