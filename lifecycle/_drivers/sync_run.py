"""The sync driver: a run iterated on the caller's own thread.

The caller's thread owns the run: it carries out ``run_steps``' commands (feeding the
machine, leasing, closing and moving in clients, sleeping through backoff) and runs the
per-event loop. Two things may come from other threads, and both
only abort: the process-wide watchdog (a clock ran out) and ``Run.interrupt()``. Each
shuts down the active attempt's socket, which wakes the blocked read in about 1 ms;
the owning thread then reads why it was woken and reports it to the machine.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Generator, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .._core.events import FirstEventReceived, InterruptRequested
from .._core.message import StreamEvent
from .._core.request import Request
from .client_slots import ClientSlot
from .connection import AttemptConnection, active_connection
from .route import AttemptStream, Route
from .run_base import AFTER_STOP_DRAIN, InterruptedHere, RunBase, now
from .run_steps import (
    Abort,
    AdmitRoute,
    ArmClocks,
    Backoff,
    CallerLeft,
    CloseClient,
    CloseStream,
    Command,
    DisarmClocks,
    LeaseClient,
    MoveInSuccessor,
    OpenStream,
    ReadEvents,
    ReportVerdict,
    run_steps,
)
from .watchdog import Watch, watchdog

if TYPE_CHECKING:
    from .._core.machine import RunCore
    from .._health.route_health import RouteHealth
    from .route_clients import RouteClients

__all__ = ["Run"]


class Run(RunBase):
    """One streaming call with its whole lifecycle; iterate it on one thread."""

    def __init__(
        self,
        *,
        core: RunCore,
        routes: tuple[Route, ...],
        clients: tuple[RouteClients, ...],
        request: Request,
        max_event_bytes: float = float("inf"),
        health: RouteHealth | None = None,
    ) -> None:
        super().__init__(
            core=core,
            routes=routes,
            clients=clients,
            request=request,
            max_event_bytes=max_event_bytes,
            health=health,
        )
        self._wake: threading.Event | None = None
        """What a backoff waits on, made by the first backoff (a threading.Event costs a
        Condition and a lock; most runs never back off)."""
        self._iterator: Generator[StreamEvent, None, None] | None = None

    def interrupt(self) -> None:
        """Stop the run from any thread, at any time; the loop raises ``Interrupted``."""
        self._interrupt_requested = True
        wake = self._wake
        if wake is not None:  # else the backoff that makes it sees the flag
            wake.set()
        self._abort_active()

    def __iter__(self) -> Iterator[StreamEvent]:
        if self._iterator is None:
            self._iterator = self._drive()
        return self._iterator

    def __enter__(self) -> Run:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """End the run if the caller stopped early: cleanup runs, the state is final."""
        if self._iterator is not None:
            self._iterator.close()  # runs the generator's cleanup on this thread
        elif self._core.state == "idle":
            self._core.feed(InterruptRequested(at=now()))

    # -- the driver -----------------------------------------------------------------------
    # It carries out ``run_steps``' commands on this thread; the per-event loop is
    # inline (the hot path), every other command is ``_carry_out``.
    def _drive(self) -> Generator[StreamEvent, None, None]:
        self.owner = threading.current_thread().name
        steps = run_steps(self, _sync_slot)
        result: Any = None
        raised: BaseException | None = None
        while True:
            try:
                command = steps.send(result) if raised is None else steps.throw(raised)
            except StopIteration:
                return
            result = raised = None
            if type(command) is not ReadEvents:
                try:
                    result = self._carry_out(command)
                except BaseException as exc:
                    raised = exc
                continue
            core = self._core
            attempt = command.attempt
            diag = attempt.diagnostics
            builder = command.builder
            connection = command.connection
            sent_at = command.sent_at
            watch = self._watch
            chunks = 0
            left_at_stop = False
            try:
                events = command.stream.events()
                for event in events:  # type: ignore[union-attr]
                    if chunks == 0:
                        at = now()
                        diag.ttft = at - sent_at
                        core.feed(FirstEventReceived(at=at))
                        watch.progress_at = at
                        watchdog.progressed(watch)
                        restart = self._restart_event(attempt)
                        if restart is not None:
                            # Holding the restart event is the caller's time too.
                            watch.holding = True
                            yield restart
                            watch.progress_at = now()
                            watch.holding = False
                    builder.add(event)
                    connection.progressed()
                    chunks += 1
                    watch.holding = True
                    try:
                        yield event
                    except GeneratorExit:
                        if event.type != "stop":
                            raise
                        # The caller left at the stop (`break`): the answer is whole.
                        left_at_stop = True
                    # The caller's time inside its loop body is not the provider's silence.
                    watch.progress_at = now()
                    watch.holding = False
                    if self._interrupted and not left_at_stop:
                        raise InterruptedHere
                    if event.type == "stop":
                        self._drain_after_stop(events, connection, watch)  # type: ignore[arg-type]
                        break
            except GeneratorExit as exc:  # the caller closed the iteration
                raised = CallerLeft(exc)
            except BaseException as exc:  # a fault, a cancellation: run_steps decides
                raised = exc
            finally:
                diag.chunks = chunks

    def _carry_out(self, command: Command) -> Any:
        """One command of ``run_steps``, on the run's own thread."""
        match command:
            case AdmitRoute(route=route, probe_id=probe_id):
                assert self._health is not None
                return self._health.admit(route, probe_id)
            case LeaseClient(slot=slot):
                return slot.lease()
            case ArmClocks():
                watchdog.arm(
                    self._watch,
                    command.connection,
                    sent_at=command.sent_at,
                    first_token=command.first_token,
                    stale=command.stale,
                    total_due=command.total_due,
                )
                return None
            case OpenStream():
                return self._open(command)
            case DisarmClocks():
                watchdog.disarm(self._watch)
                return None
            case Abort(plan=plan, connection=connection):
                self._cleanup_abort(plan, connection)
                return None
            case CloseStream(stream=stream, leaving=leaving):
                try:
                    stream.close()  # type: ignore[union-attr]
                except Exception as exc:  # the socket is already shut: nothing more to lose
                    return exc, leaving
                return None, leaving
            case CloseClient(route=route, client=client, leaving=leaving):
                try:
                    route.close_client(client)
                except Exception as exc:
                    return exc, leaving
                return None, leaving
            case MoveInSuccessor(slot=slot, leaving=leaving):
                try:
                    return slot.successor(), None, leaving
                except Exception as exc:
                    return None, exc, leaving
            case ReportVerdict(verdict=verdict, leaving=leaving):
                assert self._health is not None
                self._health.report(*verdict)
                return leaving
            case Backoff(seconds=seconds):
                wake = self._wake
                if wake is None:
                    wake = self._wake = threading.Event()
                    # An interrupt() before the line above found no event to set.
                    if self._interrupt_requested:
                        wake.set()
                wake.wait(seconds)
                return None
        raise AssertionError(f"not a command: {command!r}")

    def _drain_after_stop(
        self, events: Iterator[StreamEvent], connection: AttemptConnection, watch: Watch
    ) -> None:
        """The answer is complete: read what is left of the body for at most
        ``AFTER_STOP_DRAIN`` (the watchdog shuts the socket then), never retrying."""
        progress_at = watch.progress_at
        watchdog.arm(
            watch,
            connection,
            sent_at=now(),
            first_token=AFTER_STOP_DRAIN,
            stale=AFTER_STOP_DRAIN,
            total_due=self._core.deadline,
        )
        try:
            # The shutdown, or anything else after the stop: the answer stands.
            with contextlib.suppress(Exception):
                for _ in events:
                    pass
        finally:
            # Released first: a body that ended handed its connection back to the pool.
            connection.release()
            watchdog.disarm(watch)
            watch.fired = None
            watch.progress_at = progress_at

    def _open(self, command: OpenStream) -> AttemptStream:
        """Open the attempt's request with ``connection`` as the active one. Only while
        the request is written: each step of a run may run on another thread, in another
        context (a web server's worker pool), so the variable is set and reset here, in
        one context, and never held across a ``yield``."""
        token = active_connection.set(command.connection)
        try:
            return command.route.open(
                command.client, command.request, self._core.timeouts, learned=command.learned
            )
        finally:
            active_connection.reset(token)


def _sync_slot(clients: RouteClients) -> ClientSlot:
    return clients.sync
