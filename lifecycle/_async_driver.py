"""The asyncio driver: a run iterated with ``async for`` inside the caller's task.

Same machine, same decisions (``RunBase``), same abort as the sync driver: a socket
shutdown of the active attempt's connection, which wakes the awaiting read in about
1 ms. Differences are only in waiting and closing: the watchdog is one timer per run on
the loop's own heap (``loop.call_at``, re-armed lazily), backoff is an interruptible
``asyncio.wait_for`` on an event, and clients and streams are closed with ``await``.

Cancellation from the caller (the task cancelled, an ``asyncio.timeout`` around the
loop) is never swallowed: the cleanup runs shielded and bounded in time, the run ends
``cancelled``, then ``CancelledError`` propagates.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, AsyncIterator
from types import TracebackType
from typing import TYPE_CHECKING, Final

from . import _testing
from ._abort import AttemptConnection, active_connection
from ._clients import ClientLease
from ._events import (
    AttemptFailed,
    AttemptStarted,
    CleanupFinished,
    DeadlinePassed,
    FirstEventReceived,
    InterruptRequested,
    StreamFinished,
)
from ._message import StreamEvent
from ._route import AsyncAttemptStream, Request, Route
from ._run import cause_chain
from ._run_base import InterruptedHere, RunBase, Truncated, now, watchdog_close_hook
from ._shared import client_build_fault, header_subset
from ._watchdog import arm_on_loop, disarm_on_loop, progressed_on_loop

if TYPE_CHECKING:
    from ._machine import RunCore

__all__ = ["AsyncRun"]

CLEANUP_BOUND: Final = 5.0
"""Seconds a cleanup may take when the caller's cancellation is pending."""


