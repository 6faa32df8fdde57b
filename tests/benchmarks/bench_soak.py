"""Soak: mixed faults with forks, engine closes and thread-pool consumption, for a bounded
time, then an account of everything that must never happen.

Not a test: it prints figures. Run from the repository root:

    python tests/benchmarks/bench_soak.py [--seconds 60] [--seed 1] [--runs-per-round 12]

Each round builds a fresh ``StreamEngine`` over the three wire APIs with opaque random
API keys (``gsk_...``, ``AIza...``, plain tokens: no key shape a pattern would know), and
starts runs whose faults are drawn at random (stalls before and after the headers, pings
only, drops, 529/500/429, a 401 whose body echoes a key, an in-stream error event that
echoes one). Runs are consumed three ways: on a thread of their own, one ``next()`` at a
time from a shared thread pool (as Starlette's ``StreamingResponse`` drives a sync
generator), and as async runs on an event loop thread. While they stream, the round may
``fork()`` (the child streams on the inherited engine and reports) and may call
``engine.close()`` / ``engine.aclose()`` from the main thread.

The loopback server runs in a process of its own, so a forked child inherits none of its
sockets and "left open" is what the server itself still holds.

What is counted, from the outside (the engine's own records are not trusted here):

- requests after close: HTTP requests *written* (a request line that ``socket.send`` /
  ``sendall``, patched at the class, handed to the kernel: a write an abort's shutdown
  refused sent nothing) by an engine after its ``close()`` returned. Printed apart, not
  a must-be-0 figure: requests whose write began while ``close()`` was running. The
  engine checks its closing mark just before each write, so such a write passed that
  check before the mark was set, and its syscall began a moment later (up to a GIL
  switch interval): it is concurrent with the call, not after it;
- connections left open: connections the server still has open when every round is over
  and every engine closed (after waiting up to 10 s for it to see the closes);
- foreign-thread closes: ``socket.close()`` on the watchdog thread, or while another thread
  is blocked reading that socket (the descriptor-reuse hazard), in the parent or a child,
  plus any close or shutdown in a forked child of a socket the parent opened;
- secrets found: outputs holding a key or any 8-character piece of one: ``str``, ``repr``
  and traceback of every exception, ``run.attempts``, the recorder's JSON lines, and every
  log record (the ``lifecycle`` logger, and the SDKs' and HTTP libraries' loggers at DEBUG
  with ``lifecycle.SecretsFilter`` installed as the README says, where it exists).

A figure that must be 0 and is not is printed with ``<- must be 0`` and the exit status is 1.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import os
import random
import select
import signal
import socket
import string
import subprocess
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anthropic
import openai

import lifecycle
from lifecycle import RetryPolicy, StreamEngine, Timeouts
from lifecycle.record import TransitionRecorder
from providers import AnthropicMessages, OpenAIChatCompletions, OpenAIResponses

ROOT = Path(__file__).resolve().parents[2]
WATCHDOG = "lifecycle-watchdog"
MESSAGES = [{"role": "user", "content": "Hi"}]
TIMEOUTS = Timeouts(connect=2, first_token=0.3, stale=0.3, total=6)
RETRY = RetryPolicy(max_attempts=2, initial_backoff=0.005, max_backoff=0.02)
CHILD_CAP = 30.0
RUN_CAP = 60.0
"""Seconds a forked child or a run may take before it counts as blocked."""
SDK_LOGGERS = ("anthropic", "openai", "httpx", "httpx2", "httpcore", "httpcore2")

SERVER_CHILD = r"""
import json, sys, threading
from providers.loopback import LoopbackServer, RawResponse, parse_script

server = LoopbackServer()

def control():
    for line in sys.stdin:
        cmd, _, rest = line.strip().partition(" ")
        if cmd == "script":
            key, _, text = rest.partition(" ")
            server.script(key, parse_script(text))
        elif cmd == "raw":
            key, _, spec = rest.partition(" ")
            spec = json.loads(spec)
            server.script(key, [RawResponse(
                status=spec["status"],
                headers=(("content-type", spec["content_type"]),),
                body=spec["body"].encode(),
                end=spec["end"],
            )])
        elif cmd == "settle":
            server.wait_idle(float(rest))
        print("ok " + json.dumps({"open": server.open_connections,
                                   "requests": server.requests_received}), flush=True)

