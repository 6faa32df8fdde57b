"""What every finished run must satisfy, written once and checked by every verification test.

A run is driven by ``drive_sync`` / ``drive_async``, which record what the caller saw (each
event with the run's state when it was yielded), when ``interrupt()`` was called and what
the client slots looked like before the run. ``check_run`` then applies every invariant
to the finished run's own records (``run.history``, ``run.attempts`` with their
``diagnostics.cleanup``, the routes' client slots, ``run.owner``) and to what the
loopback server saw for the run's key (requests and connections).

Invariants (each raises ``InvariantViolation`` naming itself):

- ``final_state``: exactly one final state, and it is the last transition; the history
  is contiguous from ``idle`` along rows of ``TRANSITIONS``; events were yielded only
  while streaming and none after the end; the error the caller got matches the state.
- ``own_cleanup``: every attempt that left connecting/streaming through stale, dropped
  or interrupted ran its own adapter's cleanup exactly once: abort (by the owner, after
  at most one abort from the watchdog or an interrupter), then close and rebuild, both
  naming that attempt's api_mode (a rebuild "deferred ... cancelled" on a cancelled run).
  An attempt that completed ran no cleanup.
- ``no_foreign_adapter``: no client of another route (or of the other flavour) was
  built, closed or rebuilt because of an attempt: each slot's ``built_count`` is what
  the attempts on *its* route explain (a lease with no client takes the spare, or builds
  the slot's first; once each attempt's request is out the builder makes the next
  spare), and cleanup details name only the attempt's mode. Every faulty attempt
  that was not deferred left its successor (the spare) in place before the next attempt.
- ``cleanup_on_owner``: close, rebuild and stream close ran on ``run.owner`` (sync: the
  thread; async: "thread/task"); never on "lifecycle-watchdog" or a loop timer. A client
  was built on the owner's thread only by a sync lease that found no client and no spare
  (the slot's first); every other build ran on the builder thread, none on the loop.
- ``bounds``: attempts per route <= max_attempts; no attempt starts after Timeouts.total
  ran out; no request reaches the server after interrupt() or after the final state;
  no more requests than attempts; elapsed <= Timeouts.total + slack.
- ``no_foreign_close``: what really ran (``tests/real_closes.py`` wraps the real socket,
  asyncio transport, SDK and httpx client closes), not only what cleanup recorded: no
  socket an attempt of the run attached, and no client of the run's routes, was closed
  on "lifecycle-watchdog", inside ``interrupt()`` (whichever thread called it) or the
  loop watchdog's timer callback; an async client's close ran in a task (never a bare
  loop callback), an async run's sockets closed on its loop's thread; a socket the
  attempt's own cleanup took over closed only by the owner (or by a client's close);
  and, on an exclusive run, a client closed before the run ended closed by the owner.
- ``connections``: after the final state (allowing the server ``IDLE_WAIT`` to see the close),
  no connection of the run's key is open, except the pooled keep-alive connection of
  an attempt that completed (and, when other runs share the client, of an error answer).
"""

from __future__ import annotations

import asyncio
import itertools
import ssl
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import anthropic
import openai
import real_closes

from lifecycle import (
    FINAL_STATES,
    TRANSITIONS,
    Interrupted,
    RetryPolicy,
    StreamEngine,
    StreamEvent,
    StreamFailed,
    Timeouts,
)
from lifecycle._drivers.client_slots import BUILDER_THREAD, ClientSlot
from lifecycle._drivers.route_clients import RouteClients
from lifecycle.adapters import Route
from providers import AnthropicMessages, OpenAIChatCompletions
from providers.loopback import KEY_HEADER, LoopbackServer, RequestRecord

__all__ = [
    "API_MODE",
    "IDLE_WAIT",
    "INVARIANTS",
    "InvariantViolation",
    "RunRecord",
    "check_run",
    "drive_async",
    "drive_sync",
    "make_routes",
    "report",
    "start_run",
    "violations",
]

