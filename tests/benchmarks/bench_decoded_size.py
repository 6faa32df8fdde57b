"""Benchmark: a 64 MiB SSE line sent gzip-compressed, against ``max_event_bytes``.

Not a test: it prints a table. Run from the repository root, on each stack's venv:

    python tests/benchmarks/bench_decoded_size.py [--size-mib 64] [--repeat 3]

The loopback server answers with ``CompressedLine(size=64 MiB, encoding="gzip")``: about
64 KiB on the wire, one ``data:`` line of 64 MiB once inflated. One run per row, on a
fresh engine with one route, budgets of 1 MiB and the default (16 MiB); both providers,
both drivers. Columns:

- ``outcome``: how the attempt ended: ``oversized`` (refused as an oversized event, the
  expected end), else its outcome and "not refused" (before decoded bytes were counted:
  ``dropped``, the SDK read the line whole, then the body ended without a stop);
- ``ended in``: seconds from ``engine.stream()`` to the end of the run, client build
  included (median of ``--repeat`` runs, without tracing);
- ``peak``: the most memory the run's Python allocations held at once (``tracemalloc``,
  a separate run), against the inflated line's size;
- ``wire``: bytes the attempt read from the socket.

The loopback server runs in this process (its own thread): its allocations are in the
peak too (a 1 MiB piece of the line while it compresses, then the cached ~64 KiB body).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import platform
import statistics
import sys
import time
import tracemalloc
from typing import Any

import anthropic
import openai

from lifecycle import LifecycleError, RetryPolicy, StreamEngine, Timeouts
from providers import AnthropicMessages, OpenAIChatCompletions
from providers.loopback import CompressedLine, LoopbackServer

REQUEST: dict[str, Any] = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 64}
TIMEOUTS = Timeouts(connect=10, first_token=120, stale=120, total=300)
RETRY = RetryPolicy(max_attempts=1)
DEFAULT_BUDGET = StreamEngine.__init__.__kwdefaults__["max_event_bytes"]  # type: ignore[index]


def _stack() -> str:
    for name in ("httpx2", "httpx"):
        try:
            return f"{name} {importlib.metadata.version(name)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return "?"


def _route(server: LoopbackServer, provider: str, model: str, *, is_async: bool) -> Any:
    if provider == "anthropic":
        cls: Any = anthropic.AsyncAnthropic if is_async else anthropic.Anthropic
        return AnthropicMessages(
            lambda: cls(base_url=server.anthropic_base_url, api_key="bench"), model=model
        )
    ocls: Any = openai.AsyncOpenAI if is_async else openai.OpenAI
    return OpenAIChatCompletions(
        lambda: ocls(base_url=server.openai_base_url, api_key="bench"), model=model
    )


def _one(
    server: LoopbackServer, provider: str, driver: str, budget: int, size: int, n: int
) -> tuple[str, float, int]:
    """One run: (outcome, seconds, wire bytes)."""
    model = f"bench-decoded-{provider}-{driver}-{budget}-{n}"
    server.script(model, [CompressedLine(size=size, encoding="gzip")])
    route = _route(server, provider, model, is_async=driver == "async")
    engine = StreamEngine(
        routes=[route], timeouts=TIMEOUTS, retry=RETRY, max_event_bytes=budget, breaker=None
    )
    started = time.perf_counter()
    if driver == "async":

        async def main() -> Any:
            run = engine.astream(**REQUEST)
            try:
                async with run:
                    async for _ in run:
                        pass
            except LifecycleError:
                pass
            finally:
                await engine.aclose()
            return run

        run = asyncio.run(main())
    else:
        run = engine.stream(**REQUEST)
        try:
            with run:
                for _ in run:
                    pass
        except LifecycleError:
            pass
        finally:
            engine.close()
    elapsed = time.perf_counter() - started
    first = run.attempts[0]
    outcome = (
        "oversized"
        if first.diagnostics.error_type == "OversizedEvent"
        else f"{first.outcome}, not refused"
    )
    return outcome, elapsed, first.diagnostics.bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    size = args.size_mib * 1024 * 1024
    print(
        f"# Python {platform.python_version()}, {_stack()}, anthropic {anthropic.__version__}, "
        f"openai {openai.__version__}; a {args.size_mib} MiB line, gzip"
    )
    print(
        f"{'provider':<10} {'driver':<6} {'budget':>8} {'outcome':<22} "
        f"{'ended in':>11} {'peak':>10} {'wire':>10}"
    )
    n = 0
    with LoopbackServer() as server:
        for budget in (1024 * 1024, DEFAULT_BUDGET):
            for provider in ("anthropic", "openai"):
                for driver in ("sync", "async"):
                    n += 1
                    _one(server, provider, driver, budget, size, n)  # warm: body cached
                    times = []
                    for _ in range(args.repeat):
                        n += 1
                        outcome, elapsed, wire = _one(server, provider, driver, budget, size, n)
                        times.append(elapsed)
                    n += 1
                    tracemalloc.start()
                    try:
                        _one(server, provider, driver, budget, size, n)
                        _, peak = tracemalloc.get_traced_memory()
                    finally:
                        tracemalloc.stop()
                    print(
                        f"{provider:<10} {driver:<6} {budget // 2**20:>5} MiB {outcome:<22} "
                        f"{statistics.median(times):>9.3f} s {peak / 2**20:>6.1f} MiB "
                        f"{wire / 1024:>6.1f} KiB",
                        flush=True,
                    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
