"""The real engine as a Hypothesis state machine, sync and async, on the loopback server.

Each example builds one ``StreamEngine`` over two routes with different api_modes (in a
random order) and a random ``RetryPolicy``, then runs it a few times: each run gets a
random fault script, one fault per request (stalls after headers or after n events,
keep-alive pings only, a TCP reset after n events, HTTP 429/500/529/400/401, a malformed
event, a healthy stream), and maybe an ``interrupt()`` at a random moment (from a timer
thread, from the caller's loop body on its n-th event, or, async, from a loop callback).
The engine's client slots and pooled connections carry over from run to run: that is
the state. Every finished run must keep every invariant of ``tests/invariants.py``.

A failure shrinks to a short program whose notes give each run's fault script, its
interrupt and the path it took ("idle -> connecting (start_attempt) -> ..."), followed
by the invariant that broke and the run's records.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
from hypothesis import event, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    rule,
    run_state_machine_as_test,
)
from hypothesis_profiles import PROFILE, budget
from invariants import (
    Flavor,
    InvariantViolation,
    RunRecord,
    check_run,
    drive_async,
    drive_sync,
    interrupt_on_loop,
    make_routes,
    report,
    start_run,
)

from lifecycle import RetryPolicy, StreamEngine, StreamEvent, Timeouts
from providers.loopback import (
    DropAfterEvents,
    Healthy,
    HttpError,
    LoopbackServer,
    MalformedEvent,
    PingsOnly,
    StallAfterEvents,
    StallAfterHeaders,
)

pytestmark = pytest.mark.timeout(300)

FIRST_TOKEN = 0.3
STALE = 0.2

# Simplest first: Hypothesis shrinks towards the first alternative.
faults = st.one_of(
    st.just(Healthy()),
    st.builds(HttpError, status=st.sampled_from([500, 429, 529, 401, 400])),
    st.builds(DropAfterEvents, n=st.integers(0, 3)),
    st.builds(MalformedEvent, after_events=st.integers(0, 2)),
    st.builds(StallAfterEvents, n=st.integers(0, 3)),
    st.just(StallAfterHeaders()),
    st.builds(PingsOnly, interval=st.just(0.05), after_events=st.integers(0, 2)),
)
scripts = st.lists(faults, min_size=1, max_size=3)
"""One fault per request of the run, in order; once used up, requests get Healthy()."""

policies = st.builds(
    RetryPolicy,
    max_attempts=st.integers(1, 3),
    initial_backoff=st.sampled_from([0.0, 0.05]),
    max_backoff=st.just(0.1),
    jitter=st.sampled_from([0.0, 1.0]),
    on_partial=st.sampled_from(["restart", "fail"]),
)


def interrupts(flavor: Flavor) -> st.SearchStrategy[tuple[str, float] | None]:
    ways = ["timer", "on_event", *(["loop"] if flavor == "async" else [])]
    # two runs in three run to their end uninterrupted
    return st.one_of(st.none(), st.none(), st.tuples(st.sampled_from(ways), st.floats(0.0, 0.6)))


STATS: dict[str, Counter[str]] = {"sync": Counter(), "async": Counter()}
_keys = itertools.count()


class EngineMachine(RuleBasedStateMachine):
    """One engine, several runs; invariants checked on each finished run."""

    flavor: ClassVar[Flavor]
    server: ClassVar[LoopbackServer]

    def __init__(self) -> None:
        super().__init__()
        STATS[self.flavor]["examples"] += 1
        self.engine: StreamEngine | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.keys: list[str] = []
        self.runs = 0

    @initialize(
        order=st.sampled_from([("anthropic", "openai"), ("openai", "anthropic")]),
        retry=policies,
        total=st.sampled_from([3.0, 0.8]),
    )
    def build_engine(self, order: tuple[str, str], retry: RetryPolicy, total: float) -> None:
        self.engine = StreamEngine(
            routes=make_routes(self.server, self.flavor, order),
            timeouts=Timeouts(connect=0.8, first_token=FIRST_TOKEN, stale=STALE, total=total),
            retry=retry,
        )
        if self.flavor == "async":
            self.loop = asyncio.new_event_loop()

    @rule(script=scripts, interrupt=st.data())
    def run(self, script: list[Any], interrupt: st.DataObject) -> None:
        assert self.engine is not None
        plan = interrupt.draw(interrupts(self.flavor), label="interrupt")
        self.runs += 1
        key = f"engine-{self.flavor}-{next(_keys)}"
        self.keys.append(key)
        record = start_run(self.engine, self.server, key, self.flavor, script)
        on_event = None
        if plan is not None and plan[0] == "timer":
            record.interrupt_later(plan[1])
        elif plan is not None and plan[0] == "on_event":
            nth = 1 + int(plan[1] * 10) % 4

            def on_event(rec: RunRecord, ev: StreamEvent, nth: int = nth) -> None:
                if len(rec.seen) == nth:
                    rec.interrupt()

        if self.flavor == "sync":
            drive_sync(record, on_event)
        else:
            assert self.loop is not None
            self.loop.run_until_complete(self._drive(record, on_event, plan))
        note(
            f"run {self.runs} ({key}): script {script}, interrupt {plan}\n"
            f"  path: {record.path_text()}\n  error: {record.error!r}"
        )
        stats = STATS[self.flavor]
        stats["runs"] += 1
        stats[f"ended {record.run.state}"] += 1
        stats["attempts"] += len(record.run.attempts)
        event(f"{self.flavor} run ended {record.run.state}")
        event(f"{self.flavor} run made {len(record.run.attempts)} attempt(s)")
        check_run(record)

    async def _drive(self, record: RunRecord, on_event: Any, plan: Any) -> None:
        if plan is not None and plan[0] == "loop":
            handle = interrupt_on_loop(record, plan[1])
            try:
                await drive_async(record, on_event)
            finally:
                handle.cancel()
        else:
            await drive_async(record, on_event)

    def teardown(self) -> None:
        engine, loop = self.engine, self.loop
        if engine is not None:
            if loop is not None:
                loop.run_until_complete(engine.aclose())
            else:
                engine.close()
        if loop is not None:
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()
        keys = set(self.keys)
        server = self.server

        def left() -> list[Any]:
            return [c for c in server.connection_log if c.closed_at is None and keys & set(c.keys)]

        server.wait_until(lambda: not left(), timeout=2.0)
        if left():
            raise InvariantViolation(
                [("connections", f"engine closed, connections still open: {left()}")]
            )


class SyncEngineMachine(EngineMachine):
    flavor = "sync"


class AsyncEngineMachine(EngineMachine):
    flavor = "async"


MACHINES: dict[str, type[EngineMachine]] = {"sync": SyncEngineMachine, "async": AsyncEngineMachine}


def run_engine_machine(server: LoopbackServer, flavor: Flavor, **overrides: Any) -> None:
    machine = MACHINES[flavor]
    machine.server = server
    chosen: dict[str, Any] = {
        "max_examples": budget("engine"),
        "stateful_step_count": budget("engine_steps"),
        "deadline": None,
    }
    run_state_machine_as_test(machine, settings=settings(**(chosen | overrides)))


@pytest.fixture(scope="module")
def counts(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    lines = []
    for flavor, stats in STATS.items():
        if not stats["examples"]:
            continue
        ended = ", ".join(
            f"{stats[f'ended {s}']} {s}" for s in ("completed", "failed", "cancelled")
        )
        lines.append(
            f"test_stateful_engine ({PROFILE} profile, {flavor}): max_examples="
            f"{budget('engine')}, {stats['examples']} state machines run, {stats['runs']} "
            f"runs ({ended}), {stats['attempts']} attempts"
        )
    report(request.config, lines)


@pytest.mark.parametrize("flavor", ["sync", "async"])
def test_the_engine_keeps_every_invariant(
    server: LoopbackServer, flavor: Flavor, counts: None
) -> None:
    run_engine_machine(server, flavor)
