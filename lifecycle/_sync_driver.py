"""The sync driver: a run iterated on the caller's own thread.

The caller's thread owns the run: it feeds the machine, builds, closes and rebuilds
clients, and sleeps through backoff. Two things may come from other threads, and both
only abort: the process-wide watchdog (a clock ran out) and ``Run.interrupt()``. Each
shuts down the active attempt's socket, which wakes the blocked read in about 1 ms;
the owning thread then reads why it was woken and reports it to the machine.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ._abort import AttemptConnection, active_connection
from ._clients import ClientLease
from ._errors import Fault, Interrupted, StreamFailed
from ._events import (
    AttemptFailed,
    AttemptStarted,
    CleanupFinished,
    DeadlinePassed,
    FirstEventReceived,
    InterruptRequested,
    StallDetected,
    StreamFinished,
)
from ._message import Message, MessageBuilder, Restart, StreamEvent
from ._route import AttemptStream, Request, Route
from ._run import AttemptRecord, CleanupStep, Transition, cause_chain, redact
from ._shared import client_build_fault, failure_message, header_subset, truncated_fault
from ._watchdog import Watch, watchdog

if TYPE_CHECKING:
    from ._machine import CleanupPlan, RunCore

__all__ = ["Run"]

logger = logging.getLogger("lifecycle")
# A library logs, the application decides where to: no output unless it configures logging.
logger.addHandler(logging.NullHandler())
_now = time.monotonic


class _CallerLeft(Exception):
    """Internal: the caller stopped iterating (break, exception, KeyboardInterrupt)."""


class Run:
    """One streaming call with its whole lifecycle; iterate it on one thread."""

    def __init__(
        self,
        *,
        core: RunCore,
        routes: tuple[Route, ...],
        request: Request,
    ) -> None:
        self._core = core
        self._routes = routes
        self._request = request
        self._interrupted = False
        self._wake = threading.Event()
        self._connection: AttemptConnection | None = None
        self._watch = Watch()
        self._message: Message | None = None
        self._iterator: Iterator[StreamEvent] | None = None
        self.owner_thread: str | None = None

    # -- public surface -----------------------------------------------------------------
    @property
    def state(self) -> str:
        return self._core.state

    @property
    def message(self) -> Message | None:
        """The final attempt's output (a partial one if the run did not complete)."""
        return self._message

    @property
    def attempts(self) -> tuple[AttemptRecord, ...]:
        return tuple(self._core.attempts)

    @property
    def history(self) -> tuple[Transition, ...]:
        return tuple(self._core.history)

    def interrupt(self) -> None:
        """Stop the run from any thread, at any time; the loop raises ``Interrupted``."""
        self._interrupted = True
        self._wake.set()
        connection = self._connection
        if connection is not None:
            connection.abort(reason="interrupt")

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
            self._core.feed(InterruptRequested(at=_now()))

    def diagram(self) -> str:
        from ._diagram import run_diagram

        return run_diagram(self._core.history, self._core.attempts)

    # -- the driver -----------------------------------------------------------------------
    def _drive(self) -> Iterator[StreamEvent]:
        core = self._core
        self.owner_thread = threading.current_thread().name
        route_index = 0
        while True:
            if self._interrupted:
                core.feed(InterruptRequested(at=_now()))
                raise Interrupted(attempts=core.attempts)
            core.feed(AttemptStarted(at=_now(), route_index=route_index))
            caller_left: BaseException | None = None
            try:
                completed = yield from self._attempt(core.active_attempt)
            except _CallerLeft as left:
                caller_left = left.__cause__
                completed = False
            if completed:
                return
            plan = core.pending_cleanup
            assert plan is not None
            self._log_failed_attempt(core.active_attempt)
            core.feed(CleanupFinished(at=_now(), interrupted=self._interrupted or bool(caller_left)))
            if caller_left is not None:
                raise caller_left
            decision = core.decision
            assert decision is not None
            if core.state == "cancelled":
                raise Interrupted(attempts=core.attempts)
            if core.state == "failed":
                raise self._failure()
            # retrying or falling_back: wait out the backoff, interruptibly, within total.
            if decision.delay > 0:
                remaining = core.deadline - _now()
                self._wake.wait(min(decision.delay, max(0.0, remaining)))
                if self._interrupted:
                    core.feed(InterruptRequested(at=_now()))
                    raise Interrupted(attempts=core.attempts)
                if _now() >= core.deadline:
                    core.feed(DeadlinePassed(at=_now()))
                    raise self._failure()
            route_index = decision.route_index

    def _attempt(self, attempt: AttemptRecord) -> Iterator[StreamEvent]:
        """Run one attempt; returns True when it completed, else leaves a cleanup plan."""
        core = self._core
        route = self._routes[attempt.route_index]
        diag = attempt.diagnostics
        connection = AttemptConnection()
        self._connection = connection
        if self._interrupted:
            connection.abort(reason="interrupt")
        watch = self._watch
        builder = MessageBuilder(api_mode=route.api_mode, model=route.model)
        lease: ClientLease | None = None
        stream: AttemptStream | None = None
        chunks = 0
        token = active_connection.set(connection)
        try:
            try:
                lease = route.sync_clients.lease()
            except Exception as exc:
                core.feed(AttemptFailed(at=_now(), fault=client_build_fault(route, exc)))
                diag.error_type = type(exc).__name__
                diag.cause_chain = cause_chain(exc)
                self._clean_up(core.pending_cleanup, connection, None, None)
                return False
            sent_at = _now()
            connection.sent_at = sent_at
            diag.request_sent_at = sent_at - attempt.started_at
            watchdog.arm(
                watch,
                connection,
                sent_at=sent_at,
                first_token=core.timeouts.first_token,
                stale=core.timeouts.stale,
                total_due=core.deadline,
            )
            try:
                stream = route.open(lease.client, self._request, core.timeouts)
                diag.http_status = stream.http_status
                diag.headers = header_subset(stream.headers)
                connection.attach(stream.socket)
                first = True
                for event in stream.events():
                    if first:
                        first = False
                        at = _now()
                        diag.ttft = at - sent_at
                        core.feed(FirstEventReceived(at=at))
                        if core.restart_pending:
                            core.restart_pending = False
                            yield StreamEvent(
                                type="restart",
                                restart=Restart(
                                    reason=core.attempts[-2].reason or "restart",
                                    attempt=attempt.number,
                                    route_index=attempt.route_index,
                                    api_mode=attempt.api_mode,
                                ),
                            )
                    builder.add(event)
                    chunks += 1
                    watch.holding = True
                    yield event
                    watch.progress_at = _now()
                    watch.holding = False
                    if self._interrupted:
                        raise _InterruptedHere
                diag.chunks = chunks
                if builder.stop_reason is None:
                    raise _Truncated
            except GeneratorExit as exc:
                diag.chunks = chunks
                self._message = builder.build()
                core.feed(InterruptRequested(at=_now()))
                self._finish_failed_attempt(attempt, connection, stream, lease, exc)
                raise _CallerLeft from exc
            except BaseException as exc:
                diag.chunks = chunks
                self._message = builder.build()
                core.feed(self._fault_event(route, exc, watch, connection))
                self._finish_failed_attempt(attempt, connection, stream, lease, exc)
                if not isinstance(exc, Exception | _InterruptedHere):
                    raise _CallerLeft from exc
                return False
            # Success: release before anything else, so a late abort cannot touch a
            # connection that goes back to the pool.
            connection.release()
            watchdog.disarm(watch)
            at = _now()
            self._record_wire(attempt, connection)
            stream.close()
            self._release(route, lease)
            self._message = builder.build()
            core.feed(StreamFinished(at=at))
            return True
        finally:
            active_connection.reset(token)
            self._connection = None

    # -- helpers ------------------------------------------------------------------------
    def _fault_event(
        self,
        route: Route,
        exc: BaseException,
        watch: Watch,
        connection: AttemptConnection,
    ) -> StallDetected | AttemptFailed | InterruptRequested:
        at = _now()
        if watch.fired is not None and watch.fired_deadline is not None:
            diag = self._core.active_attempt.diagnostics
            if watch.fired_at is not None:
                diag.detection_lateness = watch.fired_at - watch.fired_deadline
            clock = watch.fired
            assert clock in ("first_token", "stale", "total")
            return StallDetected(at=at, clock=clock, deadline=watch.fired_deadline)  # type: ignore[arg-type]
        if self._interrupted or isinstance(exc, _InterruptedHere):
            return InterruptRequested(at=at)
        if isinstance(exc, _Truncated):
            return AttemptFailed(at=at, fault=truncated_fault(route))
        if not isinstance(exc, Exception):
            return InterruptRequested(at=at)
        fault = route.classify(exc)
        diag = self._core.active_attempt.diagnostics
        diag.error_type = type(exc).__name__
        diag.cause_chain = cause_chain(exc)
        return AttemptFailed(at=at, fault=fault)

    def _finish_failed_attempt(
        self,
        attempt: AttemptRecord,
        connection: AttemptConnection,
        stream: AttemptStream | None,
        lease: ClientLease | None,
        exc: BaseException,
    ) -> None:
        watchdog.disarm(self._watch)
        if isinstance(exc, Exception) and not isinstance(exc, _InterruptedHere | _Truncated):
            attempt.diagnostics.error_type = attempt.diagnostics.error_type or type(exc).__name__
        self._record_wire(attempt, connection)
        self._clean_up(self._core.pending_cleanup, connection, stream, lease)

    def _record_wire(self, attempt: AttemptRecord, connection: AttemptConnection) -> None:
        diag = attempt.diagnostics
        diag.bytes = connection.bytes_read
        if connection.first_byte_at is not None and connection.sent_at is not None:
            diag.ttfb = connection.first_byte_at - connection.sent_at

    def _clean_up(
        self,
        plan: CleanupPlan | None,
        connection: AttemptConnection,
        stream: AttemptStream | None,
        lease: ClientLease | None,
    ) -> None:
        """Carry out the machine's cleanup plan on this (the run's own) thread."""
        assert plan is not None, "the machine planned no cleanup"
        steps = plan.attempt.diagnostics.cleanup
        thread = threading.current_thread().name
        base = plan.attempt.started_at
        route: Route = plan.route  # type: ignore[assignment]
        if connection.aborted and connection.aborted_by != thread:
            steps.append(
                CleanupStep(
                    step="abort",
                    thread=connection.aborted_by or "?",
                    at=(connection.aborted_at or base) - base,
                    detail=f"socket shutdown ({connection.abort_reason})",
                )
            )
        shut = connection.abort(reason="cleanup")
        steps.append(
            CleanupStep(
                step="abort",
                thread=thread,
                at=_now() - base,
                detail="socket shutdown" if shut else "no live socket",
            )
        )
        connection.release()
        if stream is not None:
            try:
                stream.close()
            except Exception as exc:  # the socket is already shut: nothing to lose
                steps.append(CleanupStep(step="close_stream", thread=thread, at=_now() - base,
                                         detail=redact(repr(exc))[:200]))
            else:
                steps.append(CleanupStep(step="close_stream", thread=thread, at=_now() - base))
        slot = route.sync_clients
        if lease is not None:
            slot.retire(lease)
        to_close, others = (None, 0) if lease is None else lease.slot.release(lease)
        if to_close is not None:
            try:
                route.close_client(to_close)
                detail = f"{plan.api_mode} client generation {lease.number if lease else '?'}"
            except Exception as exc:
                detail = f"{plan.api_mode}: {redact(repr(exc))[:200]}"
            steps.append(CleanupStep(step="close", thread=thread, at=_now() - base, detail=detail))
        elif lease is not None:
            steps.append(
                CleanupStep(
                    step="close",
                    thread=thread,
                    at=_now() - base,
                    detail=f"{plan.api_mode} client retired; closed by the last of {others} "
                    "other run(s) still using it",
                )
            )
        try:
            slot.rebuild()
            detail = f"{plan.api_mode} client generation {slot.built_count}"
        except Exception as exc:
            detail = f"{plan.api_mode}: rebuild failed: {redact(repr(exc))[:200]}"
        steps.append(CleanupStep(step="rebuild", thread=thread, at=_now() - base, detail=detail))

    def _release(self, route: Route, lease: ClientLease) -> None:
        to_close, _ = lease.slot.release(lease)
        if to_close is not None:
            route.close_client(to_close)

    def _failure(self) -> StreamFailed:
        core = self._core
        return StreamFailed(
            failure_message(core),
            attempts=core.attempts,
            fault=core.last_fault,
            partial_message=self._message if core.committed else None,
        )

    def _log_failed_attempt(self, attempt: AttemptRecord) -> None:
        if logger.isEnabledFor(logging.WARNING):
            logger.warning("lifecycle attempt failed %s", json.dumps(attempt.as_dict(), default=str))


class _InterruptedHere(Exception):
    """Internal: interrupt() was seen between two events on the owning thread."""


class _Truncated(Exception):
    """Internal: the stream ended without the provider's stop."""