Flavor = Literal["sync", "async"]
API_MODE: Final = {"anthropic": "anthropic_messages", "openai": "chat_completions"}
MESSAGES: Final = [{"role": "user", "content": "Hi"}]
FAULT_STATES: Final = ("stale", "dropped", "interrupted")
IN_FLIGHT: Final = ("connecting", "streaming")
OWNER_STEPS: Final = ("close_stream", "close", "rebuild")
WATCHDOG: Final = "lifecycle-watchdog"

SLACK: Final = 0.25
"""Seconds of scheduling slack between two things the run's own thread does (a decision
and the timestamp of the attempt it starts) on a busy two-core host."""
SERVER_SLACK: Final = 2.0
"""Seconds by which the in-process server may lag behind the client: it reads requests on
its own thread, which a dozen runs and a CPU-heavy neighbour can starve. A request sent
before the final state may reach it this much later; anything later was sent after."""
TOTAL_SLACK: Final = 1.0
"""How far past Timeouts.total a run may end: detection plus one cleanup (a client build
included), on a busy host. A run that ignored the deadline would take another whole
attempt's clocks or the backoff: those fail."""
IDLE_WAIT: Final = 10.0
"""How long the server may take to see a connection closed after the final state. The
wait ends as soon as it does, so a healthy run costs nothing here, while a leak (checked
before the engine is closed) never closes: only a failing run pays it, and a starved
server (seen 3 s late beside two other suites on two cores) is not taken for a leak."""

ROWS: Final = frozenset((r["trigger"], r["source"], r["dest"]) for r in TRANSITIONS)
_OUTCOMES: Final = {
    "completed": ("completed",),
    "stale": ("stale", "deadline"),
    "dropped": ("dropped", "error"),
    "interrupted": ("interrupted",),
}


class InvariantViolation(AssertionError):
    """One or more invariants failed on a finished run; ``invariants`` names them."""

    def __init__(self, failures: Sequence[tuple[str, str]], record: RunRecord | None = None):
        self.invariants = tuple(dict.fromkeys(name for name, _ in failures))
        lines = [f"[{name}] {message}" for name, message in failures]
        if record is not None:
            lines.append(record.describe())
        super().__init__("\n".join(lines))


def _fail(name: str, message: str) -> InvariantViolation:
    return InvariantViolation([(name, message)])


# -- routes and runs -----------------------------------------------------------------------


_SHARED_TLS: list[ssl.SSLContext] = []


def _factory(provider: str, server: LoopbackServer, flavor: Flavor, shared_tls: bool) -> Any:
    if provider == "anthropic":
        base = server.anthropic_base_url
        names = ("Anthropic", "DefaultHttpxClient")
        sdk: Any = anthropic
    else:
        base = server.openai_base_url
        names = ("OpenAI", "DefaultHttpxClient")
        sdk = openai
    if flavor == "async":
        names = ("Async" + names[0], "DefaultAsyncHttpxClient")
    client_cls, http_cls = (getattr(sdk, name) for name in names)
    if not shared_tls:
        return lambda: client_cls(base_url=base, api_key="test")
    if not _SHARED_TLS:
        _SHARED_TLS.append(ssl.create_default_context())
    tls = _SHARED_TLS[0]
    return lambda: client_cls(base_url=base, api_key="test", http_client=http_cls(verify=tls))


def make_routes(
    server: LoopbackServer,
    flavor: Flavor,
    providers: Sequence[str] = ("anthropic", "openai"),
    *,
    tag: str = "",
    shared_tls: bool = False,
) -> list[Route]:
    """One route per provider against the loopback server, in order. The fault script key
    travels per request (``extra_headers``, see ``start_run``), so routes can be shared.

    ``shared_tls``: build each client on the SDK's own default HTTP client class, handed
    one shared SSL context. Building an SDK client otherwise loads the CA bundle, ~16 ms
    of CPU with the GIL held, for a loopback server that speaks plain HTTP; suites that
    build thousands of clients use this, the rest keep the SDKs' defaults."""
    routes: list[Route] = []
    for provider in providers:
        factory = _factory(provider, server, flavor, shared_tls)
        if provider == "anthropic":
            routes.append(AnthropicMessages(factory, model=f"claude-verify{tag}"))
        else:
            routes.append(OpenAIChatCompletions(factory, model=f"gpt-verify{tag}"))
    return routes


