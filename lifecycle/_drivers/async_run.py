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
import contextlib
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Final

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
from .._core.redaction import cause_chain, header_subset, kept_exception
from .client_slots import ClientLease, ClientSlot, _Generation
from .connection import AttemptConnection, active_connection, server_of
from .route import AsyncAttemptStream, Request, Route
from .run_base import AFTER_STOP_DRAIN, InterruptedHere, RunBase, Truncated, now
from .watchdog import arm_on_loop, disarm_on_loop, progressed_on_loop

if TYPE_CHECKING:
    from .._core.machine import CleanupPlan, RunCore
    from .._health.route_health import RouteHealth

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
        health: RouteHealth | None = None,
    ) -> None:
        super().__init__(
            core=core,
            routes=routes,
            request=request,
            max_event_bytes=max_event_bytes,
            health=health,
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._iterator: AsyncGenerator[StreamEvent, None] | None = None

    def interrupt(self) -> None:
        """Stop the run from any thread or from the loop; the loop raises ``Interrupted``."""
        self._interrupt_requested = True
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
            # The loop may close between the check and the call: then nobody waits.
            with contextlib.suppress(RuntimeError):
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
        if core.state == "cancelled":  # closed before it was iterated (`with run: pass`)
            raise self._interrupted_error()
        watch = self._watch
        timeouts = core.timeouts
        route_index = 0
        while True:
            if self._interrupted:
                core.feed(InterruptRequested(at=now()))
                raise self._interrupted_error()
            if self._health is not None:
                route_index = await self._admit_route(route_index)
            core.feed(AttemptStarted(at=now(), route_index=route_index))
            attempt = core.active_attempt
            attempt.probe = self._probe_id is not None
            attempt.panic = self._panic
            route = self._routes[route_index]
            diag = attempt.diagnostics
            connection = self._new_connection()
            self._connection = connection
            if self._interrupted:
                connection.abort(reason="engine_closed" if self._engine_closed else "interrupt")
            builder, request = self._attempt_builder_and_request(route)
            diag.omitted_options = route.omitted_options(request)
            lease: ClientLease | None = None
            stream: AsyncAttemptStream | None = None
            chunks = 0
            left_at_stop = False
            caller_left: BaseException | None = None
            try:
                try:
                    lease = await route.async_slot(loop).alease()
                except asyncio.CancelledError as exc:
                    # Cancelled while its client was being built (off the loop): the
                    # attempt ends interrupted, with the usual (empty) cleanup.
                    core.feed(InterruptRequested(at=now()))
                    caller_left = await self._clean_up(connection, None, None, leaving=exc)
                except Exception as exc:
                    diag.error_type = type(exc).__name__
                    diag.cause_chain = cause_chain(exc)
                    attempt.exception = kept_exception(exc)
                    core.feed(AttemptFailed(at=now(), fault=client_build_fault(route, exc)))
                    await self._clean_up(connection, None, None, leaving=None)
                else:
                    diag.server_address, diag.server_port = server_of(
                        route.server_url(lease.client)
                    )
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
                    try:
                        # Set only while the request is written, and reset in the same
                        # context: each step may be awaited in a task of its own.
                        token = active_connection.set(connection)
                        try:
                            stream = await route.aopen(lease.client, request, timeouts)
                        finally:
                            active_connection.reset(token)
                            self._replenish(lease)
                        diag.http_status = stream.http_status
                        diag.headers = header_subset(stream.headers)
                        connection.attach(stream.socket)
                        events = stream.events()
                        async for event in events:
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
                            watch.progress_at = now()
                            watch.holding = False
                            if self._interrupted and not left_at_stop:
                                raise InterruptedHere
                            if event.type == "stop":
                                await self._drain_after_stop(loop, events, connection)
                                break
                        if builder.stop_reason is None:
                            raise Truncated
                    except BaseException as exc:
                        disarm_on_loop(watch)
                        diag.chunks = chunks
                        core.feed(self._fault_event(route, exc, watch))
                        self._message = builder.build(cut_reason=core.active_attempt.reason)
                        self._record_wire(attempt, connection)
                        caller_left = await self._clean_up(
                            connection,
                            stream,
                            lease,
                            leaving=None if isinstance(exc, Exception) else exc,
                        )
                        if stream is not None:
                            self._record_stream(attempt, stream)
                    else:
                        # Release first, so a late abort cannot touch a connection that
                        # goes back to the pool (and may serve another run next).
                        connection.release()
                        disarm_on_loop(watch)
                        at = now()
                        diag.chunks = chunks
                        self._record_wire(attempt, connection)
                        self._message = builder.build()
                        # The answer is complete; a close error changes nothing for it.
                        caller_left = await _settle_idempotent(stream.aclose)
                        self._record_stream(attempt, stream)
                        if caller_left is not None:
                            # Cancelled while closing: the run ends cancelled like any
                            # other, its client retired and closed by the usual cleanup.
                            core.feed(InterruptRequested(at=now()))
                            caller_left = await self._clean_up(
                                connection, stream, lease, leaving=caller_left
                            )
                        else:
                            to_close, _ = lease.slot.release(lease)
                            if to_close is not None:
                                _, caller_left = await _settle(route.aclose_client(to_close), None)
                            if caller_left is None:
                                core.feed(StreamFinished(at=at))
                                left = await self._report_to_breaker(None)
                                if left is not None:  # the run completed; the caller
                                    raise left  # was cancelled after: it must see it
                                return
                            # Cancelled while closing the attempt's own client (retired
                            # by another run, this one its last user): that close was the
                            # cleanup's close, and it has finished, shielded.
                            core.feed(InterruptRequested(at=now()))
                            self._clean_up_after_close(connection, lease)
            finally:
                self._connection = None
            caller_left = await self._report_to_breaker(caller_left)
            interrupted = self._interrupted or caller_left is not None
            core.feed(
                CleanupFinished(at=now(), interrupted=interrupted, continuable=self._continuable())
            )
            self._log_failed_attempt(attempt)
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

    async def _drain_after_stop(
        self,
        loop: asyncio.AbstractEventLoop,
        events: AsyncIterator[StreamEvent],
        connection: AttemptConnection,
    ) -> None:
        """The answer is complete: read what is left of the body for at most
        ``AFTER_STOP_DRAIN`` (the loop's timer shuts the socket then), never retrying."""
        watch = self._watch
        progress_at = watch.progress_at
        arm_on_loop(
            loop,
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
                async for _ in events:
                    pass
        finally:
            # Released first: a body that ended handed its connection back to the pool.
            connection.release()
            disarm_on_loop(watch)
            watch.fired = None
            watch.progress_at = progress_at

    async def _admit_route(self, start: int) -> int:
        """The first route from ``start`` on whose breaker admits the attempt."""
        health = self._health
        assert health is not None
        self._refusals = []
        self._panic = False
        for index in range(start, len(self._routes)):
            probe_id = health.new_probe_id()
            admission = await health.aadmit(self._routes[index].name, probe_id)
            if self._admitted(index, probe_id, admission):
                return index
        return self._none_admitted()

    async def _report_to_breaker(self, leaving: BaseException | None) -> BaseException | None:
        """Tell the breaker how the attempt ended; shielded like a cleanup step, since a
        probe that never reports would hold its route's half-open slot."""
        verdict = self._verdict()
        health = self._health
        if verdict is None or health is None:
            return leaving
        if leaving is None:
            return await _settle_idempotent(lambda: health.areport(*verdict))
        _, leaving = await _settle(health.areport(*verdict), leaving)
        return leaving

    async def _clean_up(
        self,
        connection: AttemptConnection,
        stream: AsyncAttemptStream | None,
        lease: ClientLease | None,
        *,
        leaving: BaseException | None,
    ) -> BaseException | None:
        """Carry out the machine's cleanup plan inside the run's own task.

        ``leaving`` is what the caller is leaving with (``CancelledError``,
        ``GeneratorExit``), if anything. A cancellation that lands during the cleanup
        does not cut it short: every close goes on shielded, bounded by
        ``CLEANUP_BOUND`` once the caller is leaving. Returns what the caller leaves
        with, for the driver to re-raise after feeding ``CleanupFinished``."""
        plan = self._core.pending_cleanup
        assert plan is not None, "the machine planned no cleanup"
        route: Route = plan.route  # type: ignore[assignment]
        self._cleanup_abort(plan, connection)
        if stream is not None:
            error, leaving = await _settle(stream.aclose(), leaving)
            self._cleanup_stream_closed(plan, error)
        loop = asyncio.get_running_loop()
        to_close = self._cleanup_retire(plan, lease, route.async_slot(loop))
        if to_close is not None:
            error, leaving = await _settle(route.aclose_client(to_close), leaving)
            self._cleanup_closed(plan, lease, error)
        self._leaving = leaving is not None
        return await self._acleanup_rebuild(plan, route.async_slot(loop), leaving)

    async def _acleanup_rebuild(
        self, plan: CleanupPlan, slot: ClientSlot, leaving: BaseException | None
    ) -> BaseException | None:
        """The successor of the retired client is the slot's spare, its build (if still in
        flight, on the builder thread) awaited: the loop never runs a factory. Shielded
        like a close: a cancellation meanwhile is kept, the spare still moved in."""
        if self._rebuild_deferred(plan):
            return leaving
        successor: list[_Generation | None] = []

        async def move_in() -> None:
            successor.append(await slot.asuccessor())

        error, leaving = await _settle(move_in(), leaving)
        if isinstance(error, Exception) or not successor:
            failure = error if isinstance(error, Exception) else RuntimeError("no successor")
            self._record_successor(plan, None, failure)
        else:
            self._record_successor(plan, successor[0], None)
        return leaving

    def _clean_up_after_close(self, connection: AttemptConnection, lease: ClientLease) -> None:
        """Record the cleanup of an attempt whose stream and client were already closed
        on the success path when the caller's cancellation arrived."""
        plan = self._core.pending_cleanup
        assert plan is not None, "the machine planned no cleanup"
        self._cleanup_abort(plan, connection)
        self._cleanup_stream_closed(plan, None)
        self._cleanup_closed(plan, lease, None)
        self._leaving = True
        self._rebuild_deferred(plan)


async def _settle_idempotent(make: Callable[[], Awaitable[object]]) -> BaseException | None:
    """The success path's ``_settle``, without a task per call (a task costs a turn of the
    loop, on every run): await ``make()`` in place; if the caller's cancellation cuts it
    short, do it again, shielded and bounded, and return that cancellation. Only for
    steps that are safe to repeat (closing a finished response, a breaker report)."""
    try:
        await make()
    except asyncio.CancelledError as exc:
        _, leaving = await _settle(make(), exc)
        return leaving
    except Exception:
        pass  # a close error after a complete answer changes nothing for it
    return None


async def _settle(
    awaitable: Awaitable[object], leaving: BaseException | None
) -> tuple[BaseException | None, BaseException | None]:
    """Await one close of a cleanup to its end: returns the close's own error and what
    the caller is leaving with.

    The close runs as its own task, so a cancellation of the caller's task cannot cut it
    short (half-closed pools, connections nobody closes); the first cancellation is
    kept and returned instead, for the driver to re-raise once the run is final. Once
    the caller is leaving, the wait is bounded by ``CLEANUP_BOUND``, so a wedged close
    cannot hold the caller forever."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(awaitable)
    deadline: float | None = None
    while not task.done():
        if leaving is not None and deadline is None:
            deadline = loop.time() + CLEANUP_BOUND
        timeout = None if deadline is None else deadline - loop.time()
        if timeout is not None and timeout <= 0:
            task.cancel()
            return TimeoutError(f"close took longer than {CLEANUP_BOUND} s"), leaving
        try:
            await asyncio.wait((task,), timeout=timeout)
        except asyncio.CancelledError as exc:
            # GeneratorExit (aclose) yields to a real cancellation: the caller's task
            # must still see that it was cancelled.
            if leaving is None or isinstance(leaving, GeneratorExit):
                leaving = exc
    if task.cancelled():
        return asyncio.CancelledError("the close was cancelled"), leaving
    return task.exception(), leaving
