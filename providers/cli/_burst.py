"""The demo's breaker burst (``lifecycle demo --concurrent``).

Async runs over a flaky route and a healthy backup: the flaky route fails until its
breaker opens, is probed and closes again. ``run_burst`` runs it and returns its
``BurstOutcome``, whose checks are about outcomes, not timings.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anthropic
import openai

from lifecycle import (
    AsyncRun,
    BreakerChange,
    BreakerPolicy,
    LifecycleError,
    LifecycleHooks,
    RetryPolicy,
    StreamEngine,
    Timeouts,
)
from lifecycle.adapters import Route

from ..anthropic_messages import AnthropicMessages
from ..loopback import (
    DropAfterEvents,
    Healthy,
    HttpError,
    LoopbackServer,
    ServerFault,
    StallAfterHeaders,
)
from ..openai_chat_completions import OpenAIChatCompletions
from ._live_board import Board, InFlight, counts_text
from ._scenarios import Check

__all__ = [
    "BACKUP_ROUTE",
    "BURST",
    "BURST_LIMIT",
    "FLAKY_ROUTE",
    "RECOVER_AFTER",
    "BurstOutcome",
    "run_burst",
]

BURST = "breaker-burst"
FLAKY_ROUTE = "flaky-anthropic"
BACKUP_ROUTE = "backup-openai"
RECOVER_AFTER = 2.5
"""Seconds into the burst at which the flaky provider recovers."""
BURST_LIMIT = 20.0
"""Stop launching runs after this long even if the breaker never closed again. On an idle
machine the breaker closes 5-7 s in and launching stops then; the margin is for a busy
one, whose verdict must not turn on timings."""


@dataclass
class BurstOutcome:
    states: Counter[str] = field(default_factory=Counter)
    changes: list[BreakerChange] = field(default_factory=list)
    elapsed: float = 0.0
    error: str | None = None
    failures: list[str] = field(default_factory=list)
    """The errors raised to the callers of runs that did not complete."""
    recover_after: float = RECOVER_AFTER
    limit: float = BURST_LIMIT

    @property
    def path(self) -> str:
        steps = [c for c in self.changes if c.route == FLAKY_ROUTE]
        if not steps:
            return "closed (never changed)"
        return " -> ".join([steps[0].source, *(c.dest for c in steps)])

    @property
    def checks(self) -> list[Check]:
        """What the burst promises, about outcomes rather than timings: every run
        completes (the backup answers while the flaky route fails or is refused), the
        flaky route's breaker opens, and a probe after the recovery closes it."""
        dests = [c.dest for c in self.changes if c.route == FLAKY_ROUTE]
        runs = sum(self.states.values())
        not_completed = runs - self.states["completed"]
        seen_runs = f"{runs} runs: {counts_text(dict(self.states))}"
        if self.failures:
            seen_runs += f"; first error: {self.failures[0]}"
        recovered = (
            f"the flaky route recovers at {self.recover_after:.1f}s"
            if self.recover_after < self.limit
            else f"the flaky route does not recover before launching stops at {self.limit:.1f}s"
        )
        return [
            Check(
                name=f"{BURST} ran",
                ok=self.error is None,
                expected="the burst to run without an exception",
                seen=self.error or "no exception",
            ),
            Check(
                name=f"{BURST} every run completed",
                ok=runs > 0 and not_completed == 0,
                expected="at least one run, and every run completed",
                seen=seen_runs,
            ),
            Check(
                name=f"{BURST} breaker opened",
                ok="open" in dests,
                expected=f"the breaker of {FLAKY_ROUTE} to open after its failures",
                seen=f"{self.path}",
            ),
            Check(
                name=f"{BURST} breaker closed again",
                ok=dests[-1:] == ["closed"],
                expected=f"a probe after the recovery to close the breaker of {FLAKY_ROUTE}",
                seen=f"{self.path} (last state {dests[-1] if dests else 'closed, never opened'}"
                f"; {recovered}; the burst took {self.elapsed:.1f}s)",
            ),
        ]

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)


class _BreakerLog(LifecycleHooks):
    def __init__(self, outcome: BurstOutcome, out: Callable[[str], None]) -> None:
        self.outcome = outcome
        self.out = out

    def on_breaker_change(self, change: BreakerChange) -> None:
        self.outcome.changes.append(change)
        reopen = ""
        if change.reopen_at is not None:
            reopen = f", next probe in {max(0.0, change.reopen_at - change.at):.1f}s"
        self.out(
            f"[{BURST}] breaker {change.route}: {change.source} -> {change.dest} "
            f"({change.trigger}, {change.failures} failures{reopen})"
        )