def _slot(clients: RouteClients, flavor: Flavor) -> ClientSlot:
    return clients.sync if flavor == "sync" else clients.first_async


@dataclass(frozen=True)
class SlotState:
    built: int
    filled: bool
    builds_logged: int
    spare: bool


def _slot_state(slot: ClientSlot) -> SlotState:
    # A spare's build still in flight would make the counts depend on timing.
    slot.wait_for_builder()
    return SlotState(
        slot.built_count, slot.current_client is not None, len(slot.builds_log), slot.has_spare
    )


def settle_builders(engine: StreamEngine) -> None:
    """Wait for every spare build of ``engine``'s routes in flight: counts are exact after."""
    for clients in engine._distinct_clients:
        for slot in clients.slots():
            slot.wait_for_builder()


@dataclass(frozen=True)
class ExpectedBuilds:
    inline: int
    """Builds on the owner's thread: sync leases that found neither client nor spare."""
    by_builder: int
    filled: bool
    spare: bool


@dataclass(eq=False)
class RunRecord:
    """One run as the caller drove it, with what is needed to check it afterwards."""

    run: Any
    flavor: Flavor
    engine: StreamEngine
    server: LoopbackServer
    key: str
    t_start: float
    slots_before: list[SlotState]
    other_slots_before: list[SlotState]
    script: tuple[Any, ...] = ()
    seen: list[tuple[str, str, float]] = field(default_factory=list)
    """(event type, run state when it was yielded, time received) for each event."""
    after_end: int = 0
    """Events yielded by iterating again after the loop ended (must be 0)."""
    error: BaseException | None = None
    ended_at: float = 0.0
    interrupts: list[float] = field(default_factory=list)
    timers: list[threading.Timer] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    exclusive: bool = True
    """No other run used the engine's routes meanwhile: the slots' counts are this run's
    alone (the checks of client builds are skipped otherwise)."""

    @property
    def routes(self) -> tuple[Route, ...]:
        return self.engine.routes

    @property
    def clients(self) -> tuple[RouteClients, ...]:
        """The engine's clients of each route, in chain order."""
        return self.engine._clients

    @property
    def timeouts(self) -> Timeouts:
        return self.engine.timeouts

    @property
    def retry(self) -> RetryPolicy:
        return self.engine.retry

    # -- what the test does to the run ------------------------------------------------
    def interrupt(self) -> None:
        """Call ``run.interrupt()`` (from any thread), remembering when."""
        self.interrupts.append(time.monotonic())
        self.run.interrupt()

    def interrupt_later(self, delay: float) -> None:
        """Interrupt from a timer thread ``delay`` seconds from now."""
        timer = threading.Timer(delay, self.interrupt)
        timer.name = f"interrupter-{self.key}"
        timer.daemon = True
        self.timers.append(timer)
        timer.start()

    def stop_timers(self) -> None:
        for timer in self.timers:
            timer.cancel()
        for timer in self.timers:
            if timer is not threading.current_thread():
                timer.join(5.0)

    # -- what happened ------------------------------------------------------------------
    def requests(self) -> list[RequestRecord]:
        return [r for r in self.server.requests if r.key == self.key]

    def path(self) -> list[tuple[str, str, str]]:
        return [(t.trigger, t.source, t.dest) for t in self.run.history]

    def path_text(self) -> str:
        history = self.run.history
        if not history:
            return self.run.state
        parts = [history[0].source]
        parts += [f"{t.dest} ({t.trigger})" for t in history]
        return " -> ".join(parts)

    def describe(self) -> str:
        lines = [
            f"run {self.key} ({self.flavor}, owner {self.run.owner!r}), "
            f"routes {[r.api_mode for r in self.routes]}",
            f"  script: {list(self.script)}",
            f"  {self.retry!r}",
            f"  {self.timeouts!r}",
            f"  path: {self.path_text()}",
            f"  error: {self.error!r}",
            f"  interrupts at: {[round(t - self.t_start, 3) for t in self.interrupts]}",
        ]
        for attempt in self.run.attempts:
            lines.append(
                f"  attempt {attempt.number} route {attempt.route_index} {attempt.api_mode}: "
                f"{attempt.outcome} ({attempt.reason})"
            )
            for step in attempt.diagnostics.cleanup:
                lines.append(f"    {step.step:12} {step.thread:30} {step.detail}")
        for index, route in enumerate(self.routes):
            slot = _slot(self.clients[index], self.flavor)
            before = self.slots_before[index]
            lines.append(
                f"  route {index} {route.api_mode}: built {before.built} -> {slot.built_count}"
                f" on {slot.builds_log[before.builds_logged :]}"
            )
        for req in self.requests():
            lines.append(
                f"  request {req.index} conn {req.connection_id} {req.provider} "
                f"{type(req.fault).__name__} status {req.status} "
                f"at +{req.received_at - self.t_start:.3f}s, conn closed by "
                f"{req.connection_closed_by}"
            )
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def start_run(
    engine: StreamEngine,
    server: LoopbackServer,
    key: str,
    flavor: Flavor,
    script: Sequence[Any] = (),
) -> RunRecord:
    """Script the server for ``key`` and create (not yet iterate) a run whose requests carry
    it; the slots' state is taken first, so invariants can tell what this run built."""
    real_closes.install()
    server.script(key, list(script))
    other: Flavor = "async" if flavor == "sync" else "sync"
    before = [_slot_state(_slot(c, flavor)) for c in engine._clients]
    other_before = [_slot_state(_slot(c, other)) for c in engine._clients]
    t_start = time.monotonic()
    make = engine.stream if flavor == "sync" else engine.astream
    run = make(messages=MESSAGES, max_tokens=64, extra_headers={KEY_HEADER: key})
    return RunRecord(
        run=run,
        flavor=flavor,
        engine=engine,
        server=server,
        key=key,
        t_start=t_start,
        slots_before=before,
        other_slots_before=other_before,
        script=tuple(script),
    )


