"""The asyncio driver: a run iterated with ``async for`` inside the caller's task.

Same machine, same order of steps (``run_steps``), same decisions (``RunBase``), same
abort as the sync driver: a socket shutdown of the active attempt's connection, which
wakes the awaiting read in about 1 ms. Differences are only in waiting and closing: the
watchdog is one timer per run on the loop's own heap (``loop.call_at``, re-armed
lazily), backoff is an interruptible ``asyncio.wait_for`` on an event, and clients and
streams are closed with ``await``.

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
from typing import TYPE_CHECKING, Any, Final

from .._core.events import FirstEventReceived, InterruptRequested
from .._core.message import StreamEvent
from .._core.request import Request
from .client_slots import _Generation
from .connection import AttemptConnection, active_connection
from .route import Route
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
from .watchdog import arm_on_loop, disarm_on_loop, progressed_on_loop

if TYPE_CHECKING:
    from .._core.machine import RunCore
    from .._health.route_health import RouteHealth
    from .route_clients import RouteClients

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
    # It carries out ``run_steps``' commands in the caller's task. One async generator,
    # with the per-event loop inline: an inner async generator would not receive the
    # caller's aclose()/cancellation (there is no ``yield from`` for async generators),
    # and every layer costs time per event. Every other command is ``_carry_out``.
    async def _drive(self) -> AsyncGenerator[StreamEvent, None]:
        loop = self._loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        self.owner = f"{threading.current_thread().name}/{task.get_name() if task else '?'}"
        steps = run_steps(self, lambda clients: clients.async_slot(loop))
        watch = self._watch
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
                    result = await self._carry_out(command)
                except BaseException as exc:
                    raised = exc
                continue
            core = self._core
            attempt = command.attempt
            diag = attempt.diagnostics
            builder = command.builder
            connection = command.connection
            sent_at = command.sent_at
            chunks = 0
            left_at_stop = False
            try:
                events = command.stream.events()
                async for event in events:  # type: ignore[union-attr]
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
                        await self._drain_after_stop(loop, events, connection)  # type: ignore[arg-type]
                        break
            except GeneratorExit as exc:  # the caller closed the iteration
                raised = CallerLeft(exc)
            except BaseException as exc:  # a fault, a cancellation: run_steps decides
                raised = exc
            finally:
                diag.chunks = chunks

    async def _carry_out(self, command: Command) -> Any:
        """One command of ``run_steps``, in the run's task: every close shielded and, once
        the caller is leaving, bounded (``_settle``)."""
        match command:
            case AdmitRoute(route=route, probe_id=probe_id):
                assert self._health is not None
                return await self._health.aadmit(route, probe_id)
            case LeaseClient(slot=slot):
                return await slot.alease()
            case ArmClocks():
                assert self._loop is not None
                arm_on_loop(
                    self._loop,
                    self._watch,
                    command.connection,
                    sent_at=command.sent_at,
                    first_token=command.first_token,
                    stale=command.stale,
                    total_due=command.total_due,
                )
                return None
            case OpenStream(
                route=route,
                client=client,
                request=request,
                connection=connection,
                learned=learned,
            ):
                # Set only while the request is written, and reset in the same context:
                # each step may be awaited in a task of its own.
                token = active_connection.set(connection)
                try:
                    return await route.aopen(client, request, self._core.timeouts, learned=learned)
                finally:
                    active_connection.reset(token)
            case DisarmClocks():
                disarm_on_loop(self._watch)
                return None
            case Abort(plan=plan, connection=connection):
                self._cleanup_abort(plan, connection)
                return None
            case CloseStream(stream=stream, leaving=leaving, answer_complete=complete):
                close = stream.aclose  # type: ignore[union-attr]
                if complete and leaving is None:
                    # The answer is whole; a close error changes nothing for it.
                    return None, await _settle_idempotent(close)
                return await _settle(close(), leaving)
            case CloseClient(route=route, client=client, leaving=leaving):
                return await _settle(route.aclose_client(client), leaving)
            case MoveInSuccessor(slot=slot, leaving=leaving):
                # The spare's build (if still in flight, on the builder thread) awaited:
                # the loop never runs a factory. Shielded like a close.
                successor: list[_Generation | None] = []

                async def move_in() -> None:
                    successor.append(await slot.asuccessor())

                error, leaving = await _settle(move_in(), leaving)
                if isinstance(error, Exception) or not successor:
                    failure = (
                        error if isinstance(error, Exception) else RuntimeError("no successor")
                    )
                    return None, failure, leaving
                return successor[0], None, leaving
            case ReportVerdict(verdict=verdict, leaving=leaving):
                health = self._health
                assert health is not None
                if leaving is None:
                    return await _settle_idempotent(lambda: health.areport(*verdict))
                _, leaving = await _settle(health.areport(*verdict), leaving)
                return leaving
            case Backoff(seconds=seconds):
                wake = self._wake
                if wake is None:  # made by the first backoff: most runs never back off
                    wake = self._wake = asyncio.Event()
                    # An interrupt() before the line above found no event to set.
                    if self._interrupt_requested:
                        wake.set()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), timeout=seconds)
                return None
        raise AssertionError(f"not a command: {command!r}")

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
