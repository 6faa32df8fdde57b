"""tests/benchmarks/bench_peers.py, kept working: its engine part, its guard, its peers.

The benchmark prints figures (the peers table in the README); this runs its own cases,
through its own child processes and server accounting, so the file cannot rot unseen:

- the engine, at its default policy with a short stall budget, completes each of the
  benchmark's faults with the recording's whole answer, sends exactly the requests the
  fault calls for, and leaves no socket open on a faulted request;
- the child's guard refuses a connection to anything but 127.0.0.1 and ::1;
- with the ``bench`` extra installed, each peer answers a 529 then healthy case as the
  pinned version does (skipped without the extra: CI installs ``[test]`` only).
"""

from __future__ import annotations

import importlib.util
import itertools
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from providers.loopback import LoopbackServer

BENCH = Path(__file__).resolve().parent / "benchmarks" / "bench_peers.py"
BUDGET = 0.5
"""The stall budget the engine cases get here (the benchmark's is 2 s), as the suite's
other stall clocks: long enough on a loaded machine, short enough for CI."""


def _load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_peers", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_peers"] = module
    spec.loader.exec_module(module)
    return module


bench = _load_bench()


@pytest.fixture(scope="module")
def server() -> Iterator[LoopbackServer]:
    with LoopbackServer() as running:
        bench.warm_up(running)
        yield running


# What each fault costs the engine in requests: one faulted attempt then the healthy
# retry; in the fallback cases the first route stalls once and the second answers (a
# stall moves on to the next route at once: RetryPolicy().stale_before_fallback is 1).
ENGINE_REQUESTS = {
    "silent": "2",
    "pings": "2",
    "before-headers": "2",
    "drop": "2",
    "529": "2",
    "fallback": "1+1",
    "fallback-before-headers": "1+1",
}


def test_the_engine_completes_every_benchmark_fault(server: LoopbackServer) -> None:
    assert set(ENGINE_REQUESTS) == {case.name for case in bench.FAULTS}
    seen = {}
    # The providers take turns (each child costs ~2 s of imports): both wire APIs meet
    # stalls, keep-alives and drops, and each is once the stalling first route.
    for case, provider in zip(bench.FAULTS, itertools.cycle(bench.PROVIDERS), strict=False):
        result = bench.run_case(
            server, "engine", provider, case, cap=20.0, budget=BUDGET, settle=0.25
        )
        seen[case.name] = (result.outcome, result.requests, result.open_on_faulted)
        assert server.wait_idle(5.0)
    assert seen == {name: ("completed", requests, 0) for name, requests in ENGINE_REQUESTS.items()}


def test_the_child_guard_refuses_a_connection_off_127_0_0_1() -> None:
    # 127.0.0.2 is loopback too, so were the guard broken nothing would leave the machine;
    # the guard allows 127.0.0.1 and ::1 only, so it must refuse it.
    code = (
        "import socket, sys\n"
        f"sys.path.insert(0, {str(BENCH.parent)!r})\n"
        "import bench_peers\n"
        "bench_peers.guard_sockets()\n"
        "sock = socket.socket()\n"
        "sock.settimeout(1.0)\n"
        "try:\n"
        "    sock.connect(('127.0.0.2', 9))\n"
        "except OSError:\n"
        "    pass\n"
        "print('connected or refused by the peer: the guard let it through')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert (done.returncode, done.stdout) == (bench.OFF_MACHINE_EXIT, "")
    assert "OFF-MACHINE connect to ('127.0.0.2', 9)" in done.stderr


# The pinned peers (pyproject's bench extra) on "529 overloaded, then healthy": each
# retries the 529 itself and answers in full with two requests.
PEER_529 = {
    "sdk": ("completed", "2"),
    "litellm": ("completed", "2"),
    "pydantic-ai": ("completed", "2"),
}


@pytest.mark.parametrize("peer", sorted(PEER_529))
def test_each_peer_runs_through_the_benchmark(server: LoopbackServer, peer: str) -> None:
    module = bench.PEER_MODULES[peer]
    if module is not None:
        pytest.importorskip(module, reason="the bench extra is not installed")
    case = next(case for case in bench.FAULTS if case.name == "529")
    result = bench.run_case(server, peer, "anthropic", case, cap=20.0, budget=2.0, settle=0.25)
    assert (result.outcome, result.requests) == PEER_529[peer], result.detail
    assert server.wait_idle(5.0)
