"""Many runs with random faults on both providers, then nothing may be left behind:
no open connection at the server, no unclosed client, no thread but the one watchdog.

Every run's scripts decide it completely: which requests it sends, to which route, what
each attempt ends as, and whether the run completes. The soak demands exactly that, so
a retry or failure the scripts did not cause (a client closed under another run, a
leaked stall) fails it rather than passing as "one of the random faults". The breakers
are kept from opening (their verdicts are still recorded): an open breaker would make a
run's route depend on the runs before it, and on the clock (tests/test_breaker.py owns
that)."""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from lifecycle import BreakerPolicy, RetryPolicy, StreamEngine, StreamFailed, Timeouts
from providers.loopback import (
    DropAfterEvents,
    Healthy,
    HttpError,
    LoopbackServer,
    MalformedEvent,
    PingsOnly,
    StallAfterEvents,
    StallBeforeHeaders,
    recordings,
)

pytestmark = pytest.mark.timeout(120)

SEED = 20_240_611
RUNS = 200
# Clocks of half a second: an HTTP error or a healthy event can take a few hundred
# milliseconds to arrive on a loaded 2-core machine, and must not be taken for a stall.
TIMEOUTS = Timeouts(connect=2, first_token=0.5, stale=0.5, total=10)
RETRY = RetryPolicy(max_attempts=2, initial_backoff=0.005, max_backoff=0.01)
BREAKER = BreakerPolicy(failures_to_open=1_000_000)
WATCHDOG = "lifecycle-watchdog"
KEY_HEADER = "x-loopback-key"

OUTCOME_OF_FAULT: dict[type, str] = {
    Healthy: "completed",
    StallAfterEvents: "stale",
    StallBeforeHeaders: "stale",
    PingsOnly: "stale",
    DropAfterEvents: "dropped",
    MalformedEvent: "dropped",
    HttpError: "error",
}
"""What an attempt served each fault ends as (every one is worth a retry)."""


def random_fault(rng: random.Random) -> Any:
    kind = rng.choices(
        ["healthy", "stall_after", "stall_before", "pings", "drop", "http", "malformed"],
        weights=[4, 1, 1, 1, 1, 3, 1],
    )[0]
    if kind == "healthy":
        return Healthy()
    if kind == "stall_after":
        return StallAfterEvents(n=rng.randint(0, 3))
    if kind == "stall_before":
        return StallBeforeHeaders()
    if kind == "pings":
        return PingsOnly(interval=0.05, after_events=rng.randint(0, 2))
    if kind == "drop":
        return DropAfterEvents(n=rng.randint(0, 3))
    if kind == "malformed":
        return MalformedEvent(after_events=rng.randint(0, 2))
    return HttpError(status=rng.choice([529, 500, 429]))


@pytest.fixture
def soak_server(server: LoopbackServer) -> Iterator[LoopbackServer]:
    """A server of its own, so "no open connection" is about this test alone. (The
    session ``server`` is requested for its warm-up: an SDK's first request in a process
    imports parts of it, which would eat into a 0.2 s first_token clock.)"""
    with LoopbackServer() as srv:
        yield srv


class Side:
    """One provider's route in the soak, with every client its factory built."""

    def __init__(self, provider: str, server: LoopbackServer, model: str) -> None:
        import anthropic
        import openai

        from providers import AnthropicMessages, OpenAIChatCompletions

        self.provider = provider
        self.model = model
        self.built: list[Any] = []
        self.faulted = 0
        """Attempts on this route that ended in a fault."""
        self.spare_left = False
        """The route's spare is built and unused after the route's last attempt."""
        self.text = recordings.load(provider, "text_basic").text()  # type: ignore[arg-type]
        if provider == "anthropic":

            def factory() -> Any:
                client = anthropic.Anthropic(base_url=server.anthropic_base_url, api_key="test")
                self.built.append(client)
                return client

            self.route: Any = AnthropicMessages(factory, model=model)
        else:

            def factory() -> Any:
                client = openai.OpenAI(base_url=server.openai_base_url, api_key="test")
                self.built.append(client)
                return client

            self.route = OpenAIChatCompletions(factory, model=model)


