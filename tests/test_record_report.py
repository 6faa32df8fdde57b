"""The operator's view: ``lifecycle.record.TransitionRecorder`` and ``lifecycle report``.

Real runs (both SDKs, both drivers, the loopback server) are recorded; the report's
figures, computed from the file, must equal the same figures computed directly from the
run objects (``run.history``, ``run.attempts``) and the engine's breakers. The last test
runs ``lifecycle demo --watch --record FILE`` and ``lifecycle report FILE`` as
processes and checks the report against the recorded lines.
"""

from __future__ import annotations

import io
import json
import math
import os
import secrets
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import providers
from lifecycle import BreakerChange, BreakerPolicy, LifecycleHooks, RetryPolicy, Timeouts
from lifecycle.record import (
    FORMAT_VERSION,
    RouteFigures,
    TransitionRecorder,
    load,
    print_summary,
    summarize,
    write_diagrams,
)
from providers.cli import main
from providers.loopback import (
    DropAfterEvents,
    Healthy,
    HttpError,
    StallAfterEvents,
    StallAfterHeaders,
)

pytestmark = pytest.mark.timeout(90)

TIMEOUTS = Timeouts(connect=5, first_token=2.0, stale=0.4, total=30)
QUICK = RetryPolicy(max_attempts=2, initial_backoff=0.01, max_backoff=0.02)
ARROW = " → "