threading.Thread(target=control, daemon=True).start()
server.serve_forever()
"""


class ServerProcess:
    def __init__(self) -> None:
        env = dict(
            os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVER_CHILD],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.startswith("listening on "):
            raise RuntimeError(f"server did not start: {line!r}")
        self.url = line.removeprefix("listening on ")
        self.port = int(self.url.rsplit(":", 1)[1].strip("/"))
        self.lock = threading.Lock()

    def command(self, line: str) -> dict[str, int]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        with self.lock:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
            reply = self.proc.stdout.readline().strip()
        if not reply.startswith("ok "):
            raise RuntimeError(f"server control: {reply!r}")
        result: dict[str, int] = json.loads(reply[3:])
        return result

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# -- what the sockets really did --------------------------------------------------------


@dataclass
class SocketWatch:
    """Class-level patches of ``socket.socket``: who closes what, who writes requests when."""

    port: int
    lock: threading.Lock = field(default_factory=threading.Lock)
    reading: dict[int, int] = field(default_factory=dict)
    """id(socket) -> ident of the thread blocked in recv on it."""
    ours: weakref.WeakSet[socket.socket] = field(default_factory=weakref.WeakSet)
    """The client sockets connected to the server in this process (weakly: an id() of a
    freed socket is reused by the next one, and would pass for it)."""
    inherited: list[socket.socket] = field(default_factory=list)
    """In a forked child: the parent's sockets, which the child must never touch."""
    request_writes: list[tuple[float, int]] = field(default_factory=list)
    """(monotonic time, id(socket)) of every request line written."""
    foreign_closes: list[str] = field(default_factory=list)

    def install(self) -> None:
        watch = self
        original_connect = socket.socket.connect
        original_connect_ex = socket.socket.connect_ex
        original_close = socket.socket.close
        original_shutdown = socket.socket.shutdown
        original_send = socket.socket.send
        original_sendall = socket.socket.sendall
        original_recv = socket.socket.recv
        original_recv_into = socket.socket.recv_into

        def note_connect(self: socket.socket, address: Any) -> None:
            if isinstance(address, tuple) and address[1:2] == (watch.port,):
                with watch.lock:
                    watch.ours.add(self)

        def connect(self: socket.socket, address: Any) -> None:
            note_connect(self, address)
            return original_connect(self, address)

        # The sync transport connects without blocking (so that an abort can reach a hanging
        # connect): connect_ex, which a patch of connect alone would never see.
        def connect_ex(self: socket.socket, address: Any) -> int:
            note_connect(self, address)
            return original_connect_ex(self, address)

        def note_write(self: socket.socket, data: Any, started: float) -> None:
            if self in watch.ours and bytes(data[:5]) == b"POST ":
                with watch.lock:
                    watch.request_writes.append((started, id(self)))

        # Timed when the write starts (the thread may wait for the GIL after it, for up to
        # the switch interval), noted once the kernel took the bytes: a write refused
        # because an abort shut the socket down (EPIPE) sent nothing.
        def send(self: socket.socket, data: Any, *args: Any) -> int:
            started = time.monotonic()
            sent = original_send(self, data, *args)
            note_write(self, data, started)
            return sent

        def sendall(self: socket.socket, data: Any, *args: Any) -> None:
            started = time.monotonic()
            original_sendall(self, data, *args)
            note_write(self, data, started)

        def reader(original: Callable[..., Any]) -> Callable[..., Any]:
            def read(self: socket.socket, *args: Any) -> Any:
                if self not in watch.ours or self.gettimeout() == 0.0:
                    return original(self, *args)
                with watch.lock:
                    watch.reading[id(self)] = threading.get_ident()
                try:
                    return original(self, *args)
                finally:
                    with watch.lock:
                        watch.reading.pop(id(self), None)

            return read

        def check(self: socket.socket, what: str) -> None:
            key = id(self)
            if any(self is parents for parents in watch.inherited):
                watch.foreign_closes.append(f"{what} of a parent's socket in a forked child")
                return
            if what != "close" or self not in watch.ours:
                return
            me = threading.current_thread()
            with watch.lock:
                blocked = watch.reading.get(key)
            if me.name == WATCHDOG:
                watch.foreign_closes.append("close on the watchdog thread")
            elif blocked is not None and blocked != me.ident:
                watch.foreign_closes.append(f"close on {me.name} while another thread reads")

        def close(self: socket.socket) -> None:
            check(self, "close")
            original_close(self)

        def shutdown(self: socket.socket, how: int) -> None:
            check(self, "shutdown")
            original_shutdown(self, how)

        socket.socket.connect = connect  # type: ignore[method-assign]
        socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]
        socket.socket.close = close  # type: ignore[method-assign]
        socket.socket.shutdown = shutdown  # type: ignore[method-assign]
        socket.socket.send = send  # type: ignore[method-assign]
        socket.socket.sendall = sendall  # type: ignore[method-assign]
        socket.socket.recv = reader(original_recv)  # type: ignore[method-assign]
        socket.socket.recv_into = reader(original_recv_into)  # type: ignore[method-assign]