OnEvent = Callable[[RunRecord, StreamEvent], None]


def drive_sync(record: RunRecord, on_event: OnEvent | None = None) -> RunRecord:
    """Iterate a sync run on this thread to its end, recording what the caller saw."""
    run = record.run
    try:
        with run:
            for event in run:
                record.seen.append((event.type, run.state, time.monotonic()))
                if on_event is not None:
                    on_event(record, event)
    except Exception as exc:  # anything: a non-LifecycleError is itself a violation
        record.error = exc
    record.ended_at = time.monotonic()
    record.stop_timers()
    try:
        record.after_end = sum(1 for _ in run)
    except Exception as exc:
        record.notes.append(f"iterating again after the end raised {exc!r}")
    return record


async def drive_async(record: RunRecord, on_event: OnEvent | None = None) -> RunRecord:
    """``async for`` an async run inside the current task, recording what the caller saw."""
    run = record.run
    try:
        async with run:
            async for event in run:
                record.seen.append((event.type, run.state, time.monotonic()))
                if on_event is not None:
                    on_event(record, event)
    except Exception as exc:
        record.error = exc
    record.ended_at = time.monotonic()
    record.stop_timers()
    try:
        async for _ in run:
            record.after_end += 1
    except Exception as exc:
        record.notes.append(f"iterating again after the end raised {exc!r}")
    return record


def interrupt_on_loop(record: RunRecord, delay: float) -> asyncio.TimerHandle:
    """Interrupt from a callback on the running loop (not a task) ``delay`` s from now."""
    return asyncio.get_running_loop().call_later(delay, record.interrupt)


# -- the invariants ----------------------------------------------------------------------


def _segments(record: RunRecord) -> list[tuple[Any, str]]:
    """Each attempt with how it left connecting/streaming (completed or a fault state);
    "open" if the history ends while it is still in flight."""
    history = record.run.history
    attempts = record.run.attempts
    exits: list[str] = []
    for transition in history:
        if transition.trigger == "start_attempt":
            exits.append("open")
        elif transition.source in IN_FLIGHT and transition.dest != "streaming" and exits:
            exits[-1] = transition.dest
    return list(zip(attempts, exits, strict=False))


