"""What the sync and async drivers share: the run's public surface and its bookkeeping.

The order of an attempt and its cleanup is ``run_steps``; the drivers differ only in
how they carry its commands out (a blocking call or an ``await``). Fault
classification, the cleanup steps' records, the restart event, the failure message and
the log line are here, so the two cannot drift apart.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from .._core.errors import (
    EngineClosed,
    Fault,
    Interrupted,
    StreamFailed,
    oversized_fault,
    truncated_fault,
)
from .._core.events import (
    AttemptFailed,
    InterruptRequested,
    RoutesExhausted,
    RouteSkipped,
    StallDetected,
)
from .._core.machine import failure_message
from .._core.message import Message, MessageBuilder, Restart, StreamEvent
from .._core.records import AttemptRecord, CleanupStep, Diagnostics, Transition
from .._core.redaction import cause_chain, exception_chain, kept_exception, redact
from .._core.request import Request
from .._health.route_health import verdict_of
from .client_slots import ClientLease, ClientSlot, _Generation
from .connection import AttemptConnection, OversizedEvent
from .route import AsyncAttemptStream, AttemptStream, Route
from .watchdog import Watch

if TYPE_CHECKING:
    from .._core.breaker import Admission, Verdict
    from .._core.machine import CleanupPlan, RunCore
    from .._health.route_health import RouteHealth
    from .route_clients import RouteClients

__all__ = ["RunBase"]

logger = logging.getLogger("lifecycle")
# A library logs, the application decides where to: no output unless it configures logging.
logger.addHandler(logging.NullHandler())
now = time.monotonic

_run_ids = random.Random(os.urandom(16))
"""Draws the runs' ids: ``uuid.uuid4()`` reads ``os.urandom`` per run, a system call
that also hands the GIL to any other thread. An id names a run; it is no secret."""


def new_run_id() -> str:
    """16 hex digits, as ``uuid.uuid4().hex[:16]`` gave."""
    return f"{_run_ids.getrandbits(64):016x}"


def _reseed_run_ids_in_child() -> None:
    # A forked child holds its parent's generator state: without this, each worker of a
    # pre-fork server would give its runs the ids of the parent's (and each other's) next runs.
    _run_ids.seed(os.urandom(16))


os.register_at_fork(after_in_child=_reseed_run_ids_in_child)


AFTER_STOP_DRAIN = 0.2
"""Seconds the rest of a body may take once the stop event was delivered. A provider
ends its body right after the stop, and reading that end lets the keep-alive connection
serve the next run; a body held open past this (silent, or keep-alives) is shut and
closed, and the answer is complete all the same."""


class InterruptedHere(Exception):
    """Internal: interrupt() was seen between two events on the owning thread or task."""


class Truncated(Exception):
    """Internal: the stream ended without the provider's stop."""

    def __init__(self) -> None:
        # Kept on the attempt record: its text is what a caller reads there.
        super().__init__("the stream ended without the provider's stop")