def run_burst(
    server: LoopbackServer,
    stale: float,
    out: Callable[[str], None],
    *,
    hooks: Sequence[LifecycleHooks],
    board: Board | None,
    recover_after: float = RECOVER_AFTER,
    limit: float = BURST_LIMIT,
) -> BurstOutcome:
    """Async runs, a few every 0.2 s, over [flaky Anthropic, healthy OpenAI]. The flaky
    provider answers 503, resets the connection or goes silent until ``recover_after``;
    its breaker opens after 3 failures (runs skip to the backup route meanwhile), a
    probe fails and reopens it with a longer cooldown, and a probe after the recovery
    closes it. Launching stops a moment after it closed, or at ``limit`` seconds."""
    outcome = BurstOutcome(recover_after=recover_after, limit=limit)
    stamp = time.monotonic_ns()
    flaky_key, backup_key = f"demo-burst-flaky-{stamp}", f"demo-burst-backup-{stamp}"
    broken: list[ServerFault] = [HttpError(status=503), DropAfterEvents(n=2), StallAfterHeaders()]
    server.script(flaky_key, broken * 60)
    server.script(backup_key, [Healthy(drip=0.05)] * 500)
    out(
        f"\n== {BURST}: {FLAKY_ROUTE} fails (503, TCP reset, silence) for {recover_after}s; "
        "its breaker opens, is probed and closes"
    )

    def client(cls: Any, base_url: str, key: str) -> Callable[[], Any]:
        headers = {"x-loopback-key": key}
        return lambda: cls(base_url=base_url, api_key="demo-key", default_headers=headers)

    routes: list[Route] = [
        AnthropicMessages(
            client(anthropic.AsyncAnthropic, server.anthropic_base_url, flaky_key),
            model="claude-demo",
            name=FLAKY_ROUTE,
        ),
        OpenAIChatCompletions(
            client(openai.AsyncOpenAI, server.openai_base_url, backup_key),
            model="gpt-demo",
            name=BACKUP_ROUTE,
        ),
    ]
    all_hooks: list[LifecycleHooks] = [*hooks, _BreakerLog(outcome, out)]
    if board is not None:
        all_hooks.append(InFlight(board, BURST))

    def closed_again() -> float | None:
        for change in reversed(outcome.changes):
            if change.route == FLAKY_ROUTE:
                return change.at if change.dest == "closed" else None
        return None

    async def one(engine: StreamEngine) -> None:
        run: AsyncRun = engine.astream(messages=[{"role": "user", "content": "Hi"}], max_tokens=64)
        try:
            async with run:
                async for _ in run:
                    pass
        except LifecycleError as exc:
            outcome.failures.append(f"{type(exc).__name__}: {exc}")
        outcome.states[run.state] += 1

    async def main() -> None:
        async with StreamEngine(
            routes=routes,
            timeouts=Timeouts(connect=5, first_token=stale, stale=stale, total=30),
            retry=RetryPolicy(max_attempts=2, initial_backoff=0.05, max_backoff=0.2),
            hooks=all_hooks,
            breaker=BreakerPolicy(
                failures_to_open=3, cooldown=1.0, cooldown_factor=2.0, max_cooldown=4.0
            ),
        ) as engine:
            if board is not None:
                board.always_shown.add(BURST)
                board.add_engine(BURST, engine)
            loop = asyncio.get_running_loop()
            began = loop.time()
            tasks: list[asyncio.Task[None]] = []
            recovered = False
            while True:
                now = loop.time() - began
                if not recovered and now >= recover_after:
                    server.script(flaky_key, [Healthy(drip=0.05)] * 500)
                    out(f"[{BURST}] {FLAKY_ROUTE} recovers at {now:.1f}s")
                    recovered = True
                closed_at = closed_again()
                if recovered and closed_at is not None and time.time() - closed_at > 0.6:
                    break
                if now > limit:
                    break
                wave = 4 if not tasks else 1
                tasks.extend(asyncio.create_task(one(engine)) for _ in range(wave))
                await asyncio.sleep(0.2)
            await asyncio.gather(*tasks)
        # The board keeps the engine: its breakers stay on the watch's last frame.

    started = time.monotonic()
    try:
        asyncio.run(main())
    except Exception as exc:  # the demo reports it; the verdict fails
        outcome.error = f"{type(exc).__name__}: {exc}"
        out(f"[{BURST}] failed: {outcome.error}")
    outcome.elapsed = time.monotonic() - started
    out(
        f"[{BURST}] {sum(outcome.states.values())} runs: {counts_text(dict(outcome.states))}; "
        f"breaker of {FLAKY_ROUTE}: {outcome.path}"
    )
    return outcome