def inv_final_state(record: RunRecord) -> None:
    run = record.run
    history = run.history
    if record.error is not None and not isinstance(record.error, Interrupted | StreamFailed):
        raise _fail("final_state", f"the run raised {record.error!r}, not a LifecycleError")
    if not history:
        raise _fail("final_state", f"no transition at all; state {run.state}")
    if history[0].source != "idle":
        raise _fail("final_state", f"history starts in {history[0].source}")
    for before, after in itertools.pairwise(history):
        if after.source != before.dest:
            raise _fail("final_state", f"history not contiguous: {before} then {after}")
        if after.at < before.at:
            raise _fail("final_state", f"time went back: {before} then {after}")
    for t in history:
        if (t.trigger, t.source, t.dest) not in ROWS:
            raise _fail("final_state", f"{t} is no row of TRANSITIONS")
    finals = [i for i, t in enumerate(history) if t.dest in FINAL_STATES]
    if finals != [len(history) - 1]:
        raise _fail(
            "final_state",
            f"final states at transitions {finals} of {len(history)} (state {run.state})",
        )
    if run.state != history[-1].dest:
        raise _fail("final_state", f"state {run.state} but the last transition is {history[-1]}")
    wrong = [(kind, state) for kind, state, _ in record.seen if state != "streaming"]
    if wrong:
        raise _fail("final_state", f"events yielded outside streaming: {wrong[:5]}")
    if record.after_end:
        raise _fail("final_state", f"{record.after_end} event(s) yielded after the end")
    expected = {"completed": type(None), "failed": StreamFailed, "cancelled": Interrupted}
    if not isinstance(record.error, expected[run.state]):
        raise _fail("final_state", f"ended {run.state} but the caller got {record.error!r}")


def inv_own_cleanup(record: RunRecord) -> None:
    run = record.run
    owner = run.owner
    segments = _segments(record)
    if len(segments) != len(run.attempts):
        raise _fail(
            "own_cleanup",
            f"{len(run.attempts)} attempt records for {len(segments)} start_attempt transitions",
        )
    for attempt, exit_ in segments:
        steps = attempt.diagnostics.cleanup
        label = f"attempt {attempt.number} ({attempt.api_mode}, {exit_})"
        if exit_ in ("completed", "open"):
            if steps:
                raise _fail("own_cleanup", f"{label} has cleanup steps {steps}")
            if exit_ == "completed" and attempt.outcome != "completed":
                raise _fail("own_cleanup", f"{label} has outcome {attempt.outcome}")
            continue
        if attempt.outcome not in _OUTCOMES[exit_]:
            raise _fail("own_cleanup", f"{label} has outcome {attempt.outcome}")
        names = [s.step for s in steps]
        own_aborts = [i for i, s in enumerate(steps) if s.step == "abort" and s.thread == owner]
        other_aborts = [i for i, s in enumerate(steps) if s.step == "abort" and s.thread != owner]
        closes = [i for i, n in enumerate(names) if n == "close"]
        rebuilds = [i for i, n in enumerate(names) if n == "rebuild"]
        streams = [i for i, n in enumerate(names) if n == "close_stream"]
        problems = []
        if len(own_aborts) != 1:
            problems.append(f"{len(own_aborts)} aborts by the owner")
        if len(other_aborts) > 1 or (
            other_aborts and own_aborts and other_aborts[0] > own_aborts[0]
        ):
            problems.append(f"aborts by others at {other_aborts}")
        if len(closes) != 1:
            problems.append(f"{len(closes)} client closes")
        if len(rebuilds) != 1:
            problems.append(f"{len(rebuilds)} rebuilds")
        if len(streams) > 1:
            problems.append(f"{len(streams)} stream closes")
        if not problems:
            order = [own_aborts[0], *streams, closes[0], rebuilds[0]]
            if order != sorted(order):
                problems.append("steps out of order (abort, close_stream, close, rebuild)")
        for i in closes + rebuilds:
            if attempt.api_mode not in steps[i].detail:
                problems.append(f"{steps[i].step} does not name {attempt.api_mode}")
        for i in rebuilds:
            out_of_time = run.state == "failed" and "Timeouts.total" in steps[i].detail
            if "deferred" in steps[i].detail and run.state != "cancelled" and not out_of_time:
                problems.append(f"rebuild deferred on a run that ended {run.state}")
        if problems:
            raise _fail("own_cleanup", f"{label}: {'; '.join(problems)}; steps {names}")