# -- the figures, straight from the run objects --------------------------------------------
def nearest_rank(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


def recoveries(history: Any) -> list[float]:
    found: list[float] = []
    fault_at = None
    for t in history:
        if t.dest in ("stale", "dropped"):
            fault_at = t.at
        elif t.trigger == "start_attempt" and fault_at is not None:
            found.append(t.at - fault_at)
            fault_at = None
    return found


def expected_routes(runs: list[Any]) -> dict[str, RouteFigures]:
    by_route: dict[str, list[Any]] = {}
    for run in runs:
        for attempt in run.attempts:
            by_route.setdefault(run.route_names[attempt.route_index], []).append(attempt)
    figures = {}
    for route, attempts in by_route.items():
        outcomes = Counter(a.outcome for a in attempts)
        ttfts = [a.diagnostics.ttft for a in attempts if a.diagnostics.ttft is not None]
        figures[route] = RouteFigures(
            attempts=len(attempts),
            completed=outcomes["completed"],
            stale=outcomes["stale"],
            dropped=outcomes["dropped"],
            error=outcomes["error"],
            interrupted=outcomes["interrupted"],
            probes=sum(a.probe for a in attempts),
            median_ttft=statistics.median(ttfts) if ttfts else None,
        )
    return figures


def check_against_runs(path: Path, runs: list[Any]) -> None:
    summary = summarize(path)
    assert summary.versions == (FORMAT_VERSION,)
    assert summary.bad_lines == 0
    assert summary.runs == len(runs)
    assert summary.unfinished == 0
    assert summary.states == dict(Counter(run.state for run in runs))
    paths = Counter(ARROW.join([r.history[0].source, *(t.dest for t in r.history)]) for r in runs)
    assert summary.paths == dict(paths)
    expected_recoveries = [latency for run in runs for latency in recoveries(run.history)]
    assert list(summary.recoveries) == expected_recoveries
    if expected_recoveries:
        assert summary.recovery is not None
        assert summary.recovery.count == len(expected_recoveries)
        assert summary.recovery.p50 == nearest_rank(expected_recoveries, 50)
        assert summary.recovery.p90 == nearest_rank(expected_recoveries, 90)
        assert summary.recovery.p99 == nearest_rank(expected_recoveries, 99)
        assert summary.recovery.max == max(expected_recoveries)
    else:
        assert summary.recovery is None
    assert summary.routes == expected_routes(runs)

    # The rebuilt records are the runs' own: transitions equal, attempts equal as dicts.
    recording = load(path)
    assert list(recording.runs) == [run.id for run in runs]
    for run in runs:
        recorded = recording.runs[run.id]
        assert recorded.state == run.state
        assert recorded.routes == run.route_names
        assert tuple(recorded.history) == run.history
        assert recorded.elapsed == run.history[-1].at
        assert [a.as_dict() for a in recorded.attempts] == [a.as_dict() for a in run.attempts]
        assert recorded.attempt_routes == [run.route_names[a.route_index] for a in run.attempts]


# -- recorded runs against their run objects ------------------------------------------------
def test_report_figures_equal_the_runs_own(provider: Any, tmp_path: Path) -> None:
    """Healthy, stalled, dropped, overloaded-then-fallback and interrupted runs."""
    path = tmp_path / "runs.jsonl"
    with TransitionRecorder(path=path) as recorder:
        engine = provider.engine(timeouts=TIMEOUTS, retry=QUICK, hooks=[recorder])
        runs = []
        for faults, interrupt_after in (
            ([Healthy()], None),
            ([StallAfterEvents(n=1)], None),
            ([DropAfterEvents(n=1)], None),
            ([HttpError(status=529), HttpError(status=529)], None),
            ([StallAfterHeaders(), Healthy()], None),
            ([StallAfterEvents(n=1)], 0.15),
        ):
            provider.script(faults)
            run, _ = provider.run_to_end(engine, interrupt_after=interrupt_after)
            runs.append(run)
    assert recorder.closed
    assert {run.state for run in runs} == {"completed", "cancelled"}
    check_against_runs(path, runs)

    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert lines[0]["kind"] == "header" and lines[0]["version"] == FORMAT_VERSION
    assert recorder.lines == len(lines)
    kinds = Counter(line["kind"] for line in lines)
    assert kinds["run_start"] == kinds["run_end"] == len(runs)
    assert kinds["transition"] == sum(len(run.history) for run in runs)
    assert kinds["attempt_end"] == sum(len(run.attempts) for run in runs)
    for line in lines[1:]:
        assert isinstance(line["wall"], float)

    # Diagrams from the recording are the runs' own diagrams, one file per run.
    written = write_diagrams(path, tmp_path / "diagrams")
    assert [p.name for p in written] == [f"{n:03d}-{run.id}.mmd" for n, run in enumerate(runs, 1)]
    for file, run in zip(written, runs, strict=True):
        assert file.read_text(encoding="utf-8") == run.diagram()


class BreakerLog(LifecycleHooks):
    def __init__(self) -> None:
        self.changes: list[BreakerChange] = []

    def on_breaker_change(self, change: BreakerChange) -> None:
        self.changes.append(change)


def test_breaker_changes_and_probes_are_recorded(provider: Any, tmp_path: Path) -> None:
    """A route that fails twice opens its breaker; the next run skips it; after the
    cooldown a probe succeeds and closes it. The report has those transitions, in order,
    and counts the probe."""
    path = tmp_path / "breaker.jsonl"
    log = BreakerLog()
    cooldown = 0.3
    recorder = TransitionRecorder(path=path)
    engine = provider.engine(
        timeouts=TIMEOUTS,
        retry=QUICK,
        hooks=[recorder, log],
        breaker=BreakerPolicy(failures_to_open=2, cooldown=cooldown),
    )
    name = provider.route().name
    provider.script([HttpError(status=503), HttpError(status=503)])
    runs = [provider.run_to_end(engine)[0], provider.run_to_end(engine)[0]]
    assert engine.breakers()[name].state == "open"
    time.sleep(cooldown + 0.05)
    runs.append(provider.run_to_end(engine)[0])
    assert engine.breakers()[name].state == "closed"
    recorder.close()
    check_against_runs(path, runs)

    summary = summarize(path)
    steps = summary.breakers[name]
    assert [(s.source, s.trigger, s.dest) for s in steps] == [
        ("closed", "trip", "open"),
        ("open", "cool_down", "half_open"),
        ("half_open", "admit_probe", "probing"),
        ("probing", "probe_succeeded", "closed"),
    ]
    mine = [c for c in log.changes if c.route == name]
    assert [(s.at, s.failures, s.reopen_at) for s in steps] == [
        (c.at, c.failures, c.reopen_at) for c in mine
    ]
    assert steps[-1].dest == engine.breakers()[name].state
    assert summary.routes[name].probes == 1 == sum(a.probe for r in runs for a in r.attempts)
    assert summary.paths[
        ARROW.join(("idle", "falling_back", "connecting", "streaming", "completed"))
    ]


def test_recorded_lines_are_redacted(provider: Any, tmp_path: Path) -> None:
    """A provider that echoes the API key in its error body: the key is in no line."""
    key = "sk-ant-api03-" + secrets.token_urlsafe(32)
    body = json.dumps({"error": {"message": f"invalid x-api-key: {key}; Bearer {key}"}})
    buffer = io.StringIO()
    recorder = TransitionRecorder(file=buffer)
    route = provider.route(api_key=key)
    engine = provider.make_engine(
        [route, provider.other_route()], timeouts=TIMEOUTS, retry=QUICK, hooks=[recorder]
    )
    provider.script([HttpError(status=401, body=body)])
    run, seen = provider.run_to_end(engine)
    assert run.state == "completed", seen.error
    recorder.close()
    text = buffer.getvalue()
    assert not buffer.closed, "a file object given to the recorder is the caller's to close"
    assert "attempt_end" in text and "[redacted]" in text
    assert key not in text and key[:20] not in text


# -- the recorder itself ---------------------------------------------------------------
def test_recorder_is_thread_safe_and_drops_records_after_close(tmp_path: Path) -> None:
    path = tmp_path / "threads.jsonl"
    recorder = TransitionRecorder(path=path)
    per_thread = 300

    def write(n: int) -> None:
        for i in range(per_thread):
            recorder.on_breaker_change(
                BreakerChange(
                    route=f"route-{n}",
                    source="closed",
                    trigger="trip",
                    dest="open",
                    at=float(i),
                    failures=i,
                    reopen_at=None,
                )
            )

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    recorder.close()
    recorder.close()  # idempotent
    recorder.on_breaker_change(
        BreakerChange(
            route="late",
            source="closed",
            trigger="trip",
            dest="open",
            at=0,
            failures=0,
            reopen_at=None,
        )
    )
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1 + 8 * per_thread == recorder.lines
    records = [json.loads(line) for line in lines]  # every line whole
    for n in range(8):
        mine = [r["failures"] for r in records if r.get("route") == f"route-{n}"]
        assert mine == list(range(per_thread)), "one thread's records out of order"
    summary = summarize(path)
    assert sum(len(steps) for steps in summary.breakers.values()) == 8 * per_thread
    assert summary.runs == 0 and summary.recovery is None


def test_recorder_arguments() -> None:
    with pytest.raises(TypeError):
        TransitionRecorder()
    with pytest.raises(TypeError):
        TransitionRecorder(path="x.jsonl", file=io.StringIO())
    with pytest.raises(TypeError):
        TransitionRecorder(file=io.StringIO(), append=True)


def test_appended_recordings_and_a_cut_last_line(tmp_path: Path) -> None:
    path = tmp_path / "appended.jsonl"
    change = BreakerChange(
        route="r", source="closed", trigger="trip", dest="open", at=1.0, failures=3, reopen_at=2.0
    )
    for _ in range(2):
        with TransitionRecorder(path=path, append=True) as recorder:
            recorder.on_breaker_change(change)
    with open(path, "a", encoding="utf-8") as file:
        file.write('{"kind": "transition", "run_id": "abc", "sou')  # a crash mid-line
    summary = summarize(path)
    assert summary.versions == (FORMAT_VERSION, FORMAT_VERSION)
    assert summary.bad_lines == 1
    assert len(summary.breakers["r"]) == 2


# -- the command --------------------------------------------------------------------------
def test_report_command_prints_the_figures(
    provider: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "cli.jsonl"
    with TransitionRecorder(path=path) as recorder:
        engine = provider.engine(timeouts=TIMEOUTS, retry=QUICK, hooks=[recorder])
        provider.script([DropAfterEvents(n=1)])
        run, _ = provider.run_to_end(engine)
    assert main(["report", str(path), "--diagrams", str(tmp_path / "d")]) == 0
    printed = capsys.readouterr().out
    path_text = ARROW.join([run.history[0].source, *(t.dest for t in run.history)])
    for text in (path_text, "1 runs", "p50", run.route_names[0], "1 per-run diagram"):
        assert text in printed, text
    summary = summarize(path)
    for use_rich in (False, True):
        out = io.StringIO()
        print_summary(summary, out, use_rich=use_rich)
        assert path_text in out.getvalue() and "completed" in out.getvalue()

    assert main(["report", str(tmp_path / "missing.jsonl")]) == 2
    not_a_recording = tmp_path / "other.jsonl"
    not_a_recording.write_text('{"kind": "transition"}\n', encoding="utf-8")
    assert main(["report", str(not_a_recording)]) == 1
    newer = tmp_path / "newer.jsonl"
    newer.write_text(json.dumps({"kind": "header", "version": 99, "wall": 0.0}) + "\n")
    assert main(["report", str(newer)]) == 1
    assert "version 99" in capsys.readouterr().err


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    root = str(Path(providers.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, "-m", "providers.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=80,
    )


def test_demo_watch_record_then_report(tmp_path: Path) -> None:
    record = tmp_path / "demo.jsonl"
    started = time.monotonic()
    demo = _cli(
        "demo",
        "--watch",
        "--record",
        str(record),
        "--diagrams",
        str(tmp_path / "dd"),
        cwd=tmp_path,
    )
    wall = time.monotonic() - started
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert wall < 40, f"the demo took {wall:.1f} s"
    assert "[watch" in demo.stdout  # not a terminal: plain snapshots
    assert "breaker-burst" in demo.stdout
    report = _cli("report", str(record), "--diagrams", str(tmp_path / "rd"), cwd=tmp_path)
    assert report.returncode == 0, report.stdout + report.stderr

    # The figures, from the raw lines, without the report's reader.
    lines = [json.loads(line) for line in record.read_text(encoding="utf-8").splitlines()]
    assert lines[0] == {**lines[0], "kind": "header", "version": FORMAT_VERSION}
    starts = [r["run_id"] for r in lines if r["kind"] == "run_start"]
    ends = {r["run_id"]: r for r in lines if r["kind"] == "run_end"}
    attempts = [r for r in lines if r["kind"] == "attempt_end"]
    breakers = [r for r in lines if r["kind"] == "breaker"]
    histories: dict[str, list[Any]] = {}
    for r in lines:
        if r["kind"] == "transition":
            histories.setdefault(r["run_id"], []).append(r)

    summary = summarize(record)
    assert summary.runs == len(starts) == len(set(starts)) == len(ends)
    assert summary.unfinished == 0
    assert summary.states == dict(Counter(r["state"] for r in ends.values()))
    assert summary.states["cancelled"] == 1  # user-interrupt; everything else completes
    assert summary.states["completed"] == summary.runs - 1
    for run_id, end in ends.items():
        assert end["attempts"] == sum(1 for a in attempts if a["run_id"] == run_id)
        assert end["elapsed"] == histories[run_id][-1]["at"]
        assert end["state"] == histories[run_id][-1]["dest"]
    per_route: dict[str, Counter[str]] = {}
    for a in attempts:
        per_route.setdefault(a["route"], Counter())[a["outcome"]] += 1
    assert set(summary.routes) == set(per_route)
    for route, outcomes in per_route.items():
        figures = summary.routes[route]
        assert figures.attempts == sum(outcomes.values())
        assert (figures.completed, figures.stale, figures.dropped, figures.error) == (
            outcomes["completed"],
            outcomes["stale"],
            outcomes["dropped"],
            outcomes["error"],
        )
        assert figures.probes == sum(1 for a in attempts if a["route"] == route and a["probe"])
    raw_recoveries = [
        x
        for run_id in starts
        for x in recoveries([SimpleNamespace(**t) for t in histories[run_id]])
    ]
    assert list(summary.recoveries) == raw_recoveries
    assert summary.recovery is not None
    assert summary.recovery.max == max(raw_recoveries)

    # The burst opened its route's breaker, probed it and closed it again.
    flaky = [(b["source"], b["dest"]) for b in breakers if b["route"] == "flaky-anthropic"]
    assert [(s.source, s.dest) for s in summary.breakers["flaky-anthropic"]] == flaky
    assert flaky[0] == ("closed", "open") and flaky[-1] == ("probing", "closed")
    assert summary.routes["flaky-anthropic"].probes >= 1

    # What the command printed is that summary.
    out = report.stdout
    assert f"{summary.runs} runs" in out
    assert f"over {summary.recovery.count} recoveries" in out
    assert f"p50 {summary.recovery.p50 * 1000:.1f} ms" in out
    assert "flaky-anthropic" in out and "probing → closed" in out
    assert f"{summary.runs} per-run diagram(s)" in out
    assert len(list((tmp_path / "rd").glob("*.mmd"))) == summary.runs
