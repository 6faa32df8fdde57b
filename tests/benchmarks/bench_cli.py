"""How long the ``lifecycle`` command takes to answer ``--help`` and ``--version``.

Prints the median wall time of several fresh interpreter runs of each, next to the bare
interpreter's start-up for reference (the target for ``--help`` is under 0.5 s)::

    python tests/benchmarks/bench_cli.py [--runs 9]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def _command() -> list[str]:
    """The installed console script when it sits next to this interpreter, else -m."""
    script = Path(sys.executable).with_name("lifecycle")
    if script.exists():
        return [str(script)]
    found = shutil.which("lifecycle")
    return [found] if found else [sys.executable, "-m", "lifecycle"]


def _median_seconds(argv: list[str], runs: int) -> float:
    times: list[float] = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9, help="runs per command (default: 9)")
    args = parser.parse_args()
    command = _command()
    rows = [
        ("python -c pass (interpreter start-up)", [sys.executable, "-c", "pass"]),
        ("lifecycle --help", [*command, "--help"]),
        ("lifecycle --version", [*command, "--version"]),
        ("lifecycle serve --help", [*command, "serve", "--help"]),
    ]
    print(f"median of {args.runs} runs, {' '.join(command)}")
    for label, argv in rows:
        print(f"{label:40} {_median_seconds(argv, args.runs) * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
