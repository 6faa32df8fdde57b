"""A shared client's retirement leaves the other runs on it alone, end to end.

Concurrent runs of a route share one SDK client (``ClientSlot``). When one run's attempt
drops, its cleanup retires the client: new attempts get a new one, and the runs still
streaming on the retired one must finish on it, their whole answers, no retry; the
retired client is closed once, by whichever of them releases it last, after they are done.
``tests/test_client_slots.py`` checks the slot's bookkeeping; this checks what the SDK
client and the streams really went through (``tests/real_closes.py``).
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import real_closes
from conftest import REQUEST, ProviderKit

from lifecycle import RetryPolicy, Timeouts
from providers.loopback import KEY_HEADER, DropAfterEvents, Healthy, recordings

TIMEOUTS = Timeouts(connect=5, first_token=3.0, stale=2.0, total=30)
RETRY = RetryPolicy(max_attempts=2, initial_backoff=0.0, max_backoff=0.0)
STREAM_SECONDS = 1.5
"""How long each of the other runs' answers takes to arrive (dripped evenly): A's drop
reaches its cleanup once they both have their first event, well inside their streams."""
OTHERS = ("b", "c")
WAIT = 10.0


@dataclass
class Caller:
    name: str
    run: Any = None
    received_at: list[float] = field(default_factory=list)
    text: str = ""
    error: BaseException | None = None
    first_event: threading.Event = field(default_factory=threading.Event)


def scripts(provider: ProviderKit) -> dict[str, list[Any]]:
    blocks = len(recordings.load(provider.name, "text_basic").blocks)  # type: ignore[arg-type]
    healthy = Healthy(drip=STREAM_SECONDS / blocks)
    return {"a": [DropAfterEvents(n=1), Healthy()], "b": [healthy], "c": [healthy]}


def test_other_runs_finish_on_a_shared_client_retired_under_them(provider: ProviderKit) -> None:
    real_closes.install()
    route = provider.route()
    engine = provider.engine(timeouts=TIMEOUTS, retry=RETRY, with_other=False)
    callers = {name: Caller(name) for name in ("a", *OTHERS)}
    for name, script in scripts(provider).items():
        provider.server.script(f"{provider.model}-{name}", script)

    def on_first_event(caller: Caller) -> None:
        caller.first_event.set()
        if caller.name == "a":
            # A reads on (and sees its connection reset) once its loop body returns: the
            # others are streaming on the same client by then.
            for other in OTHERS:
                assert callers[other].first_event.wait(WAIT), f"{other} never streamed"

    def request(name: str) -> dict[str, Any]:
        return REQUEST | {"extra_headers": {KEY_HEADER: f"{provider.model}-{name}"}}

    if provider.is_async:

        async def consume(caller: Caller) -> None:
            caller.run = engine.astream(**request(caller.name))
            async with caller.run:
                async for event in caller.run:
                    caller.received_at.append(time.monotonic())
                    caller.text = (
                        "" if event.type == "restart" else caller.text + (event.text or "")
                    )
                    if len(caller.received_at) == 1:
                        caller.first_event.set()
                        if caller.name == "a":
                            while not all(callers[o].first_event.is_set() for o in OTHERS):
                                await asyncio.sleep(0.01)

        async def everyone() -> None:
            first = asyncio.create_task(consume(callers["a"]), name="run-a")
            while not callers["a"].first_event.is_set():
                await asyncio.sleep(0.01)
            rest = [asyncio.create_task(consume(callers[o]), name=f"run-{o}") for o in OTHERS]
            await asyncio.gather(first, *rest)

        provider.run_coroutine(everyone())
        owners = {name: f"{threading.current_thread().name}/run-{name}" for name in callers}
    else:

        def consume_sync(caller: Caller) -> None:
            caller.run = engine.stream(**request(caller.name))
            with caller.run:
                for event in caller.run:
                    caller.received_at.append(time.monotonic())
                    caller.text = (
                        "" if event.type == "restart" else caller.text + (event.text or "")
                    )
                    if len(caller.received_at) == 1:
                        on_first_event(caller)

        threads = {
            n: threading.Thread(target=consume_sync, args=(c,), name=f"run-{n}")
            for n, c in callers.items()
        }
        threads["a"].start()
        assert callers["a"].first_event.wait(WAIT)
        for other in OTHERS:
            threads[other].start()
        for thread in threads.values():
            thread.join(30)
        owners = {name: f"run-{name}" for name in callers}

    a = callers["a"].run
    assert [attempt.outcome for attempt in a.attempts] == ["dropped", "completed"], a.attempts
    dropped = a.attempts[0]
    (close_step,) = [s for s in dropped.diagnostics.cleanup if s.step == "close"]
    retired_at = dropped.started_at + close_step.at
    for name in OTHERS:
        caller = callers[name]
        # The premise: this run was streaming when A's cleanup retired the client.
        assert caller.received_at[0] < retired_at, name
        assert caller.run.state == "completed", (name, caller.run.attempts)
        assert len(caller.run.attempts) == 1, (name, caller.run.attempts)
        assert caller.text == provider.text(), name
        assert caller.received_at[-1] > retired_at, f"{name} was done before the retirement"
    assert callers["a"].text == provider.text()

    slot = provider.clients(route)
    provider.settle()
    traces = real_closes.clients_of(slot)
    # The shared one, the spare that A's retry took, and the spare built after it.
    assert len(traces) == 3, [t.description for t in traces]
    closes = traces[0].closes()
    assert len(closes) == 1, closes
    (close,) = closes
    closer = close.thread if close.task is None else f"{close.thread}/{close.task}"
    assert closer in {owners[name] for name in OTHERS}, (closer, owners)
    assert close.at > max(callers[name].received_at[-1] for name in OTHERS)
    assert traces[1].closes() == [], "A's new client is the engine's to close"
    assert traces[2].closes() == [], "so is the spare"
    # What the engine recorded agrees (checked last: the checks above see what ran).
    assert "retired; closed by the last of 2 other run(s)" in close_step.detail, close_step