class RunBase:
    """State and records of one run; the drivers add iteration."""

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
        self._core = core
        self._health = health
        self._probe_id: str | None = None
        """The active attempt's id with its breaker, if it is the route's probe."""
        self._refusals: list[tuple[int, str, float | None]] = []
        """Each route of the current admission sweep that refused the run: (index, why,
        when it last failed)."""
        self._admitted_at: float | None = None
        """The breaker's time of the active attempt's admission (``Admission.at``)."""
        self._panic = False
        """The active attempt goes ahead although its route refused it (panic mode)."""
        self.id = new_run_id()
        """Identifies the run in hooks, telemetry and recordings."""
        self.started_at = time.time() - (time.monotonic() - core.started_at)
        """Wall-clock time of the run's start, the origin of ``Transition.at`` (and of
        ``Timeouts.total``)."""
        self.route_names = tuple(route.name for route in routes)
        self._max_event_bytes = max_event_bytes
        self._routes = routes
        self._clients = clients
        """The engine's clients (and learned facts) of each route, in chain order."""
        self._request = request
        self._interrupt_requested = False
        self._closed_by_engine = False
        self._engine_closing: threading.Event | None = None
        """Set by the engine the moment its close() begins, before close() reaches this
        run: from then on the run counts as interrupted, and its transport writes no
        request (``AttemptConnection.closing``)."""
        self._leaving = False
        """The caller's task is leaving (async: cancelled during a cleanup)."""
        self._connection: AttemptConnection | None = None
        self._watch = Watch()
        self._message: Message | None = None
        self._prefix = ""
        """Text delivered and being continued under on_partial="continue"."""
        self.owner: str | None = None
        """Name of the thread (sync) or task (async) that owns the run."""

    def _clients_of(self, route: Route) -> RouteClients:
        """The engine's clients of ``route`` (a cleanup plan names its route)."""
        for clients in self._clients:
            if clients.route is route:
                return clients
        raise AssertionError(f"{route!r} is not a route of this run")

    # -- public surface -----------------------------------------------------------------
    @property
    def state(self) -> str:
        return self._core.state

    @property
    def request(self) -> Request:
        """What the caller asked for (each attempt sends it, translated by its route)."""
        return self._request

    @property
    def message(self) -> Message | None:
        """The final attempt's output (a partial one if the run did not complete)."""
        return self._message

    @property
    def last_progress_at(self) -> float | None:
        """``time.monotonic()`` of the attempt's last meaningful event (or the caller's
        return from its loop body); None before the attempt's first event."""
        return self._watch.progress_at

    @property
    def attempts(self) -> tuple[AttemptRecord, ...]:
        return tuple(self._core.attempts)

    @property
    def history(self) -> tuple[Transition, ...]:
        return tuple(self._core.history)

    def diagram(self) -> str:
        """Mermaid text of the lifecycle with this run's path highlighted."""
        from .._observe.diagram import run_diagram

        return run_diagram(self._core.history, self._core.attempts)

    def interrupt(self) -> None:
        raise NotImplementedError  # each driver wakes its own kind of wait

    def end_by_engine_close(self) -> None:
        """``engine.close()``: stop the run as ``interrupt()`` does (from the closing
        thread, by a socket shutdown only), ending it with ``EngineClosed``."""
        self._closed_by_engine = True
        self.interrupt()

    def bind_engine_closing(self, closing: threading.Event) -> None:
        """The engine's close flag (see ``_engine_closing``)."""
        self._engine_closing = closing

    @property
    def _engine_closed(self) -> bool:
        """The engine was closed: the interrupt is its, and so is the error raised."""
        closing = self._engine_closing
        return self._closed_by_engine or (closing is not None and closing.is_set())

    @property
    def _interrupted(self) -> bool:
        # Asked between every two events: _engine_closed's test inlined (one call less).
        if self._interrupt_requested or self._closed_by_engine:
            return True
        closing = self._engine_closing
        return closing is not None and closing.is_set()

    def _new_connection(self) -> AttemptConnection:
        """The attempt's connection, refused once the engine is closing."""
        connection = AttemptConnection()
        connection.byte_budget = self._max_event_bytes
        connection.closing = self._engine_closing
        return connection

    def _abort_active(self) -> None:
        connection = self._connection
        if connection is not None:
            connection.abort(reason="engine_closed" if self._engine_closed else "interrupt")

    # -- route health: the breakers around each attempt -----------------------------------
    def _admitted(self, index: int, probe_id: str, admission: Admission) -> bool:
        """Apply one breaker answer: True if the attempt may use route ``index`` (the
        drivers then start it, after the refused routes before it are skipped). A
        refusal is kept for ``_none_admitted``."""
        self._admitted_at = admission.at
        if admission.kind != "refuse":
            self._probe_id = probe_id if admission.kind == "probe" else None
            self._skip_refused(before=index)
            return True
        route = self._routes[index]
        if admission.state == "open" and admission.reopen_at is not None:
            wait = max(0.0, admission.reopen_at - time.time())
            why = f"{route.name}: breaker open, next probe in {wait:.1f}s"
        else:
            why = f"{route.name}: breaker half-open, its one probe is out"
        self._refusals.append((index, why, admission.failed_at))
        return False

    def _skip_refused(self, *, before: int) -> None:
        for index, why, _ in self._refusals:
            if index < before:
                self._core.feed(RouteSkipped(at=now(), route_index=index, reason=why))
        self._refusals = []

    def _none_admitted(self) -> int:
        """No route from the sweep's first onward admitted the run. Panic mode: the run
        still tries the one that failed least recently (the likeliest to have
        recovered), since refusing every run would be worse than having no breaker;
        with ``fail_fast_when_all_open`` it fails at once instead."""
        assert self._health is not None and self._refusals
        if self._health.policy.fail_fast_when_all_open:
            last = self._refusals[-1][0]
            reasons = "; ".join(why for _, why, _ in self._refusals)
            self._skip_refused(before=last)
            self._core.feed(
                RoutesExhausted(at=now(), reason=f"no route admits the run ({reasons})")
            )
            raise self._failure()
        index, _, _ = min(
            self._refusals, key=lambda refusal: (refusal[2] or float("-inf"), refusal[0])
        )
        self._skip_refused(before=index)
        self._probe_id = None
        self._panic = True
        return index

    def _verdict(self) -> tuple[str, Verdict, str | None, float | None] | None:
        """What to tell the active attempt's route's breaker, once the attempt ended."""
        if self._health is None or not self._core.attempts:
            return None
        attempt = self._core.active_attempt
        fault = None if attempt.outcome == "completed" else self._core.last_fault
        probe_id, self._probe_id = self._probe_id, None
        route = self._routes[attempt.route_index]
        verdict = verdict_of(attempt.outcome or "interrupted", fault)
        return route.name, verdict, probe_id, self._admitted_at

    # -- shared decisions -----------------------------------------------------------------
    def _continuable(self) -> bool:
        """Everything the caller has seen is plain text (no tool call, no thinking)."""
        message = self._message
        return (
            message is not None
            and bool(self._prefix + message.text)
            and not message.tool_calls
            and not message.incomplete_tool_calls
            and not message.thinking
        )

    def _attempt_builder_and_request(self, route: Route) -> tuple[MessageBuilder, Request]:
        """The builder and request of the next attempt. Under on_partial="continue" the
        delivered text becomes an assistant prefix the provider continues, and the
        builder starts from it, so ``run.message`` is the stitched answer."""
        builder = MessageBuilder(api_mode=route.api_mode, model=route.model)
        core = self._core
        if core.restart_pending:  # the caller discards what it saw: nothing to continue
            self._prefix = ""
        if core.continue_pending and self._message is not None:
            core.continue_pending = False
            self._prefix += self._message.text[len(self._prefix) :]
        if not self._prefix:
            return builder, self._request
        builder.add(StreamEvent(type="text", text=self._prefix))
        # Providers reject an assistant prefix that ends in whitespace; the stitched text
        # keeps it, and the continuation supplies its own leading space.
        prefix = {"role": "assistant", "content": self._prefix.rstrip()}
        return builder, replace(self._request, messages=(*self._request.messages, prefix))

    def _restart_event(self, attempt: AttemptRecord) -> StreamEvent | None:
        core = self._core
        if not core.restart_pending:
            return None
        core.restart_pending = False
        return StreamEvent(
            type="restart",
            restart=Restart(
                reason=core.attempts[-2].reason or "restart",
                attempt=attempt.number,
                route_index=attempt.route_index,
                api_mode=attempt.api_mode,
            ),
        )

    def _fault_event(
        self, route: Route, exc: BaseException, watch: Watch
    ) -> StallDetected | AttemptFailed | InterruptRequested:
        at = now()
        diag = self._core.active_attempt.diagnostics
        if watch.fired is not None and watch.fired_deadline is not None:
            diag.stall_deadline = watch.fired_deadline
            if watch.fired_at is not None:
                diag.detection_lateness = watch.fired_at - watch.fired_deadline
            clock = watch.fired
            assert clock in ("first_token", "stale", "total")
            if isinstance(exc, Exception):
                self._core.active_attempt.exception = kept_exception(exc)
            return StallDetected(at=at, clock=clock, deadline=watch.fired_deadline)  # type: ignore[arg-type]
        if self._interrupted or isinstance(exc, InterruptedHere) or not isinstance(exc, Exception):
            return InterruptRequested(at=at)
        event = self._failure_event(route, exc, diag, at)
        self._core.active_attempt.exception = kept_exception(exc)
        return event

    def _failure_event(
        self, route: Route, exc: Exception, diag: Diagnostics, at: float
    ) -> AttemptFailed:
        if isinstance(exc, Truncated):
            return AttemptFailed(at=at, fault=truncated_fault(route))
        oversized = _oversized_cause(exc)
        if oversized is not None:
            diag.error_type = type(oversized).__name__
            return AttemptFailed(at=at, fault=oversized_fault(route, str(oversized)))
        clients = self._clients[self._core.active_attempt.route_index]
        fault: Fault = route.classify(exc, learned=clients.learned)
        if fault.learned is not None:
            clients.learn(fault.learned)
        diag.error_type = type(exc).__name__
        diag.cause_chain = cause_chain(exc)
        return AttemptFailed(at=at, fault=fault)

    def _record_stream(
        self, attempt: AttemptRecord, stream: AttemptStream | AsyncAttemptStream
    ) -> None:
        """What the adapter learnt of the response (read after its close)."""
        diag = attempt.diagnostics
        diag.unknown_events = stream.unknown_events
        diag.response_id = stream.response_id
        diag.response_model = stream.response_model

    def _record_wire(self, attempt: AttemptRecord, connection: AttemptConnection) -> None:
        diag = attempt.diagnostics
        diag.bytes = connection.bytes_read
        if connection.first_byte_at is not None and connection.sent_at is not None:
            diag.ttfb = connection.first_byte_at - connection.sent_at

    def _failure(self) -> StreamFailed:
        core = self._core
        message = failure_message(core)
        self._log_failed_run(message)
        error = StreamFailed(
            message,
            attempts=core.attempts,
            fault=core.last_fault,
            partial_message=self._message if core.committed else None,
        )
        # As `raise ... from`: a traceback (or an error tracker) shows the exception
        # that ended the last attempt, not only its text.
        error.__cause__ = core.attempts[-1].exception if core.attempts else None
        return error

    def _interrupted_error(self) -> Interrupted:
        if self._engine_closed:
            return EngineClosed(attempts=self._core.attempts)
        return Interrupted(attempts=self._core.attempts)

    # -- logs: fields as LogRecord attributes, the names of the recording's attempt_end ------
    def _attempt_fields(self, attempt: AttemptRecord) -> dict[str, Any]:
        return {
            "run_id": self.id,
            "route": redact(self._routes[attempt.route_index].name),
            **attempt.as_dict(),
        }

    def _log_failed_attempt(self, attempt: AttemptRecord) -> None:
        """After the cleanup's decision: an attempt the run goes on from is INFO (the
        engine did its job); a failed run's last attempt is logged with the run."""
        core = self._core
        if core.state == "failed" or not logger.isEnabledFor(logging.INFO):
            return
        if core.state == "cancelled":
            then = "the run is cancelled"
        elif core.decision is not None and core.decision.route_index != attempt.route_index:
            then = "the run falls back"
        else:
            then = "the run retries"
        logger.info(
            "lifecycle run %s: attempt %d on %s ended %s (%s); %s",
            self.id,
            attempt.number,
            redact(self._routes[attempt.route_index].name),
            attempt.outcome,
            attempt.reason,
            then,
            extra=self._attempt_fields(attempt),
        )

    def _log_failed_run(self, message: str) -> None:
        if not logger.isEnabledFor(logging.WARNING):
            return
        attempts = self._core.attempts
        fields: dict[str, Any] = self._attempt_fields(attempts[-1]) if attempts else {}
        fields.update(
            run_id=self.id, state="failed", attempts=len(attempts), reason=redact(message)
        )
        logger.warning("lifecycle run %s failed: %s", self.id, fields["reason"], extra=fields)

    # -- cleanup, split around the two places where a driver must wait --------------------
    def _cleanup_abort(self, plan: CleanupPlan, connection: AttemptConnection) -> None:
        steps = plan.attempt.diagnostics.cleanup
        here = _here()
        base = plan.attempt.started_at
        if connection.aborted and connection.aborted_by != here:
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
                thread=here,
                at=now() - base,
                detail="socket shutdown" if shut else "no live socket",
            )
        )
        connection.release()

    def _cleanup_stream_closed(self, plan: CleanupPlan, error: BaseException | None) -> None:
        detail = "" if error is None else redact(repr(error))[:200]
        plan.attempt.diagnostics.cleanup.append(
            CleanupStep(
                step="close_stream",
                thread=_here(),
                at=now() - plan.attempt.started_at,
                detail=detail,
            )
        )

    def _cleanup_retire(
        self, plan: CleanupPlan, lease: ClientLease | None, slot: ClientSlot
    ) -> Any | None:
        """Retire the attempt's client in the plan's route; returns a client to close now."""
        if lease is None:
            return None
        slot.retire(lease)
        to_close, others = lease.slot.release(lease)
        if to_close is None:
            plan.attempt.diagnostics.cleanup.append(
                CleanupStep(
                    step="close",
                    thread=_here(),
                    at=now() - plan.attempt.started_at,
                    detail=f"{plan.api_mode} client retired; closed by the last of {others} "
                    "other run(s) still using it",
                )
            )
        return to_close

    def _cleanup_closed(
        self, plan: CleanupPlan, lease: ClientLease | None, error: BaseException | None
    ) -> None:
        number = lease.number if lease is not None else "?"
        detail = f"{plan.api_mode} client generation {number}"
        if error is not None:
            detail += f": {redact(repr(error))[:200]}"
        plan.attempt.diagnostics.cleanup.append(
            CleanupStep(
                step="close", thread=_here(), at=now() - plan.attempt.started_at, detail=detail
            )
        )

    def _replenish(self, lease: ClientLease) -> None:
        """The attempt's request is out (or failed): the builder may make the slot's next
        spare now, off this run's path. Not once the engine is closing: close() has
        taken the spares, and a build begun after it would outlive it."""
        if not self._engine_closed:
            lease.slot.replenish()

    def _rebuild_deferred(self, plan: CleanupPlan) -> bool:
        """The run is ending (cancelled, or out of ``Timeouts.total``): the retired client's
        successor is not moved in, recorded as deferred. True if so."""
        cancelled = self._core.interrupt_requested or self._interrupted or self._leaving
        out_of_time = self._core.total_expired or now() >= self._core.deadline
        if cancelled or out_of_time:
            # The run is ending: waiting for a spare's build in flight would only delay
            # the caller. The slot keeps its spare (if any) for the next run's lease.
            why = "this one is cancelled" if cancelled else "Timeouts.total ran out"
            plan.attempt.diagnostics.cleanup.append(
                CleanupStep(
                    step="rebuild",
                    thread=_here(),
                    at=now() - plan.attempt.started_at,
                    detail=f"{plan.api_mode}: deferred to the next run ({why})",
                )
            )
            return True
        return False

    def _record_successor(
        self, plan: CleanupPlan, generation: _Generation | None, error: Exception | None
    ) -> None:
        if error is not None:
            detail = f"{plan.api_mode}: rebuild failed: {redact(repr(error))[:200]}"
        else:
            assert generation is not None
            detail = f"{plan.api_mode} client generation {generation.number}"
        plan.attempt.diagnostics.cleanup.append(
            CleanupStep(
                step="rebuild", thread=_here(), at=now() - plan.attempt.started_at, detail=detail
            )
        )


def _oversized_cause(exc: BaseException) -> OversizedEvent | None:
    """The engine's own ``OversizedEvent``, raised from inside the SDK's read, however the
    SDK wrapped it: anthropic 2.17 re-raises every error of a body read as an
    ``APIConnectionError`` (``from`` it), which would make a refused line a retryable drop."""
    return next((link for link in exception_chain(exc) if isinstance(link, OversizedEvent)), None)


def _here() -> str:
    """The owner's name as cleanup records it: the thread, and the task if there is one."""
    name = threading.current_thread().name
    try:
        import asyncio

        task = asyncio.current_task()
    except RuntimeError:
        task = None
    if task is not None:
        return f"{name}/{task.get_name()}"
    return name
