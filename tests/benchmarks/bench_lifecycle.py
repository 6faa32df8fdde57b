"""Benchmark: recovery latency and per-event cost, sync and async, both providers.

Not a test: it prints figures. Run from the repository root:

    python tests/benchmarks/bench_lifecycle.py [--stalls 200] [--streams 30] [--recovery-only]

- recovery: a stream sends one event then goes silent; ``Timeouts(stale=0.2)``.
  Recovery latency is from the moment the stale clock ran out to the moment the next
  attempt's request is sent (detection + abort + cleanup: close of the client and its
  successor moved in + zero backoff + the next lease). The engine's share is recovery
  minus the detection lateness (how late the watchdog or the loop timer woke up).
- overhead: the long recorded OpenAI stream (180 chunks) and the Anthropic tool-use
  stream, iterated through the engine against iterating the SDK stream directly, same
  server, interleaved; the ratio of median wall times per stream. A third side, the
  adapter alone (``route.open`` and its neutral events, no engine), splits that ratio:
  adapter / bare is the translation of the request and of every event, which anything
  that hands out provider-neutral events pays; engine / adapter is the lifecycle's own.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import anthropic
import openai

from lifecycle import RetryPolicy, StreamEngine, Timeouts
from lifecycle.adapters import Request
from providers import AnthropicMessages, OpenAIChatCompletions
from providers.loopback import Healthy, LoopbackServer, StallAfterEvents

MESSAGES = [{"role": "user", "content": "Hi"}]
RECORDING = {"anthropic": "tool_use", "openai": "text_long"}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def route_for(provider: str, server: LoopbackServer, key: str, *, is_async: bool) -> Any:
    headers = {"x-loopback-key": key}
    if provider == "anthropic":
        cls: Any = anthropic.AsyncAnthropic if is_async else anthropic.Anthropic
        return AnthropicMessages(
            lambda: cls(
                base_url=server.anthropic_base_url, api_key="bench", default_headers=headers
            ),
            model="claude-bench",
        )
    ocls: Any = openai.AsyncOpenAI if is_async else openai.OpenAI
    return OpenAIChatCompletions(
        lambda: ocls(base_url=server.openai_base_url, api_key="bench", default_headers=headers),
        model="gpt-bench",
    )


def recovery_latencies(
    provider: str, server: LoopbackServer, stalls: int, *, is_async: bool
) -> tuple[list[float], list[float], list[float]]:
    key = f"recovery-{provider}-{is_async}"
    engine = StreamEngine(
        routes=[route_for(provider, server, key, is_async=is_async)],
        timeouts=Timeouts(first_token=2.0, stale=0.2, total=30),
        retry=RetryPolicy(max_attempts=2, initial_backoff=0.0, max_backoff=0.0),
    )
    recoveries: list[float] = []
    lateness: list[float] = []
    engine_share: list[float] = []

    def record(run: Any) -> None:
        stale, retry = run.attempts[0], run.attempts[1]
        assert stale.outcome == "stale" and retry.outcome == "completed", run.attempts
        sent = retry.started_at + retry.diagnostics.request_sent_at
        recovery = sent - stale.diagnostics.stall_deadline
        recoveries.append(recovery)
        lateness.append(stale.diagnostics.detection_lateness)
        engine_share.append(recovery - stale.diagnostics.detection_lateness)

    if is_async:

        async def main() -> None:
            for _ in range(stalls):
                server.script(key, [StallAfterEvents(n=1)])
                async with engine.astream(messages=MESSAGES, max_tokens=64) as run:
                    async for _event in run:
                        pass
                record(run)
            await engine.aclose()

        asyncio.run(main())
    else:
        for _ in range(stalls):
            server.script(key, [StallAfterEvents(n=1)])
            with engine.stream(messages=MESSAGES, max_tokens=64) as run:
                for _event in run:
                    pass
            record(run)
        engine.close()
    return recoveries, lateness, engine_share


def overhead(
    provider: str, server: LoopbackServer, streams: int, *, is_async: bool
) -> tuple[float, float, float, int]:
    """Median wall seconds per stream of three sides, interleaved on one prepared client
    and the same server: the bare SDK (``create(stream=True)``, iterated); the adapter
    alone (``route.open`` on that client, its neutral events iterated, then closed); and
    the engine. Returns (bare, adapter, engine, events per engine stream)."""
    key = f"overhead-{provider}-{is_async}"
    recording = RECORDING[provider]
    route = route_for(provider, server, key, is_async=is_async)
    engine = StreamEngine(routes=[route], timeouts=Timeouts(stale=30, first_token=30, total=60))
    client = route.prepare_client(route.client_factory())
    kwargs = route.request_kwargs(Request(messages=MESSAGES, max_tokens=64), engine.timeouts)
    create: Callable[..., Any] = (
        client.messages.create if provider == "anthropic" else client.chat.completions.create
    )
    sides: tuple[list[float], list[float], list[float]] = ([], [], [])
    warm_up = 6
    rounds = streams * 3 + warm_up
    events = 0

    def request() -> Request:
        # As the engine makes it per run (the bare side's keywords are made once).
        return Request(messages=tuple(MESSAGES), max_tokens=64)

    if is_async:

        async def main() -> int:
            count = 0
            for i in range(rounds):
                server.script(key, [Healthy(recording=recording)])
                side = i % 3
                t0 = time.perf_counter()
                if side == 0:
                    stream = await create(**kwargs)
                    async for _ in stream:
                        pass
                elif side == 1:
                    opened = await route.aopen(client, request(), engine.timeouts)
                    async for _event in opened.events():
                        pass
                    await opened.aclose()
                else:
                    count = 0
                    async for _event in engine.astream(messages=MESSAGES, max_tokens=64):
                        count += 1
                if i >= warm_up:
                    sides[side].append(time.perf_counter() - t0)
            await client.close()
            await engine.aclose()
            return count

        events = asyncio.run(main())
    else:
        for i in range(rounds):
            server.script(key, [Healthy(recording=recording)])
            side = i % 3
            t0 = time.perf_counter()
            if side == 0:
                for _ in create(**kwargs):
                    pass
            elif side == 1:
                opened = route.open(client, request(), engine.timeouts)
                for _event in opened.events():
                    pass
                opened.close()
            else:
                events = 0
                for _event in engine.stream(messages=MESSAGES, max_tokens=64):
                    events += 1
            if i >= warm_up:
                sides[side].append(time.perf_counter() - t0)
        client.close()
        engine.close()
    bare, adapter, wrapped = (statistics.median(side) for side in sides)
    return bare, adapter, wrapped, events


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stalls", type=int, default=200)
    parser.add_argument("--streams", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--recovery-only", action="store_true")
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {platform.python_implementation()} "
        f"{platform.python_version()}, anthropic {anthropic.__version__}, "
        f"openai {openai.__version__}"
    )
    with LoopbackServer() as server:
        print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print(
            f"\nrecovery (stall deadline -> next request sent) over {args.stalls} stalls "
            "(stale=0.2 s, zero backoff)"
        )
        print(
            f"{'driver':<7} {'provider':<10} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
            f"{'detect p50':>10} {'detect p99':>10} {'engine p50':>10} {'engine p99':>10}"
        )
        for is_async in (False, True):
            for provider in ("anthropic", "openai"):
                rec, late, share = recovery_latencies(
                    provider, server, args.stalls, is_async=is_async
                )
                print(
                    f"{'async' if is_async else 'sync':<7} {provider:<10} "
                    f"{pct(rec, 0.5) * 1e3:8.2f} {pct(rec, 0.99) * 1e3:8.2f} "
                    f"{max(rec) * 1e3:8.2f} "
                    f"{pct(late, 0.5) * 1e3:10.2f} {pct(late, 0.99) * 1e3:10.2f} "
                    f"{pct(share, 0.5) * 1e3:10.2f} {pct(share, 0.99) * 1e3:10.2f}",
                    flush=True,
                )
        print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        if args.recovery_only:
            return 0
        print(
            f"\nper-event cost, engine vs bare SDK: the ratio of median wall times over "
            f"{args.streams} interleaved streams each, measured {args.repeats} times "
            "(ratio: the median of those; spread: lowest to highest). adapter: the route's "
            "open and its neutral events without the engine, the translation of the "
            "request and of every event (adapter / bare); lifecycle: engine / adapter, "
            "what the engine's own run adds to it"
        )
        print(
            f"{'driver':<7} {'provider':<10} {'recording':<10} {'events':>6} {'bare ms':>8} "
            f"{'adapter ms':>10} {'engine ms':>9} {'ratio':>6} {'spread':>13} "
            f"{'adapter':>8} {'lifecycle':>9}"
        )
        for is_async in (False, True):
            for provider in ("anthropic", "openai"):
                runs = [
                    overhead(provider, server, args.streams, is_async=is_async)
                    for _ in range(args.repeats)
                ]
                ratios = sorted(wrapped / bare for bare, _, wrapped, _ in runs)
                bare = statistics.median(r[0] for r in runs)
                adapter = statistics.median(r[1] for r in runs)
                wrapped = statistics.median(r[2] for r in runs)
                adapter_ratio = statistics.median(r[1] / r[0] for r in runs)
                lifecycle_ratio = statistics.median(r[2] / r[1] for r in runs)
                events = runs[-1][3]
                print(
                    f"{'async' if is_async else 'sync':<7} {provider:<10} "
                    f"{RECORDING[provider]:<10} {events:6d} {bare * 1e3:8.2f} "
                    f"{adapter * 1e3:10.2f} {wrapped * 1e3:9.2f} "
                    f"{statistics.median(ratios):6.3f} {ratios[0]:6.3f}-{ratios[-1]:.3f} "
                    f"{adapter_ratio:8.3f} {lifecycle_ratio:9.3f}",
                    flush=True,
                )
        server.wait_idle(5)
        print(f"\nopen connections at the server after the benchmark: {server.open_connections}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