def inv_no_foreign_adapter(record: RunRecord) -> None:
    run = record.run
    modes = {route.api_mode for route in record.routes}
    segments = _segments(record)
    for attempt, _ in segments:
        route = record.routes[attempt.route_index]
        if attempt.api_mode != route.api_mode:
            raise _fail(
                "no_foreign_adapter",
                f"attempt {attempt.number} says {attempt.api_mode}, its route is {route.api_mode}",
            )
        for step in attempt.diagnostics.cleanup:
            foreign = [m for m in modes - {attempt.api_mode} if m in step.detail]
            if foreign:
                raise _fail(
                    "no_foreign_adapter",
                    f"attempt {attempt.number} on {attempt.api_mode}: {step.step} names "
                    f"{foreign} ({step.detail!r})",
                )
    if not record.exclusive:
        return
    other: Flavor = "async" if record.flavor == "sync" else "sync"
    for index, route in enumerate(record.routes):
        before = record.slots_before[index]
        expected = _expected_builds(record, index, segments)
        built = before.built + expected.inline + expected.by_builder
        slot = _slot(record.clients[index], record.flavor)
        if slot.built_count != built:
            used = sorted({a.route_index for a in run.attempts})
            raise _fail(
                "no_foreign_adapter",
                f"route {index} ({route.api_mode}) built {slot.built_count - before.built} "
                f"client(s) in this run, its own attempts explain {built - before.built} "
                f"(routes used by attempts: {used})",
            )
        if (slot.current_client is not None) != expected.filled:
            raise _fail(
                "no_foreign_adapter",
                f"route {index} ({route.api_mode}) "
                f"{'has' if not expected.filled else 'lacks'} a current "
                "client its own attempts do not explain",
            )
        if slot.has_spare != expected.spare:
            raise _fail(
                "no_foreign_adapter",
                f"route {index} ({route.api_mode}) {'lacks' if expected.spare else 'has'} "
                "a spare client its own attempts do not explain",
            )
        other_slot = _slot(record.clients[index], other)
        if other_slot.built_count != record.other_slots_before[index].built:
            raise _fail("no_foreign_adapter", f"route {index}'s {other} slot built a client")


def _expected_builds(
    record: RunRecord, index: int, segments: list[tuple[Any, str]]
) -> ExpectedBuilds:
    """What the attempts on route ``index`` make its slot build, and leave in it."""
    before = record.slots_before[index]
    filled, spare = before.filled, before.spare
    inline = by_builder = 0
    for attempt, exit_ in segments:
        if attempt.route_index != index:
            continue
        if not filled:  # the lease takes the spare, or builds the slot's first client
            if spare:
                spare = False
            elif record.flavor == "sync":
                inline += 1
            else:  # an async slot's first client is built off the loop too
                by_builder += 1
            filled = True
        if not spare:  # once its request is out, the builder makes the next spare
            by_builder, spare = by_builder + 1, True
        if exit_ in FAULT_STATES:  # cleanup retires it; the spare moves in unless deferred
            filled = False
            for step in attempt.diagnostics.cleanup:
                if step.step == "rebuild" and "generation" in step.detail:
                    filled, spare = True, False
    return ExpectedBuilds(inline=inline, by_builder=by_builder, filled=filled, spare=spare)


