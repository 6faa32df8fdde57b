"""The sync driver: a run iterated on the caller's own thread.

The caller's thread owns the run: it feeds the machine, builds, closes and rebuilds
clients, and sleeps through backoff. Two things may come from other threads, and both
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

from .._core.errors import client_build_fault
from .._core.events import (
    AttemptFailed,
    AttemptStarted,
    CleanupFinished,
    DeadlinePassed,
    FirstEventReceived,
    InterruptRequested,
    StreamFinished,
)
from .._core.message import StreamEvent
from .._core.records import AttemptRecord
from .._core.redaction import cause_chain, header_subset, kept_exception
from .client_slots import ClientLease
from .connection import AttemptConnection, active_connection, server_of
from .route import AttemptStream, Request, Route
from .run_base import AFTER_STOP_DRAIN, InterruptedHere, RunBase, Truncated, now
from .watchdog import Watch, watchdog

if TYPE_CHECKING:
    from .._core.machine import RunCore
    from .._health.route_health import RouteHealth

__all__ = ["Run"]


class _CallerLeft(Exception):
    """Internal: the caller stopped iterating (break, exception, KeyboardInterrupt)."""


class Run(RunBase):
    """One streaming call with its whole lifecycle; iterate it on one thread."""

    def __init__(
        self,
        *,
        core: RunCore,
        routes: tuple[Route, ...],
        request: Request,
        max_event_bytes: float = float("inf"),
        health: RouteHealth | None = None,
    ) -> None:
        super().__init__(
            core=core,
            routes=routes,
            request=request,
            max_event_bytes=max_event_bytes,
            health=health,
        )
        self._wake = threading.Event()
        self._iterator: Generator[StreamEvent, None, None] | None = None

    def interrupt(self) -> None:
        """Stop the run from any thread, at any time; the loop raises ``Interrupted``."""
        self._interrupt_requested = True
        self._wake.set()
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
    def _drive(self) -> Generator[StreamEvent, None, None]:
        core = self._core
        self.owner = threading.current_thread().name
        if core.state == "cancelled":  # closed before it was iterated (`with run: pass`)
            raise self._interrupted_error()
        route_index = 0
        while True:
            if self._interrupted:
                core.feed(InterruptRequested(at=now()))
                raise self._interrupted_error()
            if self._health is not None:
                route_index = self._admit_route(route_index)
            core.feed(AttemptStarted(at=now(), route_index=route_index))
            core.active_attempt.probe = self._probe_id is not None
            core.active_attempt.panic = self._panic
            caller_left: BaseException | None = None
            try:
                completed = yield from self._attempt(core.active_attempt)
            except _CallerLeft as left:
                caller_left = left.__cause__
                completed = False
            self._report_to_breaker()
            if completed:
                return
            interrupted = self._interrupted or caller_left is not None
            core.feed(
                CleanupFinished(at=now(), interrupted=interrupted, continuable=self._continuable())
            )
            self._log_failed_attempt(core.active_attempt)
            if caller_left is not None:
                raise caller_left
            if core.state == "cancelled":
                raise self._interrupted_error()
            if core.state == "failed":
                raise self._failure()
            decision = core.decision
            assert decision is not None
            if decision.delay > 0:  # backoff: interruptible, and never past Timeouts.total
                self._wake.wait(min(decision.delay, max(0.0, core.deadline - now())))
                if self._interrupted:
                    core.feed(InterruptRequested(at=now()))
                    raise self._interrupted_error()
            # Also without a backoff: a fallback (or a zero-delay retry) must not start
            # an attempt once Timeouts.total has run out.
            if now() >= core.deadline:
                core.feed(DeadlinePassed(at=now()))
                raise self._failure()
            route_index = decision.route_index

    def _admit_route(self, start: int) -> int:
        """The first route from ``start`` on whose breaker admits the attempt."""
        health = self._health
        assert health is not None
        self._refusals = []
        self._panic = False
        for index in range(start, len(self._routes)):
            probe_id = health.new_probe_id()
            if self._admitted(index, probe_id, health.admit(self._routes[index].name, probe_id)):
                return index
        return self._none_admitted()

    def _report_to_breaker(self) -> None:
        verdict = self._verdict()
        if verdict is not None and self._health is not None:
            self._health.report(*verdict)

    def _attempt(self, attempt: AttemptRecord) -> Generator[StreamEvent, None, bool]:
        """One attempt; returns True when it completed, else the machine is in cleanup."""
        core = self._core
        route = self._routes[attempt.route_index]
        diag = attempt.diagnostics
        connection = self._new_connection()
        self._connection = connection
        if self._interrupted:
            connection.abort(reason="engine_closed" if self._engine_closed else "interrupt")
        watch = self._watch
        builder, request = self._attempt_builder_and_request(route)
        diag.omitted_options = route.omitted_options(request)
        lease: ClientLease | None = None
        stream: AttemptStream | None = None
        chunks = 0
        left_at_stop = False
        try:
            try:
                lease = route.sync_clients.lease()
            except Exception as exc:
                diag.error_type = type(exc).__name__
                diag.cause_chain = cause_chain(exc)
                attempt.exception = kept_exception(exc)
                core.feed(AttemptFailed(at=now(), fault=client_build_fault(route, exc)))
                self._clean_up(connection, None, None)
                return False
            diag.server_address, diag.server_port = server_of(route.server_url(lease.client))
            sent_at = now()
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
                try:
                    stream = self._open(route, lease.client, request, connection)
                finally:
                    self._replenish(lease)
                diag.http_status = stream.http_status
                diag.headers = header_subset(stream.headers)
                connection.attach(stream.socket)
                events = stream.events()
                for event in events:
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
                        self._drain_after_stop(events, connection, watch)
                        break
                if builder.stop_reason is None:
                    raise Truncated
            except BaseException as exc:
                watchdog.disarm(watch)
                diag.chunks = chunks
                core.feed(self._fault_event(route, exc, watch))
                self._message = builder.build(cut_reason=core.active_attempt.reason)
                self._record_wire(attempt, connection)
                self._clean_up(connection, stream, lease)
                if stream is not None:
                    self._record_stream(attempt, stream)
                if isinstance(exc, Exception):
                    return False
                raise _CallerLeft from exc  # GeneratorExit, KeyboardInterrupt, SystemExit
            # Success. Release first, so a late abort cannot touch a connection that
            # goes back to the pool (and may serve another run next).
            connection.release()
            watchdog.disarm(watch)
            at = now()
            diag.chunks = chunks
            self._record_wire(attempt, connection)
            stream.close()
            self._record_stream(attempt, stream)
            to_close, _ = lease.slot.release(lease)
            if to_close is not None:
                route.close_client(to_close)
            self._message = builder.build()
            core.feed(StreamFinished(at=at))
            return True
        finally:
            self._connection = None

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

    def _open(
        self, route: Route, client: Any, request: Request, connection: AttemptConnection
    ) -> AttemptStream:
        """Open the attempt's request with ``connection`` as the active one. Only while
        the request is written: each step of a run may run on another thread, in another
        context (a web server's worker pool), so the variable is set and reset here, in
        one context, and never held across a ``yield``."""
        token = active_connection.set(connection)
        try:
            return route.open(client, request, self._core.timeouts)
        finally:
            active_connection.reset(token)

    def _clean_up(
        self,
        connection: AttemptConnection,
        stream: AttemptStream | None,
        lease: ClientLease | None,
    ) -> None:
        """Carry out the machine's cleanup plan on this, the run's own, thread."""
        plan = self._core.pending_cleanup
        assert plan is not None, "the machine planned no cleanup"
        route: Route = plan.route  # type: ignore[assignment]
        self._cleanup_abort(plan, connection)
        if stream is not None:
            error: BaseException | None = None
            try:
                stream.close()
            except Exception as exc:  # the socket is already shut: nothing more to lose
                error = exc
            self._cleanup_stream_closed(plan, error)
        to_close = self._cleanup_retire(plan, lease, route.sync_clients)
        if to_close is not None:
            error = None
            try:
                route.close_client(to_close)
            except Exception as exc:
                error = exc
            self._cleanup_closed(plan, lease, error)
        self._cleanup_rebuild(plan, route.sync_clients)