def expected_attempts(primary: list[Any], fallback: list[Any]) -> list[tuple[int, Any]]:
    """(route index, fault served) for each attempt a run sends when its primary's
    requests take faults from ``primary`` and its fallback's from ``fallback`` (one list
    twice for a script both routes share): ``RETRY.max_attempts`` on the primary, then as
    many on the fallback, until one is served ``Healthy`` (what an exhausted script
    serves). A stall on the primary moves to the fallback at once (the default
    ``stale_before_fallback=1``); on the fallback, the last route, it is retried."""
    queues = (list(primary), list(fallback)) if primary is not fallback else (list(primary),) * 2
    attempts: list[tuple[int, Any]] = []
    for route_index, queue in enumerate(queues):
        for _ in range(RETRY.max_attempts):
            fault = queue.pop(0) if queue else Healthy()
            attempts.append((route_index, fault))
            if isinstance(fault, Healthy):
                return attempts
            if OUTCOME_OF_FAULT[type(fault)] == "stale" and route_index < len(queues) - 1:
                break
    return attempts


def check_run(
    run: Any,
    events: list[Any],
    error: BaseException | None,
    sides: dict[int, Side],
    me: str,
    expected: list[tuple[int, Any]],
    served: list[Any],
) -> None:
    """``expected`` is ``expected_attempts`` for the run's scripts; ``served`` the server's
    records of the run's requests, in order."""
    want = [(route, OUTCOME_OF_FAULT[type(fault)]) for route, fault in expected]
    got = [(a.route_index, a.outcome) for a in run.attempts]
    assert got == want, f"scripted {expected}, ran {[a.as_dict() for a in run.attempts]}"
    assert [(r.model, r.fault) for r in served] == [
        (sides[route].model, fault) for route, fault in expected
    ], "each attempt sent one request, to its route, and was served its scripted fault"
    assert all(a.panic is False and a.probe is False for a in run.attempts)
    history = run.history
    assert history and history[0].source == "idle"
    for a, b in itertools.pairwise(history):
        assert a.dest == b.source
    attempts = run.attempts
    for attempt in attempts[:-1]:
        steps = attempt.diagnostics.cleanup
        names = [s.step for s in steps]
        assert "close" in names and "rebuild" in names, steps
        assert all(s.thread in (me, WATCHDOG) for s in steps if s.step == "abort"), steps
        assert all(s.thread == me for s in steps if s.step != "abort"), steps
    types = [e.type for e in events]
    for i, kind in enumerate(types):
        if kind == "restart":
            assert i + 1 < len(types) and types[i + 1] != "restart"
    if len(attempts) == 1:
        assert "restart" not in types, "one attempt: nothing to restart"
    if isinstance(expected[-1][1], Healthy):
        assert error is None, repr(error)
        assert run.state == "completed"
        final = attempts[-1]
        assert final.outcome == "completed"
        expected = sides[final.route_index].text
        assert run.message.text == expected
        last_restart = max((i for i, t in enumerate(types) if t == "restart"), default=-1)
        tail = events[last_restart + 1 :]
        assert "".join(e.text for e in tail if e.type == "text") == expected
        assert tail[-1].type == "stop"
    else:
        assert isinstance(error, StreamFailed), repr(error)
        assert run.state == "failed"