def inv_cleanup_on_owner(record: RunRecord) -> None:
    run = record.run
    owner = run.owner
    if owner is None:
        if run.attempts:
            raise _fail("cleanup_on_owner", "attempts ran but run.owner is None")
        return
    owner_thread = owner.split("/")[0]
    for attempt in run.attempts:
        for step in attempt.diagnostics.cleanup:
            if step.step in OWNER_STEPS and step.thread != owner:
                raise _fail(
                    "cleanup_on_owner",
                    f"attempt {attempt.number} ({attempt.api_mode}): {step.step} ran on "
                    f"{step.thread!r}, the run's owner is {owner!r} ({step.detail})",
                )
            if step.step != "abort" and (WATCHDOG in step.thread or "loop-timer" in step.thread):
                raise _fail("cleanup_on_owner", f"{step.step} on {step.thread!r}")
    if not record.exclusive:
        return
    segments = _segments(record)
    for index, route in enumerate(record.routes):
        slot = _slot(record.clients[index], record.flavor)
        builders = slot.builds_log[record.slots_before[index].builds_logged :]
        expected = _expected_builds(record, index, segments)
        on_owner = builders.count(owner_thread)
        on_builder = builders.count(BUILDER_THREAD)
        if (
            on_owner != expected.inline
            or on_builder != expected.by_builder
            or on_owner + on_builder != len(builders)
        ):
            raise _fail(
                "cleanup_on_owner",
                f"route {index} ({route.api_mode}) clients built on {builders}, owner "
                f"{owner!r}: expected {expected.inline} on the owner (a sync slot's first) "
                f"and {expected.by_builder} on {BUILDER_THREAD}",
            )


def inv_bounds(record: RunRecord) -> None:
    run = record.run
    history = run.history
    per_route: dict[int, int] = {}
    for attempt in run.attempts:
        per_route[attempt.route_index] = per_route.get(attempt.route_index, 0) + 1
    over = {r: n for r, n in per_route.items() if n > record.retry.max_attempts}
    if over:
        raise _fail("bounds", f"attempts per route {over} > max_attempts")
    total = record.timeouts.total
    for attempt in run.attempts:
        if attempt.started_at - record.t_start > total + SLACK:
            raise _fail(
                "bounds",
                f"attempt {attempt.number} started {attempt.started_at - record.t_start:.3f}s "
                f"into the run, after Timeouts.total ({total:g}s) ran out",
            )
    if history and history[-1].at > total + TOTAL_SLACK:
        raise _fail("bounds", f"the run took {history[-1].at:.3f}s, Timeouts.total is {total:g}")
    requests = record.requests()
    if len(requests) > len(run.attempts):
        raise _fail("bounds", f"{len(requests)} requests for {len(run.attempts)} attempts")
    if record.interrupts:
        first = record.interrupts[0]
        late = [r.index for r in requests if r.received_at > first + SERVER_SLACK]
        if late:
            raise _fail("bounds", f"requests {late} reached the server after interrupt()")
        late_attempts = [a.number for a in run.attempts if a.started_at > first + SLACK]
        if late_attempts:
            raise _fail("bounds", f"attempts {late_attempts} started after interrupt()")
    if history:
        final_at = record.t_start + history[-1].at
        late = [r.index for r in requests if r.received_at > final_at + SERVER_SLACK]
        if late:
            raise _fail("bounds", f"requests {late} reached the server after the final state")


def _forbidden(call: real_closes.Call) -> str | None:
    if call.foreign is not None:
        return call.foreign
    if call.thread == WATCHDOG:
        return "the watchdog thread"
    return None