class AsyncRun(RunBase):
    """One streaming call with its whole lifecycle; ``async for`` it in one task."""

    def __init__(
        self,
        *,
        core: RunCore,
        routes: tuple[Route, ...],
        request: Request,
        max_event_bytes: float = float("inf"),
    ) -> None:
        super().__init__(core=core, routes=routes, request=request, max_event_bytes=max_event_bytes)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._iterator: AsyncGenerator[StreamEvent, None] | None = None

    def interrupt(self) -> None:
        """Stop the run from any thread or from the loop; the loop raises ``Interrupted``."""
        self._interrupted = True
        self._abort_active()
        loop = self._loop
        wake = self._wake
        if loop is None or wake is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            wake.set()
        elif not loop.is_closed():
            loop.call_soon_threadsafe(wake.set)

    def __aiter__(self) -> AsyncIterator[StreamEvent]:
        if self._iterator is None:
            self._iterator = self._drive()
        return self._iterator

    async def __aenter__(self) -> AsyncRun:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """End the run if the caller stopped early: cleanup runs, the state is final."""
        if self._iterator is not None:
            await self._iterator.aclose()
        elif self._core.state == "idle":
            self._core.feed(InterruptRequested(at=now()))

    # -- the driver -----------------------------------------------------------------------
    # One async generator, with the attempt inlined: an inner async generator would not
    # receive the caller's aclose()/cancellation (there is no ``yield from`` for async
    # generators), and every layer costs time per event.
    async def _drive(self) -> AsyncGenerator[StreamEvent, None]:
        core = self._core
        loop = self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        task = asyncio.current_task()
        self.owner = f"{threading.current_thread().name}/{task.get_name() if task else '?'}"
        watch = self._watch
        timeouts = core.timeouts
        route_index = 0
        while True:
            if self._interrupted:
                core.feed(InterruptRequested(at=now()))
                raise self._interrupted_error()
            core.feed(AttemptStarted(at=now(), route_index=route_index))
            attempt = core.active_attempt
            route = self._routes[route_index]
            diag = attempt.diagnostics
            connection = AttemptConnection()
            connection.byte_budget = self._max_event_bytes
            self._connection = connection
            if self._interrupted:
                connection.abort(reason="interrupt")
            builder, request = self._attempt_builder_and_request(route)
            lease: ClientLease | None = None
            stream: AsyncAttemptStream | None = None
            chunks = 0
            caller_left: BaseException | None = None
            token = active_connection.set(connection)
            try:
                try:
                    lease = route.async_clients.lease()
                except Exception as exc:
                    diag.error_type = type(exc).__name__
                    diag.cause_chain = cause_chain(exc)
                    core.feed(AttemptFailed(at=now(), fault=client_build_fault(route, exc)))
                    await self._clean_up(connection, None, None, bounded=False)
                else:
                    sent_at = now()
                    connection.sent_at = sent_at
                    diag.request_sent_at = sent_at - attempt.started_at
                    arm_on_loop(
                        loop,
                        watch,
                        connection,
                        sent_at=sent_at,
                        first_token=timeouts.first_token,
                        stale=timeouts.stale,
                        total_due=core.deadline,
                    )
                    watch.fire_hook = None
                    if _testing.close_on_watchdog:  # test-only mutation, see _testing
                        watch.fire_hook = watchdog_close_hook(
                            route, lease.client, attempt, is_async=True
                        )
                    try:
                        stream = await route.aopen(lease.client, request, timeouts)
                        diag.http_status = stream.http_status
                        diag.headers = header_subset(stream.headers)
                        connection.attach(stream.socket)
                        async for event in stream.events():
                            if chunks == 0:
                                at = now()
                                diag.ttft = at - sent_at
                                core.feed(FirstEventReceived(at=at))
                                watch.progress_at = at
                                progressed_on_loop(loop, watch)
                                restart = self._restart_event(attempt)
                                if restart is not None:
                                    # Holding the restart event is the caller's time too.
                                    watch.holding = True
                                    yield restart
                                    watch.progress_at = now()
                                    watch.holding = False
                            builder.add(event)
                            connection.bytes_at_progress = connection.bytes_read
                            chunks += 1
                            watch.holding = True
                            yield event
                            watch.progress_at = now()
                            watch.holding = False
                            if self._interrupted:
                                raise InterruptedHere
                        if builder.stop_reason is None:
                            raise Truncated
                    except BaseException as exc:
                        disarm_on_loop(watch)
                        diag.chunks = chunks
                        core.feed(self._fault_event(route, exc, watch))
                        self._message = builder.build(cut_reason=core.active_attempt.reason)
                        self._record_wire(attempt, connection)
                        leaving = not isinstance(exc, Exception)
                        await self._clean_up(connection, stream, lease, bounded=leaving)
                        if stream is not None:
                            diag.unknown_events = stream.unknown_events
                        if leaving:  # CancelledError, GeneratorExit, KeyboardInterrupt
                            caller_left = exc
                    else:
                        # Release first, so a late abort cannot touch a connection that
                        # goes back to the pool (and may serve another run next).
                        connection.release()
                        disarm_on_loop(watch)
                        at = now()
                        diag.chunks = chunks
                        self._record_wire(attempt, connection)
                        await stream.aclose()
                        diag.unknown_events = stream.unknown_events
                        to_close, _ = lease.slot.release(lease)
                        if to_close is not None:
                            await route.aclose_client(to_close)
                        self._message = builder.build()
                        core.feed(StreamFinished(at=at))
                        return
            finally:
                active_connection.reset(token)
                self._connection = None
            self._log_failed_attempt(attempt)
            interrupted = self._interrupted or caller_left is not None
            core.feed(
                CleanupFinished(at=now(), interrupted=interrupted, continuable=self._continuable())
            )
            if caller_left is not None:
                raise caller_left
            if core.state == "cancelled":
                raise self._interrupted_error()
            if core.state == "failed":
                raise self._failure()
            decision = core.decision
            assert decision is not None
            if decision.delay > 0:  # backoff: interruptible, and never past Timeouts.total
                wait = min(decision.delay, max(0.0, core.deadline - now()))
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=wait)
                except TimeoutError:
                    pass
                except asyncio.CancelledError:
                    core.feed(InterruptRequested(at=now()))
                    raise
                if self._interrupted:
                    core.feed(InterruptRequested(at=now()))
                    raise self._interrupted_error()
            # Also without a backoff: a fallback (or a zero-delay retry) must not start
            # an attempt once Timeouts.total has run out.
            if now() >= core.deadline:
                core.feed(DeadlinePassed(at=now()))
                raise self._failure()
            route_index = decision.route_index

    async def _clean_up(
        self,
        connection: AttemptConnection,
        stream: AsyncAttemptStream | None,
        lease: ClientLease | None,
        *,
        bounded: bool,
    ) -> None:
        """Carry out the machine's cleanup plan inside the run's own task. When the caller
        is leaving (cancelled), the awaits are shielded and bounded by ``CLEANUP_BOUND``."""
        plan = self._core.pending_cleanup
        assert plan is not None, "the machine planned no cleanup"
        route: Route = plan.route  # type: ignore[assignment]
        self._cleanup_abort(plan, connection)
        if stream is not None and _testing.leak_connection:
            _testing.leaked.append(stream)  # keep it referenced: nothing closes it
            stream = None
        if stream is not None:
            error: BaseException | None = None
            try:
                await _maybe_bounded(stream.aclose(), bounded)
            except Exception as exc:  # the socket is already shut: nothing more to lose
                error = exc
            self._cleanup_stream_closed(plan, error)
        to_close = self._cleanup_retire(plan, lease, route.async_clients)
        if to_close is not None:
            error = None
            try:
                await _maybe_bounded(route.aclose_client(to_close), bounded)
            except Exception as exc:
                error = exc
            self._cleanup_closed(plan, lease, error)
        self._cleanup_rebuild(plan, route.async_clients)


async def _maybe_bounded(awaitable: object, bounded: bool) -> None:
    from collections.abc import Awaitable
    from typing import cast

    coroutine = cast(Awaitable[object], awaitable)
    if not bounded:
        await coroutine
        return
    # The caller's cancellation was already delivered once; shield the close from a
    # second one and bound it so a wedged close cannot hold the caller forever.
    await asyncio.wait_for(asyncio.shield(asyncio.ensure_future(coroutine)), CLEANUP_BOUND)