# -- secrets ----------------------------------------------------------------------------


def opaque_key(rng: random.Random) -> str:
    alphabet = string.ascii_letters + string.digits
    body = "".join(rng.choice(alphabet) for _ in range(40))
    return rng.choice(["gsk_", "AIza", "", "tok-"]) + body


def pieces(key: str, width: int = 8) -> set[str]:
    return {key[i : i + width] for i in range(len(key) - width + 1)}


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.lock_ = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception:  # a record that cannot be formatted is still output
            text = repr(record.__dict__)
        with self.lock_:
            self.lines.append(text)


# -- one round --------------------------------------------------------------------------


@dataclass
class Totals:
    runs: int = 0
    completed: int = 0
    failed: int = 0
    closed_by_engine_close: int = 0
    other_errors: list[str] = field(default_factory=list)
    by_mode: dict[str, int] = field(default_factory=dict)
    forks: int = 0
    child_runs: int = 0
    child_failures: list[str] = field(default_factory=list)
    closes: int = 0
    blocked: int = 0
    requests_after_close: int = 0
    requests_during_close: int = 0
    late_writes: list[tuple[str, float, str]] = field(default_factory=list)
    """("was called" | "returned", seconds after it, the round's driver) of each request
    written after close."""
    texts: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)


FAULTS = [
    ("healthy", 5),
    ("stall_after:1", 1),
    ("stall_before_headers", 1),
    ("pings", 1),
    ("drop_after:1", 1),
    ("http:529", 1),
    ("http:500", 1),
    ("http:429", 1),
    ("echo401", 1),
    ("echo_event", 1),
]


def script_run(server: ServerProcess, key: str, rng: random.Random, secret: str) -> None:
    names, weights = zip(*FAULTS, strict=True)
    fault = rng.choices(names, weights=weights)[0]
    if fault == "echo401":
        body = json.dumps(
            {
                "type": "error",
                "error": {"type": "authentication_error", "message": f"bad key {secret}"},
            }
        )
        spec = {"status": 401, "content_type": "application/json", "body": body, "end": "complete"}
        server.command(f"raw {key} {json.dumps(spec)}")
    elif fault == "echo_event":
        event = json.dumps(
            {"type": "error", "error": {"type": "overloaded_error", "message": f"for {secret}"}}
        )
        spec = {
            "status": 200,
            "content_type": "text/event-stream",
            "body": f"event: error\ndata: {event}\n\n",
            "end": "complete",
        }
        server.command(f"raw {key} {json.dumps(spec)}")
    else:
        server.command(f"script {key} {fault},healthy")


def make_engine(
    server: ServerProcess, keys: list[str], asynchronous: bool, hooks: list[Any]
) -> StreamEngine:
    base = server.url.rstrip("/")
    a_key, c_key, r_key = keys
    if asynchronous:
        routes = [
            AnthropicMessages(
                lambda: anthropic.AsyncAnthropic(base_url=base, api_key=a_key, max_retries=0),
                model="soak",
            ),
            OpenAIChatCompletions(
                lambda: openai.AsyncOpenAI(base_url=base + "/v1", api_key=c_key, max_retries=0),
                model="soak",
            ),
            OpenAIResponses(
                lambda: openai.AsyncOpenAI(base_url=base + "/v1", api_key=r_key, max_retries=0),
                model="soak",
            ),
        ]
    else:
        routes = [
            AnthropicMessages(
                lambda: anthropic.Anthropic(base_url=base, api_key=a_key, max_retries=0),
                model="soak",
            ),
            OpenAIChatCompletions(
                lambda: openai.OpenAI(base_url=base + "/v1", api_key=c_key, max_retries=0),
                model="soak",
            ),
            OpenAIResponses(
                lambda: openai.OpenAI(base_url=base + "/v1", api_key=r_key, max_retries=0),
                model="soak",
            ),
        ]
    return StreamEngine(routes=routes, timeouts=TIMEOUTS, retry=RETRY, hooks=hooks)