def test_soak_random_faults_leave_nothing_behind(soak_server: LoopbackServer) -> None:
    rng = random.Random(SEED)
    me = threading.current_thread().name
    engines: list[tuple[StreamEngine, dict[int, Side]]] = []
    for primary, secondary in (("anthropic", "openai"), ("openai", "anthropic")):
        sides = {
            0: Side(primary, soak_server, f"{primary}-soak-primary"),
            1: Side(secondary, soak_server, f"{secondary}-soak-fallback"),
        }
        engine = StreamEngine(
            routes=[sides[0].route, sides[1].route],
            timeouts=TIMEOUTS,
            retry=RETRY,
            breaker=BREAKER,
        )
        engines.append((engine, sides))
    outcomes = {"completed": 0, "failed": 0}
    faults_seen: dict[str, int] = {}
    started = time.monotonic()
    try:
        for _ in range(RUNS):
            engine, sides = rng.choice(engines)
            primary_faults = [random_fault(rng) for _ in range(rng.randint(0, 2))]
            fallback_faults = [random_fault(rng) for _ in range(rng.randint(0, 2))]
            for fault in primary_faults + fallback_faults:
                faults_seen[type(fault).__name__] = faults_seen.get(type(fault).__name__, 0) + 1
            soak_server.script(sides[0].model, primary_faults)
            soak_server.script(sides[1].model, fallback_faults)
            expected = expected_attempts(primary_faults, fallback_faults)
            before = soak_server.requests_received
            events: list[Any] = []
            error: BaseException | None = None
            with engine.stream(messages=[{"role": "user", "content": "Hi"}], max_tokens=64) as run:
                try:
                    for event in run:
                        events.append(event)
                except StreamFailed as exc:
                    error = exc
            # One request per attempt, none after the run ended.
            assert soak_server.requests_received - before == len(run.attempts)
            served = list(soak_server.requests[before:])
            check_run(run, events, error, sides, me, expected, served)
            outcomes[run.state] += 1
            for attempt in run.attempts:
                side = sides[attempt.route_index]
                # Once its request is out, the builder makes the route's spare (if it
                # has none); a fault's cleanup moves the spare in, unless deferred.
                side.spare_left = True
                if attempt.outcome != "completed":
                    side.faulted += 1
                    if any(
                        step.step == "rebuild" and "generation" in step.detail
                        for step in attempt.diagnostics.cleanup
                    ):
                        side.spare_left = False
    finally:
        for engine, _ in engines:
            engine.close()
    elapsed = time.monotonic() - started
    assert soak_server.wait_idle(5.0), f"{soak_server.open_connections} connections left open"
    assert soak_server.open_connections == 0
    for _, sides in engines:
        for side in sides.values():
            # The first client, one successor per attempt that ended in a fault (its
            # cleanup retires the client and the spare takes its place), and the spare
            # left at the end: no more.
            expected = 1 + side.faulted + side.spare_left
            assert len(side.built) == expected, (side.model, side.faulted, side.spare_left)
            assert all(client.is_closed() for client in side.built)
    watchdogs = [t for t in threading.enumerate() if t.name == WATCHDOG]
    assert len(watchdogs) == 1
    # The mix really was mixed.
    assert outcomes["completed"] > RUNS // 2
    assert outcomes["failed"] > 0
    assert len(faults_seen) == 7, faults_seen
    print(f"soak: {RUNS} runs in {elapsed:.1f}s, {outcomes}, faults {faults_seen}")


def test_soak_concurrent_runs_share_clients_safely(soak_server: LoopbackServer) -> None:
    """Runs on several threads share each route's client; a fault in one run retires the
    shared client while the others still stream on it. Every client ends closed, by the
    last run to release it, and nothing is left open."""
    sides = {
        0: Side("anthropic", soak_server, "anthropic-soak-shared"),
        1: Side("openai", soak_server, "openai-soak-shared"),
    }
    engine = StreamEngine(
        routes=[sides[0].route, sides[1].route], timeouts=TIMEOUTS, retry=RETRY, breaker=BREAKER
    )
    failures: list[BaseException] = []
    runs_checked: list[str] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        me = threading.current_thread().name
        try:
            for _ in range(12):
                # The worker's own script (its requests carry its key, on either route),
                # so its runs are decided by it alone while they share the clients.
                faults = [random_fault(rng) for _ in range(4)]
                soak_server.script(me, faults)
                expected = expected_attempts(faults, faults)
                events: list[Any] = []
                error: BaseException | None = None
                with engine.stream(
                    messages=[{"role": "user", "content": "Hi"}],
                    max_tokens=64,
                    extra_headers={KEY_HEADER: me},
                ) as run:
                    try:
                        for event in run:
                            events.append(event)
                            time.sleep(rng.random() * 0.002)
                    except StreamFailed as exc:
                        error = exc
                served = [r for r in soak_server.requests if r.key == me][-len(run.attempts) :]
                check_run(run, events, error, sides, me, expected, served)
                runs_checked.append(run.state)
        except BaseException as exc:
            failures.append(exc)

    threads = [
        threading.Thread(target=worker, args=(SEED + i,), name=f"soak-worker-{i}") for i in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(t.is_alive() for t in threads)
    engine.close()
    if failures:
        raise failures[0]
    assert len(runs_checked) == 4 * 12
    assert soak_server.wait_idle(5.0), f"{soak_server.open_connections} connections left open"
    for side in sides.values():
        assert all(client.is_closed() for client in side.built)
