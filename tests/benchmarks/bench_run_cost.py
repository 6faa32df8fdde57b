"""Benchmark: the engine's fixed cost per run, in Python function calls (deterministic).

Not a test: it prints figures. Run from the repository root:

    python tests/benchmarks/bench_run_cost.py [--top 20] [--timing 0] [--only sync-anthropic]

For each driver (sync, async) and provider (anthropic, openai chat), over the loopback
server, a short recorded stream (~9 events) is run warm through ``StreamEngine`` and
through the bare SDK (the same route-prepared client, the same request keywords, the
same recording), each once under ``cProfile`` after warm-up runs. cProfile counts every
call on the profiled (caller's) thread, Python and C alike; the server's thread, the
watchdog and the spare-client builder are not counted. Printed:

- (a) calls per warm run: engine, bare SDK (the route-prepared client: the engine's
  transport hooks included), the difference (the engine's share), and the raw SDK (the
  factory's client, unprepared) with the engine's difference from it;
- (b) the top ``--top`` functions by the calls the engine run makes beyond the bare
  run (own calls, with the engine run's cumulative time), and the top engine-side
  functions (``lifecycle/`` and ``providers/``, not the loopback) by cumulative time;
- (c) with ``--timing N``: the ratio of median wall times over N interleaved runs each
  (timing-based: noisy on a shared machine; the load average is printed).

Call counts are stable from run to run (the warm-up makes the lazy imports and caches
of both sides happen first); timing is not.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import os
import platform
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anthropic
import openai

# A sibling script: run from the repository root, this directory is on sys.path.
from bench_lifecycle import route_for

from lifecycle import StreamEngine, Timeouts
from lifecycle.adapters import Request
from providers.loopback import Healthy, LoopbackServer

MESSAGES = [{"role": "user", "content": "Hi"}]
RECORDING = {"anthropic": "tool_use", "openai": "tool_calls_a"}
WARMUP = 6
PROFILED = 7
"""Profiled runs per side; the one with the fewest calls is reported: a run on the loop
may now and then take another turn of it (a body that arrives in two reads), which is
the server's timing, not either side's cost."""

FuncKey = tuple[str, int, str]
Table = tuple[int, dict[FuncKey, tuple[int, float]]]


@dataclass
class Case:
    is_async: bool
    provider: str
    events: int
    engine_calls: int
    bare_calls: int
    raw_calls: int
    engine_stats: dict[FuncKey, tuple[int, float]]
    bare_stats: dict[FuncKey, tuple[int, float]]
    bare_ms: float | None = None
    engine_ms: float | None = None

    @property
    def ratio(self) -> float | None:
        if self.bare_ms is None or self.engine_ms is None:
            return None
        return self.engine_ms / self.bare_ms

    @property
    def name(self) -> str:
        return f"{'async' if self.is_async else 'sync'}-{self.provider}"


def _table(profile: cProfile.Profile) -> Table:
    stats: Any = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    table: dict[FuncKey, tuple[int, float]] = {}
    total = 0
    for func, (_cc, nc, _tt, ct, _callers) in stats.items():
        table[func] = (nc, ct)
        total += nc
    # The profiler's own disable() call is counted once on each side; leave it out.
    for func in list(table):
        if func[2] == "<method 'disable' of '_lsprof.Profiler' objects>":
            total -= table.pop(func)[0]
    return total, table


def _fewest(profiles: list[cProfile.Profile]) -> Table:
    return min((_table(profile) for profile in profiles), key=lambda table: table[0])


def measure(provider: str, server: LoopbackServer, *, is_async: bool, timing: int) -> Case:
    key = f"cost-{provider}-{is_async}"
    recording = RECORDING[provider]
    route = route_for(provider, server, key, is_async=is_async)
    engine = StreamEngine(routes=[route], timeouts=Timeouts(stale=30, first_token=30, total=60))
    client = route.prepare_client(route.client_factory())
    kwargs = route.request_kwargs(Request(messages=MESSAGES, max_tokens=64), engine.timeouts)
    raw = route.client_factory()
    create: Callable[..., Any] = (
        client.messages.create if provider == "anthropic" else client.chat.completions.create
    )
    raw_create: Callable[..., Any] = (
        raw.messages.create if provider == "anthropic" else raw.chat.completions.create
    )
    events = 0
    bare_times: list[float] = []
    engine_times: list[float] = []

    def script() -> None:
        server.script(key, [Healthy(recording=recording)])

    if is_async:

        async def bare_once() -> None:
            stream = await create(**kwargs)
            async for _ in stream:
                pass

        async def raw_once() -> None:
            stream = await raw_create(**kwargs)
            async for _ in stream:
                pass

        async def engine_once() -> int:
            count = 0
            async for _event in engine.astream(messages=MESSAGES, max_tokens=64):
                count += 1
            return count

        async def profiled(once: Callable[[], Any]) -> cProfile.Profile:
            script()
            # The garbage of earlier runs collected, and what its finalizers scheduled
            # (asyncgen acloses) run, before the profile, not inside it.
            gc.collect()
            for _ in range(3):
                await asyncio.sleep(0)
            gc.disable()
            profile = cProfile.Profile()
            profile.enable()
            try:
                await once()
            finally:
                profile.disable()
                gc.enable()
            return profile

        async def main() -> tuple[int, Table, Table, Table]:
            count = 0
            for _ in range(WARMUP):
                script()
                await raw_once()
                script()
                await bare_once()
                script()
                count = await engine_once()
            bare_profile = _fewest([await profiled(bare_once) for _ in range(PROFILED)])
            engine_profile = _fewest([await profiled(engine_once) for _ in range(PROFILED)])
            raw_profile = _fewest([await profiled(raw_once) for _ in range(PROFILED)])
            for i in range(timing * 2):
                script()
                t0 = time.perf_counter()
                if i % 2 == 0:
                    await bare_once()
                    bare_times.append(time.perf_counter() - t0)
                else:
                    await engine_once()
                    engine_times.append(time.perf_counter() - t0)
            await client.close()
            await raw.close()
            await engine.aclose()
            return count, bare_profile, engine_profile, raw_profile

        events, bare_profile, engine_profile, raw_profile = asyncio.run(main())
    else:

        def sync_bare_once() -> None:
            for _ in create(**kwargs):
                pass

        def sync_raw_once() -> None:
            for _ in raw_create(**kwargs):
                pass

        def sync_engine_once() -> int:
            count = 0
            for _event in engine.stream(messages=MESSAGES, max_tokens=64):
                count += 1
            return count

        def sync_profiled(once: Callable[[], Any]) -> cProfile.Profile:
            script()
            gc.collect()
            gc.disable()
            profile = cProfile.Profile()
            profile.enable()
            try:
                once()
            finally:
                profile.disable()
                gc.enable()
            return profile

        for _ in range(WARMUP):
            script()
            sync_raw_once()
            script()
            sync_bare_once()
            script()
            events = sync_engine_once()
        bare_profile = _fewest([sync_profiled(sync_bare_once) for _ in range(PROFILED)])
        engine_profile = _fewest([sync_profiled(sync_engine_once) for _ in range(PROFILED)])
        raw_profile = _fewest([sync_profiled(sync_raw_once) for _ in range(PROFILED)])
        for i in range(timing * 2):
            script()
            t0 = time.perf_counter()
            if i % 2 == 0:
                sync_bare_once()
                bare_times.append(time.perf_counter() - t0)
            else:
                sync_engine_once()
                engine_times.append(time.perf_counter() - t0)
        client.close()
        raw.close()
        engine.close()
    engine_calls, engine_stats = engine_profile
    bare_calls, bare_stats = bare_profile
    return Case(
        is_async=is_async,
        provider=provider,
        events=events,
        engine_calls=engine_calls,
        bare_calls=bare_calls,
        raw_calls=raw_profile[0],
        engine_stats=engine_stats,
        bare_stats=bare_stats,
        bare_ms=statistics.median(bare_times) * 1e3 if timing else None,
        engine_ms=statistics.median(engine_times) * 1e3 if timing else None,
    )


def _where(func: FuncKey) -> str:
    filename, line, name = func
    if filename == "~":
        return name
    parts = filename.replace(os.sep, "/").split("/")
    for root in ("lifecycle", "providers", "anthropic", "openai", "httpx", "httpcore"):
        if root in parts:
            short = "/".join(parts[len(parts) - 1 - parts[::-1].index(root) :])
            return f"{short}:{line}({name})"
    return f"{parts[-1]}:{line}({name})"


def _engine_side(func: FuncKey) -> bool:
    path = func[0].replace(os.sep, "/")
    return ("/lifecycle/" in path or "/providers/" in path) and "/loopback/" not in path


def report(case: Case, top: int) -> None:
    print(f"\n== {case.name} ({RECORDING[case.provider]}, {case.events} events) ==")
    extra: list[tuple[int, float, FuncKey]] = []
    for func, (nc, ct) in case.engine_stats.items():
        more = nc - case.bare_stats.get(func, (0, 0.0))[0]
        if more > 0:
            extra.append((more, ct, func))
    extra.sort(key=lambda row: (-row[0], -row[1]))
    print(f"(b) top {top} by calls beyond the bare SDK run (engine calls - bare calls):")
    print(f"    {'extra':>6} {'cum ms':>7}  function")
    for more, ct, func in extra[:top]:
        print(f"    {more:6d} {ct * 1e3:7.3f}  {_where(func)}")
    side = sorted(
        ((ct, nc, func) for func, (nc, ct) in case.engine_stats.items() if _engine_side(func)),
        key=lambda row: -row[0],
    )
    print(f"    top {top} engine-side functions by cumulative time (one profiled run):")
    print(f"    {'calls':>6} {'cum ms':>7}  function")
    for ct, nc, func in side[:top]:
        print(f"    {nc:6d} {ct * 1e3:7.3f}  {_where(func)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument(
        "--timing", type=int, default=0, help="interleaved timed runs per side (0: none)"
    )
    parser.add_argument("--only", action="append", default=[], help="e.g. sync-anthropic")
    parser.add_argument("--quiet", action="store_true", help="the table only")
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {platform.python_implementation()} "
        f"{platform.python_version()}, anthropic {anthropic.__version__}, "
        f"openai {openai.__version__}"
    )
    cases: list[Case] = []
    with LoopbackServer() as server:
        print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        for is_async in (False, True):
            for provider in ("anthropic", "openai"):
                name = f"{'async' if is_async else 'sync'}-{provider}"
                if args.only and name not in args.only:
                    continue
                case = measure(provider, server, is_async=is_async, timing=args.timing)
                cases.append(case)
                if not args.quiet:
                    report(case, args.top)
        print(f"\nload average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("\n(a) Python calls per warm run (cProfile, the caller's thread)")
    print(
        f"{'driver':<7} {'provider':<10} {'recording':<13} {'events':>6} {'engine':>7} "
        f"{'bare':>7} {'extra':>6} {'raw SDK':>7} {'vs raw':>6}"
        + (f" {'bare ms':>7} {'eng ms':>7} {'ratio':>6}" if args.timing else "")
    )
    for case in cases:
        ratio = (
            f" {case.bare_ms:7.3f} {case.engine_ms:7.3f} {case.ratio:6.3f}"
            if case.ratio is not None and case.bare_ms is not None and case.engine_ms is not None
            else ""
        )
        print(
            f"{'async' if case.is_async else 'sync':<7} {case.provider:<10} "
            f"{RECORDING[case.provider]:<13} {case.events:6d} {case.engine_calls:7d} "
            f"{case.bare_calls:7d} {case.engine_calls - case.bare_calls:6d} "
            f"{case.raw_calls:7d} {case.engine_calls - case.raw_calls:6d}{ratio}"
        )
    if args.timing:
        print(f"(c) ratio: median engine / median bare wall time over {args.timing} runs each")
    return 0


if __name__ == "__main__":
    sys.exit(main())