def account(totals: Totals, run: Any, exc: BaseException | None, engine_closed: bool) -> None:
    totals.runs += 1
    if exc is None and getattr(run, "state", None) == "completed":
        totals.completed += 1
    elif exc is not None:
        totals.texts += [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
        if engine_closed and isinstance(exc, lifecycle.LifecycleError):
            totals.closed_by_engine_close += 1
        elif isinstance(exc, lifecycle.LifecycleError):
            totals.failed += 1
        else:
            totals.other_errors.append(f"{type(exc).__name__}: {exc}")
    if run is not None:
        totals.texts.append(repr(getattr(run, "attempts", ())))


def consume_on_thread(engine: StreamEngine, key: str) -> tuple[Any, BaseException | None]:
    run = None
    try:
        run = engine.stream(messages=MESSAGES, max_tokens=64, extra_headers={"x-loopback-key": key})
        with run:
            for _ in run:
                pass
        return run, None
    except Exception as exc:
        return run, exc


def consume_from_pool(
    engine: StreamEngine, key: str, pool: ThreadPoolExecutor
) -> tuple[Any, BaseException | None]:
    """One ``next()`` per pool task, so consecutive steps land on different threads."""
    run = None
    try:
        run = engine.stream(messages=MESSAGES, max_tokens=64, extra_headers={"x-loopback-key": key})
        iterator: Iterator[Any] = iter(run)
        while True:
            step = pool.submit(next, iterator, None).result()
            if step is None:
                break
        return run, None
    except Exception as exc:
        return run, exc


async def consume_async(engine: StreamEngine, key: str) -> tuple[Any, BaseException | None]:
    run = None
    try:
        run = engine.astream(
            messages=MESSAGES, max_tokens=64, extra_headers={"x-loopback-key": key}
        )
        async with run:
            async for _ in run:
                pass
        return run, None
    except Exception as exc:
        return run, exc


def fork_child(
    engine: StreamEngine,
    watch: SocketWatch,
    keys: list[str],
    server: ServerProcess,
    rng: random.Random,
    round_no: int,
) -> tuple[int, list[str], list[str]]:
    """Fork while the parent streams; the child streams twice on the inherited engine."""
    read_end, write_end = os.pipe()
    child_keys = [f"r{round_no}-child-{i}" for i in range(2)]
    for key in child_keys:
        server.command(f"script {key} healthy")
    pid = os.fork()
    if pid == 0:  # the child: report through the pipe, never return into the parent's code
        os.close(read_end)
        report: dict[str, Any] = {"completed": 0, "failures": [], "texts": []}
        try:
            # Held, so that none is freed in the child and its id() or address reused.
            watch.inherited = list(watch.ours)
            watch.foreign_closes.clear()
            for key in child_keys:
                run, exc = consume_on_thread(engine, key)
                if exc is None and run is not None and run.state == "completed":
                    report["completed"] += 1
                else:
                    report["failures"].append(
                        f"{type(exc).__name__}: {exc}" if exc else str(run.state)
                    )
                if exc is not None:
                    report["texts"] += [str(exc), "".join(traceback.format_exception(exc))]
            engine.close()
        except BaseException as exc:
            report["failures"].append(f"child crashed: {type(exc).__name__}: {exc}")
        report["foreign"] = list(watch.foreign_closes)
        with os.fdopen(write_end, "w") as out:
            json.dump(report, out)
        os._exit(0)
    os.close(write_end)
    raw = b""
    cap = time.monotonic() + CHILD_CAP
    with os.fdopen(read_end, "rb") as inp:
        while time.monotonic() < cap:
            ready, _, _ = select.select([inp], [], [], max(0.0, cap - time.monotonic()))
            if not ready:
                break
            chunk = os.read(inp.fileno(), 65536)
            if not chunk:
                break
            raw += chunk
    done, _ = os.waitpid(pid, os.WNOHANG)
    if done == 0:  # still running at the cap: a hung child (ours, by PID)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    if raw:
        report = json.loads(raw)
    else:
        report = {
            "completed": 0,
            "failures": [f"child still blocked after {CHILD_CAP:.0f} s (killed)"],
            "foreign": [],
            "texts": [],
        }
    watch.foreign_closes.extend(f"child: {x}" for x in report["foreign"])
    return report["completed"], report["failures"], report["texts"]


def run_round(
    round_no: int,
    server: ServerProcess,
    watch: SocketWatch,
    rng: random.Random,
    totals: Totals,
    runs_per_round: int,
    pool: ThreadPoolExecutor,
    recorder: TransitionRecorder,
) -> None:
    keys = [opaque_key(rng) for _ in range(3)]
    totals.keys += keys
    asynchronous = rng.random() < 0.3
    engine = make_engine(server, keys, asynchronous, [recorder])
    run_keys = [f"r{round_no}-{i}" for i in range(runs_per_round)]
    # The echoed key is the primary route's: a provider echoes the key it was sent, and a
    # run's first request goes to the primary, or, once the primary's breaker is open, to
    # a route tried after it, by which time the primary's key is known too. (A key of a
    # route whose client was never built is in no process memory but the factory's.)
    for key in run_keys:
        script_run(server, key, rng, keys[0])
    results: list[tuple[Any, BaseException | None]] = []
    results_lock = threading.Lock()
    will_close = rng.random() < 0.5
    will_fork = not asynchronous and rng.random() < 0.3
    closed_at: list[float] = []

    def keep(result: tuple[Any, BaseException | None]) -> None:
        with results_lock:
            results.append(result)

    def consume_and_keep(key: str, mode: str) -> None:
        if mode == "pool":
            keep(consume_from_pool(engine, key, pool))
        else:
            keep(consume_on_thread(engine, key))

    threads: list[threading.Thread] = []
    loop: asyncio.AbstractEventLoop | None = None
    futures: list[Any] = []
    if asynchronous:
        loop = asyncio.new_event_loop()
        loop_thread = threading.Thread(target=loop.run_forever, name="soak-loop", daemon=True)
        loop_thread.start()
        futures = [
            asyncio.run_coroutine_threadsafe(consume_async(engine, key), loop) for key in run_keys
        ]
    else:
        for i, key in enumerate(run_keys):
            mode = "pool" if i % 2 else "thread"
            totals.by_mode[mode] = totals.by_mode.get(mode, 0) + 1
            thread = threading.Thread(target=consume_and_keep, args=(key, mode), name=f"soak-{key}")
            threads.append(thread)
            thread.start()
    if asynchronous:
        totals.by_mode["async"] = totals.by_mode.get("async", 0) + len(run_keys)

    time.sleep(rng.uniform(0.02, 0.4))
    if will_fork:
        _, failures, texts = fork_child(engine, watch, keys, server, rng, round_no)
        totals.forks += 1
        totals.child_runs += 2
        totals.child_failures += failures
        totals.texts += texts
    if will_close:
        if loop is not None:

            async def close_on_loop() -> None:
                # Timed on the loop: aclose() starts when the loop gets to it, not when
                # this thread hands it over.
                closed_at.append(time.monotonic())
                await engine.aclose()

            asyncio.run_coroutine_threadsafe(close_on_loop(), loop).result(30)
        else:
            closed_at.append(time.monotonic())
            engine.close()
        closed_at.append(time.monotonic())
        totals.closes += 1
    cap = time.monotonic() + RUN_CAP
    if loop is not None:
        for future in futures:
            try:
                keep(future.result(max(0.0, cap - time.monotonic())))
            except TimeoutError:
                totals.blocked += 1
    for thread in threads:
        thread.join(max(0.0, cap - time.monotonic()))
        totals.blocked += thread.is_alive()
    if not will_close:
        if loop is not None:
            asyncio.run_coroutine_threadsafe(engine.aclose(), loop).result(30)
        else:
            engine.close()
    if loop is not None:
        loop.call_soon_threadsafe(loop.stop)
        loop_thread.join(10)
        if not loop.is_running():
            loop.close()
    if closed_at:
        called, returned = closed_at
        with watch.lock:
            late = [at for at, _ in watch.request_writes if at > called]
        totals.requests_after_close += sum(1 for at in late if at > returned)
        totals.requests_during_close += sum(1 for at in late if at <= returned)
        driver = "async" if asynchronous else "sync"
        totals.late_writes += [
            ("returned", at - returned, driver)
            if at > returned
            else ("was called", at - called, driver)
            for at in late
        ]
    with watch.lock:
        watch.request_writes.clear()
    for run, exc in results:
        account(totals, run, exc, engine_closed=bool(closed_at))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--runs-per-round", type=int, default=12)
    args = parser.parse_args()
    rng = random.Random(args.seed)

    server = ServerProcess()
    watch = SocketWatch(port=server.port)
    watch.install()
    capture = Capture()
    root = logging.getLogger()
    root.addHandler(capture)
    root.setLevel(logging.DEBUG)
    secrets_filter = getattr(lifecycle, "SecretsFilter", None)
    if secrets_filter is not None:
        # On the handler, as the README says: a logger's filter never sees the records
        # of its children (openai._base_client, httpx2._client).
        capture.addFilter(secrets_filter())
    for name in ("lifecycle", *SDK_LOGGERS):
        logging.getLogger(name).setLevel(logging.DEBUG)
    recorded = io.StringIO()
    recorder = TransitionRecorder(file=recorded)
    totals = Totals()
    pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="soak-pool")
    deadline = time.monotonic() + args.seconds
    started = time.monotonic()
    round_no = 0
    try:
        while time.monotonic() < deadline:
            run_round(round_no, server, watch, rng, totals, args.runs_per_round, pool, recorder)
            round_no += 1
            elapsed = time.monotonic() - started
            print(
                f"\r  round {round_no}: {totals.runs} runs, {elapsed:.0f}/{args.seconds:.0f} s",
                end="",
                file=sys.stderr,
                flush=True,
            )
        print(file=sys.stderr)
        pool.shutdown()
        stats = server.command("settle 10")
    finally:
        server.stop()

    key_pieces = {p for key in totals.keys for p in pieces(key)}
    sources = {
        "errors and attempts": totals.texts,
        "log records": capture.lines,
        "recorder JSON": recorded.getvalue().splitlines(),
    }
    outputs = [text for texts in sources.values() for text in texts]
    leaks = {
        where: [text for text in texts if any(p in text for p in key_pieces)]
        for where, texts in sources.items()
    }
    leaked = sum(map(len, leaks.values()))
    secrets_seen = (
        "SecretsFilter installed"
        if secrets_filter
        else "no lifecycle.SecretsFilter in this version"
    )
    must_be_zero = {
        "requests after close": totals.requests_after_close,
        "connections left open": stats["open"],
        f"runs still blocked after {RUN_CAP:.0f} s": totals.blocked,
        "foreign-thread closes": len(watch.foreign_closes),
        "secrets found in any output": leaked,
    }
    print(
        f"soak: {args.seconds:.0f} s, seed {args.seed}, {round_no} rounds "
        f"(Python {sys.version.split()[0]}, anthropic {anthropic.__version__}, "
        f"openai {openai.__version__})"
    )
    print(
        f"  runs                          {totals.runs} (thread {totals.by_mode.get('thread', 0)}, "
        f"pool {totals.by_mode.get('pool', 0)}, async {totals.by_mode.get('async', 0)})"
    )
    print(f"  completed / failed            {totals.completed} / {totals.failed}")
    print(
        f"  ended by engine close         {totals.closed_by_engine_close} ({totals.closes} closes)"
    )
    child_completed = totals.child_runs - len(totals.child_failures)
    print(
        f"  forks (child runs completed)  {totals.forks} ({child_completed} of {totals.child_runs})"
    )
    print(f"  requests seen by the server   {stats['requests']}")
    print(f"  outputs scanned for secrets   {len(outputs)} ({secrets_seen})")
    print(f"  requests begun during close() {totals.requests_during_close}")
    bad = 0
    for name, value in must_be_zero.items():
        flag = "" if value == 0 else "   <- must be 0"
        bad += value != 0
        print(f"  {name:<30}{value}{flag}")
    for label, items in (
        ("untyped errors", totals.other_errors),
        ("child failures", totals.child_failures),
        ("foreign closes", watch.foreign_closes),
    ):
        for item in sorted(set(items))[:5]:
            print(f"    {label}: {item[:160]}")
    for where, texts in leaks.items():
        for text in texts[:3]:
            at = next(text.find(p) for p in key_pieces if p in text)
            print(f"    secret in {where}: ...{text[max(0, at - 120) : at + 40]!r}")
    for when, at, driver in totals.late_writes[:5]:
        print(f"    request written {at * 1000:.1f} ms after close() {when} ({driver} round)")
    bad += bool(totals.other_errors) + bool(totals.child_failures)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
