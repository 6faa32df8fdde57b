"""Run the mutation catalogue: apply each hand mutation to a throwaway copy of the checkout
and see whether the test suite fails on it (killed) or not (survived).

    python tests/mutation/run.py [--list] [--only NAME ...] [--python PATH]
                                 [--timeout SECONDS] [--first-only] [--out FILE]

For each mutation: the checkout's tracked files (``git ls-files``, as they are in the
work tree) are copied to a temporary directory, the mutation's ``old`` snippet is
replaced by ``new`` there (the run stops at once if ``old`` does not occur exactly once),
and ``python -m pytest -x -q -p no:cacheprovider`` runs in the copy with ``PYTHONPATH``
set to it: first the mutation's ``first`` test files, then, if they all pass, the rest
of ``tests/``. The first failing test kills the mutation; a mutation that passes
everything within ``--timeout`` seconds survives (``timeout`` if the cap cut the run
short). The copy is removed afterwards; the real checkout is only ever read.

This is on demand, not part of CI's test run: a full pass costs up to one suite run per
surviving mutation. ``tests/test_mutation_catalogue.py`` (in the normal suite) fails as
soon as production code under a mutation changes: update the catalogue with the code.
That test is left out of the mutated copies' runs, since there it fails by design.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from catalogue import CATALOGUE, Mutation

ROOT = Path(__file__).resolve().parents[2]
CATALOGUE_TEST = "tests/test_mutation_catalogue.py"
PYTEST = ("-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-rfE")
# Killed by anything that is not a clean pass: failed tests (1), or collection errors
# and pytest-timeout's interruption (2). 3 and 4 are pytest's own trouble (internal
# error, bad usage) and 5 means nothing ran: the runner reports those as errors.
KILLING_CODES = frozenset({1, 2})
# "FAILED <node id> - <message>" in pytest's short summary (a node id may hold spaces).
_FAILED_LINE = re.compile(r"^(?:FAILED|ERROR) (.+?)(?: - .*)?$", re.MULTILINE)


class NotApplicable(Exception):
    """A mutation's ``old`` snippet does not occur exactly once in its file."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Result:
    mutation: Mutation
    status: str
    """``killed``, ``survived``, ``timeout`` (not killed within the cap) or ``error``."""
    killed_by: str
    seconds: float
    phase: str
    """Where it ended: ``first`` (the mutation's first files) or ``rest`` (the suite)."""


def mutated_text(mutation: Mutation, root: Path = ROOT) -> str:
    text = (root / mutation.file).read_text(encoding="utf-8")
    count = text.count(mutation.old)
    if count != 1:
        raise NotApplicable(
            f"{mutation.name}: its old snippet occurs {count} times in {mutation.file} "
            "(expected exactly once): update tests/mutation/catalogue.py with the code"
        )
    return text.replace(mutation.old, mutation.new)


def tracked_files(root: Path) -> list[str]:
    listing = subprocess.run(
        ["git", "-C", str(root), "ls-files", "-z"], check=True, capture_output=True
    ).stdout
    return [name for name in listing.decode().split("\0") if name]


def make_copy(root: Path, files: Sequence[str], mutation: Mutation) -> Path:
    copy = Path(tempfile.mkdtemp(prefix=f"mutant-{mutation.name}-"))
    try:
        for name in files:
            source = root / name
            if not source.is_file():  # deleted in the work tree, not yet in git
                continue
            target = copy / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
        (copy / mutation.file).write_text(mutated_text(mutation, root), encoding="utf-8")
    except BaseException:
        shutil.rmtree(copy, ignore_errors=True)
        raise
    return copy


