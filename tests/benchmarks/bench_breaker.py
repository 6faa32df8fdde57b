"""Benchmark: a wave of stalls on the only route, with the default circuit breaker.

Not a test: it prints a table. Run from the repository root:

    python tests/benchmarks/bench_breaker.py [--runs 1000] [--sync-runs 200]
        [--provider anthropic|openai]

N concurrent runs on one engine with one route and ``BreakerPolicy()`` (the default),
half of them stalling once after their first event (``StallAfterEvents(n=1)``; an
exhausted script is ``Healthy``, so each retry streams). The stalls are detected
together, within one ``stale`` period. Before incidents and panic mode they opened the
breaker (five in a row) and every run still to start or retry failed with "no route
admits the run". Rows, each from a fresh engine:

- ``default``: ``BreakerPolicy()``: every run must complete; the stalls are one incident,
  so the breaker stays closed and no attempt needs panic mode.
- ``fail-fast``: ``BreakerPolicy(fail_fast_when_all_open=True)``: the same, since the
  breaker never opens.
- ``fail-fast, failures_to_open=1``: the one incident opens the breaker, and the opt-in
  fails the retries (the row shows what fail-fast costs).
- ``panic, failures_to_open=1``: the same breaker without the opt-in: the open breaker
  refuses every retry and panic mode runs it anyway; all complete.

Columns: runs completed and failed, stalled first attempts, attempts in panic mode, the
breaker's state and failure count (incidents) at the end, wall seconds. The loopback
server runs in this process (its own thread and event loop).
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import anthropic
import openai

from lifecycle import BreakerPolicy, LifecycleError, RetryPolicy, StreamEngine, Timeouts
from providers import AnthropicMessages, OpenAIChatCompletions
from providers.loopback import Healthy, LoopbackServer, StallAfterEvents

REQUEST: dict[str, Any] = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 64}
TIMEOUTS = Timeouts(connect=60, first_token=120, stale=3, total=300)
RETRY = RetryPolicy(max_attempts=3, initial_backoff=0.0, max_backoff=0.0, jitter=0.0)
VARIANTS: dict[str, BreakerPolicy] = {
    "default": BreakerPolicy(),
    "fail-fast": BreakerPolicy(fail_fast_when_all_open=True),
    "fail-fast, failures_to_open=1": BreakerPolicy(
        failures_to_open=1, fail_fast_when_all_open=True
    ),
    "panic, failures_to_open=1": BreakerPolicy(failures_to_open=1),
}


@dataclass(frozen=True, kw_only=True, slots=True)
class Row:
    driver: str
    variant: str
    runs: int
    completed: int
    failed: int
    stalled: int
    panic: int
    breaker: str
    incidents: int
    wall: float


def make_route(provider: str, server: LoopbackServer, key: str, *, is_async: bool) -> Any:
    headers = {"x-loopback-key": key}
    model = f"{provider}-bench-breaker"
    if provider == "anthropic":
        cls: Any = anthropic.AsyncAnthropic if is_async else anthropic.Anthropic
        return AnthropicMessages(
            lambda: cls(
                base_url=server.anthropic_base_url, api_key="bench", default_headers=headers
            ),
            model=model,
        )
    ocls: Any = openai.AsyncOpenAI if is_async else openai.OpenAI
    return OpenAIChatCompletions(
        lambda: ocls(base_url=server.openai_base_url, api_key="bench", default_headers=headers),
        model=model,
    )


def run_sync(engine: StreamEngine, count: int) -> list[Any]:
    runs: list[Any] = []
    lock = threading.Lock()
    start = threading.Barrier(count)

    def one() -> None:
        start.wait()
        run = engine.stream(**REQUEST)
        try:
            with run:
                for _ in run:
                    pass
        except LifecycleError:
            pass
        with lock:
            runs.append(run)

    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return runs


async def run_async(engine: StreamEngine, count: int) -> list[Any]:
    async def one() -> Any:
        run = engine.astream(**REQUEST)
        try:
            async with run:
                async for _ in run:
                    pass
        except LifecycleError:
            pass
        return run

    return list(await asyncio.gather(*(one() for _ in range(count))))


def measure(server: LoopbackServer, provider: str, driver: str, variant: str, count: int) -> Row:
    key = f"bench-breaker-{driver}-{variant}-{time.monotonic_ns()}"
    server.script(key, [StallAfterEvents(n=1), Healthy()] * (count // 2))
    is_async = driver == "async"
    route = make_route(provider, server, key, is_async=is_async)
    engine = StreamEngine(routes=[route], timeouts=TIMEOUTS, retry=RETRY, breaker=VARIANTS[variant])
    started = time.perf_counter()
    if is_async:

        async def wave() -> tuple[list[Any], float]:
            runs = await run_async(engine, count)
            wall = time.perf_counter() - started
            # On the runs' own loop: a closed loop's clients can only be abandoned,
            # their connections left open at the server.
            await engine.aclose()
            return runs, wall

        runs, wall = asyncio.run(wave())
    else:
        runs = run_sync(engine, count)
        wall = time.perf_counter() - started
    status = engine.breakers()[route.name]
    engine.close()
    return Row(
        driver=driver,
        variant=variant,
        runs=len(runs),
        completed=sum(run.state == "completed" for run in runs),
        failed=sum(run.state == "failed" for run in runs),
        stalled=sum(bool(run.attempts) and run.attempts[0].outcome == "stale" for run in runs),
        panic=sum(attempt.panic for run in runs for attempt in run.attempts),
        breaker=status.state,
        incidents=status.failures,
        wall=wall,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000, help="concurrent async runs")
    parser.add_argument("--sync-runs", type=int, default=200, help="concurrent sync runs")
    parser.add_argument("--provider", choices=["anthropic", "openai"], default="anthropic")
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, CPython {platform.python_version()}, "
        f"anthropic {anthropic.__version__}, openai {openai.__version__}"
    )
    print(f"one route ({args.provider}), half the runs stall once, stale={TIMEOUTS.stale:g} s")
    header = (
        f"{'driver':<6} {'variant':<30} {'runs':>5} {'done':>5} {'failed':>6} "
        f"{'stalled':>7} {'panic':>5} {'breaker':>8} {'incid.':>6} {'wall s':>7}"
    )
    print(header)
    ok = True
    with LoopbackServer() as server:
        for driver, count in (("sync", args.sync_runs), ("async", args.runs)):
            for variant in VARIANTS:
                row = measure(server, args.provider, driver, variant, count)
                print(
                    f"{row.driver:<6} {row.variant:<30} {row.runs:>5} {row.completed:>5} "
                    f"{row.failed:>6} {row.stalled:>7} {row.panic:>5} {row.breaker:>8} "
                    f"{row.incidents:>6} {row.wall:>7.1f}",
                    flush=True,
                )
                if not variant.startswith("fail-fast, ") and row.completed != row.runs:
                    ok = False
        open_connections = [c for c in server.connection_log if c.closed_at is None]
        print(f"open connections at the server after the benchmark: {len(open_connections)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
