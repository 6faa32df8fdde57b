"""tests/benchmarks/bench_scale.py, kept working: its client-build phase, the second of
the two targets at scale (the loop never blocked more than 5 ms by a client build).

The benchmark prints figures; nothing here judges them (a verdict depends on the
machine's load). What this checks is that the phase runs to its table: it builds its
spares through the engine's own per-route client state, several per factory, and a
change to that state's life cycle must not leave the benchmark unable to run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent / "benchmarks" / "bench_scale.py"
ROOT = BENCH.parent.parent.parent


def test_the_build_phase_builds_several_spares_per_factory_and_prints_its_table() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH), "--skip-async", "--skip-sync", "--builds", "3"],
        capture_output=True,
        text=True,
        timeout=240,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "criterion 2:" in done.stdout
    assert "builds 3 spares per factory" in done.stdout
    for label in ("idle (no build)", "build: AsyncX(base_url, api_key)", "build: + http_client"):
        row = next(line for line in done.stdout.splitlines() if line.startswith(label))
        # Three windows of each kind (the idle ones: one before every build).
        assert row.split()[-7] == ("6" if label.startswith("idle") else "3"), row