def copy_env(copy: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(copy)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def check_imports_from(python: str, copy: Path) -> None:
    """The copy's packages, not an installed checkout's, must be the ones imported."""
    probe = "import lifecycle, providers; print(lifecycle.__file__); print(providers.__file__)"
    out = subprocess.run(
        [python, "-c", probe], cwd=copy, env=copy_env(copy), capture_output=True, text=True
    )
    paths = out.stdout.split()
    if (
        out.returncode != 0
        or len(paths) != 2
        or not all(Path(path).resolve().is_relative_to(copy.resolve()) for path in paths)
    ):
        raise RuntimeError(
            f"{python} does not import the mutated copy's packages from {copy}: "
            f"{out.stdout.strip()} {out.stderr.strip()[-500:]}"
        )


def run_pytest(
    python: str, copy: Path, args: Sequence[str], timeout: float
) -> tuple[int | None, str]:
    """pytest in the copy; (exit code or None on timeout, its output)."""
    process = subprocess.Popen(
        [python, *PYTEST, *args],
        cwd=copy,
        env=copy_env(copy),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: a timeout ends every child too
    )
    try:
        output, _ = process.communicate(timeout=max(timeout, 1.0))
        return process.returncode, output
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        return None, output
    except BaseException:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise


def killer_of(output: str) -> str:
    found = _FAILED_LINE.findall(output)
    if found:
        return found[0]
    tail = [line for line in output.strip().splitlines() if line.strip()]
    return tail[-1][:120] if tail else "?"


def run_one(
    mutation: Mutation,
    *,
    python: str,
    files: Sequence[str],
    cap: float,
    first_only: bool,
    log_dir: Path | None,
) -> Result:
    started = time.monotonic()
    copy = make_copy(ROOT, files, mutation)
    try:
        check_imports_from(python, copy)
        phases = [("first", list(mutation.first))]
        if not first_only:
            ignored = [*mutation.first, CATALOGUE_TEST]
            phases.append(("rest", ["tests", *(f"--ignore={name}" for name in ignored)]))
        outputs = []
        for phase, args in phases:
            remaining = cap - (time.monotonic() - started)
            if remaining <= 0:
                return _result(mutation, "timeout", "(cap reached)", started, phase)
            code, output = run_pytest(python, copy, args, remaining)
            outputs.append(f"=== {phase}: exit {code}\n{output}")
            if log_dir is not None:
                (log_dir / f"{mutation.name}.log").write_text("\n".join(outputs))
            if code is None:
                return _result(mutation, "timeout", "(cap reached)", started, phase)
            if code in KILLING_CODES:
                return _result(mutation, "killed", killer_of(output), started, phase)
            if code != 0:
                return _result(
                    mutation, "error", f"pytest exit {code}: {killer_of(output)}", started, phase
                )
        return _result(mutation, "survived", "", started, phases[-1][0])
    finally:
        shutil.rmtree(copy, ignore_errors=True)


def _result(mutation: Mutation, status: str, by: str, started: float, phase: str) -> Result:
    return Result(
        mutation=mutation,
        status=status,
        killed_by=by,
        seconds=time.monotonic() - started,
        phase=phase,
    )


def score(results: Sequence[Result]) -> str:
    killed = sum(result.status == "killed" for result in results)
    total = len(results)
    percent = 100.0 * killed / total if total else 0.0
    return f"{killed}/{total} ({percent:.0f}%)"


def report(results: Sequence[Result], *, first_only: bool, cap: float) -> str:
    scope = "the first files only" if first_only else "first files, then the whole suite"
    lines = [
        "# Mutation run",
        "",
        f"Scope: {scope}; cap {cap:g} s per mutation.",
        "",
        "| name | class | status | killed by | seconds |",
        "|---|---|---|---|---|",
    ]
    for result in results:
        by = result.killed_by.replace("|", "\\|")
        lines.append(
            f"| {result.mutation.name} | {result.mutation.bug_class} | {result.status} "
            f"| {by} | {result.seconds:.1f} |"
        )
    survivors = [r.mutation.name for r in results if r.status != "killed"]
    lines += ["", f"Score: {score(results)}"]
    if survivors:
        lines.append(f"Not killed: {', '.join(survivors)}")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="list the catalogue and exit")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these mutations")
    parser.add_argument("--python", default=sys.executable, help="interpreter for the suite")
    parser.add_argument(
        "--timeout", type=float, default=1800.0, help="seconds per mutation (default 1800)"
    )
    parser.add_argument(
        "--first-only", action="store_true", help="run only each mutation's first files"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(tempfile.gettempdir()) / "mutation-report.md",
        help="where the Markdown report goes",
    )
    parser.add_argument("--logs", type=Path, help="keep each mutation's pytest output here")
    options = parser.parse_args(argv)

    if options.list:
        for mutation in CATALOGUE:
            print(f"{mutation.name:42} {mutation.bug_class:18} {mutation.file}")
            print(f"{'':42} {mutation.why}")
        return 0
    chosen = list(CATALOGUE)
    if options.only:
        known = {mutation.name: mutation for mutation in CATALOGUE}
        unknown = [name for name in options.only if name not in known]
        if unknown:
            parser.error(f"no such mutation: {', '.join(unknown)}")
        chosen = [known[name] for name in options.only]
    # Every chosen mutation must apply before any time is spent running one.
    for mutation in chosen:
        mutated_text(mutation)
    files = tracked_files(ROOT)
    if options.logs is not None:
        options.logs.mkdir(parents=True, exist_ok=True)

    results: list[Result] = []
    width = max(len(mutation.name) for mutation in chosen)
    for number, mutation in enumerate(chosen, 1):
        result = run_one(
            mutation,
            python=options.python,
            files=files,
            cap=options.timeout,
            first_only=options.first_only,
            log_dir=options.logs,
        )
        results.append(result)
        print(
            f"[{number:>2}/{len(chosen)}] {result.status:8} {mutation.name:{width}} "
            f"{result.seconds:6.1f}s  {result.phase:5} {result.killed_by}  "
            f"(score {score(results)})",
            flush=True,
        )
    text = report(results, first_only=options.first_only, cap=options.timeout)
    print()
    print(text, end="")
    options.out.write_text(text, encoding="utf-8")
    print(f"(written to {options.out})")
    return 1 if any(result.status == "error" for result in results) else 0


if __name__ == "__main__":
    sys.exit(main())