def inv_no_foreign_close(record: RunRecord) -> None:
    run = record.run
    owner = run.owner or ""
    owner_thread, _, owner_task = owner.partition("/")
    is_async = record.flavor == "async"
    problems: list[str] = []

    def wrong(call: real_closes.Call, what: str, why: str) -> None:
        problems.append(
            f"{what}: {call.kind} on {call.context} ({why}){call.stack and chr(10)}{call.stack}"
        )

    for holding in real_closes.trace_of(run).holdings:
        what = f"socket {holding.socket.description}"
        for call in holding.socket.calls:
            if call.seq < holding.attached_seq or not call.closes:
                continue
            why = _forbidden(call)
            if why is not None:
                wrong(call, what, f"closed from {why}")
            elif is_async and call.thread != owner_thread:
                wrong(call, what, f"an async run's socket, off its loop's thread {owner_thread!r}")
            elif holding.connection.cleaned_seq is not None and not call.in_client_close:
                by_owner = call.task in (None, owner_task) if is_async else call.thread == owner
                if not by_owner:
                    wrong(call, what, f"its attempt's cleanup took it over; the owner is {owner!r}")
    slots = {id(s): s for c in record.clients for s in c.slots()}
    for slot in slots.values():
        for client in real_closes.clients_of(slot):
            what = f"client {client.description}"
            for call in client.calls:
                if not call.was_open or call.at < record.t_start:
                    continue
                if call.kind == "http.close" and call.in_client_close:
                    continue  # part of the SDK client's close, judged as that
                why = _forbidden(call)
                if why is not None:
                    wrong(call, what, f"closed from {why}")
                elif "Async" in client.description and call.task is None:
                    wrong(call, what, "an async client closed outside any task")
                elif record.exclusive and record.ended_at and call.at < record.ended_at:
                    closer = call.thread if call.task is None else f"{call.thread}/{call.task}"
                    if closer != owner:
                        wrong(call, what, f"closed during the run, not by its owner {owner!r}")
    if problems:
        raise _fail("no_foreign_close", "; ".join(problems[:3]))


def inv_connections(record: RunRecord) -> None:
    server = record.server
    key = record.key
    requests = record.requests()
    allowed: set[int] = set()
    if record.run.state == "completed" and requests:
        allowed.add(requests[-1].connection_id)  # back in the client's keep-alive pool
    if not record.exclusive:
        # An error answer is read whole and its connection goes back to the client's
        # pool, no longer the attempt's: a client other runs still use keeps it until
        # its last user closes the client (an exclusive run's client is closed at once).
        allowed.update(r.connection_id for r in requests if r.status and r.status >= 400)

    def still_open() -> list[Any]:
        return [
            c
            for c in server.connection_log
            if c.closed_at is None and key in c.keys and c.id not in allowed
        ]

    server.wait_until(lambda: not still_open(), timeout=IDLE_WAIT)
    left = still_open()
    if left:
        raise _fail(
            "connections",
            f"{len(left)} connection(s) of the run still open {IDLE_WAIT}s after the final "
            f"state: {[(c.id, c.request_indexes) for c in left]}",
        )


INVARIANTS: Final[tuple[tuple[str, Callable[[RunRecord], None]], ...]] = (
    ("final_state", inv_final_state),
    ("own_cleanup", inv_own_cleanup),
    ("no_foreign_adapter", inv_no_foreign_adapter),
    ("cleanup_on_owner", inv_cleanup_on_owner),
    ("no_foreign_close", inv_no_foreign_close),
    ("bounds", inv_bounds),
    ("connections", inv_connections),
)


def violations(record: RunRecord) -> list[tuple[str, str]]:
    """Every invariant the run breaks, as (name, message); empty if it keeps them all."""
    found: list[tuple[str, str]] = []
    settle_builders(record.engine)
    for name, check in INVARIANTS:
        try:
            check(record)
        except InvariantViolation as exc:
            found.append((name, str(exc).split("] ", 1)[-1]))
        except Exception as exc:  # a record so broken that the check itself trips
            found.append((name, f"check crashed: {exc!r}"))
    return found


def report(config: Any, lines: Sequence[str]) -> None:
    """Write counts to the terminal whatever the capture settings (``-q`` included): test
    modules call this from a module-scoped fixture's teardown with ``request.config``."""
    capture = config.pluginmanager.getplugin("capturemanager")
    reporter = config.pluginmanager.getplugin("terminalreporter")
    if capture is not None and reporter is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line("")
            for line in lines:
                reporter.write_line(line)
        return
    for line in lines:
        print(line, file=sys.__stderr__)


def check_run(record: RunRecord) -> None:
    """Raise ``InvariantViolation`` (naming every invariant broken) unless all hold."""
    found = violations(record)
    if found:
        raise InvariantViolation(found, record)
