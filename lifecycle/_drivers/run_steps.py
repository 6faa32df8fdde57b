"""The order of a run's attempts and of each attempt's cleanup, written once.

``run_steps(run, slot_of)`` is a generator both drivers run (the precedent is httpx's
``Auth.auth_flow``, driven by its sync and its async client alike). It owns every
decision of order: admission, then per attempt lease, open, read, and either the
success path (release the connection, close the stream, release the lease, close a
retired client) or the cleanup the machine planned (abort, close the stream, retire,
close the client, move the successor in), then the breaker's report, the end of the
cleanup, the backoff and the deadline. It records every step and feeds the machine.

It never waits and touches no socket: whatever must be *done* (awaited, in the async
driver) is yielded as a command, and the driver sends the result back in, or throws
in what the command raised. The sync driver carries the commands out on the run's own
thread; the async driver in the run's task, each close shielded and, once the caller
is leaving, bounded (``CLEANUP_BOUND``). ``ReadEvents`` is the one command each driver
carries out inline, in its own iteration: the per-event loop is the hot path, and the
events it yields go straight to the caller.

The cleanup's results carry ``leaving``: what the caller is leaving with (a
cancellation, ``GeneratorExit``), which a close of the async driver may pick up while
it runs shielded. The sync driver hands it back unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from .._core.errors import client_build_fault
from .._core.events import (
    AttemptFailed,
    AttemptStarted,
    CleanupFinished,
    DeadlinePassed,
    InterruptRequested,
    StreamFinished,
)
from .._core.redaction import cause_chain, header_subset, kept_exception
from .connection import server_of
from .run_base import Truncated, now

if TYPE_CHECKING:
    from .._core.breaker import Admission, Verdict
    from .._core.machine import CleanupPlan
    from .._core.message import MessageBuilder
    from .._core.records import AttemptRecord
    from .._core.request import Request
    from .client_slots import ClientLease, ClientSlot, _Generation
    from .connection import AttemptConnection
    from .route import AsyncAttemptStream, AttemptStream, Route
    from .route_clients import RouteClients
    from .run_base import RunBase

__all__ = [
    "Abort",
    "AdmitRoute",
    "ArmClocks",
    "Backoff",
    "CallerLeft",
    "CloseClient",
    "CloseStream",
    "Command",
    "DisarmClocks",
    "LeaseClient",
    "MoveInSuccessor",
    "OpenStream",
    "ReadEvents",
    "ReportVerdict",
    "run_steps",
]

AnyStream = Any
"""``AttemptStream`` for the sync driver, ``AsyncAttemptStream`` for the async one."""


class CallerLeft(BaseException):
    """What a driver throws into ``run_steps`` when its caller closed the iteration
    (``GeneratorExit``, held in ``exit``): ``yield from`` turns a thrown-in
    ``GeneratorExit`` into a ``close()`` of the inner step, which must not yield, and
    the cleanup after it must."""

    def __init__(self, exit: GeneratorExit) -> None:
        super().__init__(exit)
        self.exit = exit


# -- the commands: what a driver carries out, and what it sends back ---------------------
# Named tuples: immutable like the events, and cheaper to make (a dozen per attempt).
class AdmitRoute(NamedTuple):
    """Ask the route's breaker (``RouteHealth.admit``) → ``Admission``."""

    route: str
    probe_id: str


class LeaseClient(NamedTuple):
    """Lease a client of ``slot`` (built off the loop, for async) → ``ClientLease``."""

    slot: ClientSlot


class ArmClocks(NamedTuple):
    """Arm the attempt's clocks on ``connection`` → None."""

    connection: AttemptConnection
    sent_at: float
    first_token: float
    stale: float
    total_due: float


class OpenStream(NamedTuple):
    """Send the request with ``connection`` as the active one → the attempt's stream."""

    route: Route
    client: Any
    request: Request
    connection: AttemptConnection
    learned: frozenset[str]
    """What the engine learned of the route's server (``Route.open``'s ``learned``)."""


class ReadEvents(NamedTuple):
    """Deliver the stream's events to the caller until the stop (carried out inline by
    each driver) → None; what ended it is thrown in."""

    stream: AttemptStream | AsyncAttemptStream
    builder: MessageBuilder
    attempt: AttemptRecord
    connection: AttemptConnection
    sent_at: float


class DisarmClocks(NamedTuple):
    """Stop the attempt's clocks → None."""


DISARM_CLOCKS: Final = DisarmClocks()
"""The one ``DisarmClocks`` (it has no fields): yielded as it is, never made per attempt."""


class Abort(NamedTuple):
    """First step of a cleanup: shut the attempt's socket (``RunBase._cleanup_abort``)."""

    plan: CleanupPlan
    connection: AttemptConnection


class CloseStream(NamedTuple):
    """Close the attempt's stream → ``(error, leaving)``. ``answer_complete``: the
    answer is whole, a close error changes nothing, and the close may be repeated."""

    stream: AttemptStream | AsyncAttemptStream
    leaving: BaseException | None
    answer_complete: bool = False


class CloseClient(NamedTuple):
    """Close a retired client with its route's adapter → ``(error, leaving)``."""

    route: Route
    client: Any
    leaving: BaseException | None


class MoveInSuccessor(NamedTuple):
    """Move ``slot``'s spare in as the retired client's successor (waiting for its
    build if in flight; never calling the factory here) →
    ``(generation, error, leaving)``."""

    slot: ClientSlot
    leaving: BaseException | None


class ReportVerdict(NamedTuple):
    """Tell the route's breaker how the attempt ended → ``leaving``."""

    verdict: tuple[str, Verdict, str | None, float | None]
    leaving: BaseException | None


class Backoff(NamedTuple):
    """Wait ``seconds`` before the next attempt, woken early by an interrupt → None."""

    seconds: float


Command = (
    AdmitRoute
    | LeaseClient
    | ArmClocks
    | OpenStream
    | ReadEvents
    | DisarmClocks
    | Abort
    | CloseStream
    | CloseClient
    | MoveInSuccessor
    | ReportVerdict
    | Backoff
)
Steps = Generator[Command, Any, None]
SlotOf = Callable[["RouteClients"], "ClientSlot"]
"""The driver's slot of a route's clients: the sync one, or the running loop's."""


# -- the run ---------------------------------------------------------------------------
def run_steps(run: RunBase, slot_of: SlotOf) -> Steps:
    """The whole run, attempt after attempt, until it completes (returns) or ends
    failed or cancelled (raises what the caller gets)."""
    core = run._core
    if core.state == "cancelled":  # closed before it was iterated (`with run: pass`)
        raise run._interrupted_error()
    route_index = 0
    while True:
        if run._interrupted:
            core.feed(InterruptRequested(at=now()))
            raise run._interrupted_error()
        if run._health is not None:
            route_index = yield from _admit_route(run, route_index)
        core.feed(AttemptStarted(at=now(), route_index=route_index))
        attempt = core.active_attempt
        attempt.probe = run._probe_id is not None
        attempt.panic = run._panic
        completed, leaving = yield from attempt_steps(run, attempt, slot_of)
        verdict = run._verdict()
        if verdict is not None and run._health is not None:
            # Shielded like a cleanup step: a probe that never reports would hold its
            # route's half-open slot.
            leaving = yield ReportVerdict(verdict, leaving)
        if completed:
            if leaving is not None:  # the run completed; the caller was cancelled after
                raise leaving  # and must see it
            return
        interrupted = run._interrupted or leaving is not None
        core.feed(
            CleanupFinished(at=now(), interrupted=interrupted, continuable=run._continuable())
        )
        run._log_failed_attempt(attempt)
        if leaving is not None:
            raise leaving
        if core.state == "cancelled":
            raise run._interrupted_error()
        if core.state == "failed":
            raise run._failure()
        decision = core.decision
        assert decision is not None
        if decision.delay > 0:  # backoff: interruptible, and never past Timeouts.total
            try:
                yield Backoff(min(decision.delay, max(0.0, core.deadline - now())))
            except BaseException:  # the caller's cancellation: the run ends cancelled
                core.feed(InterruptRequested(at=now()))
                raise
            if run._interrupted:
                core.feed(InterruptRequested(at=now()))
                raise run._interrupted_error()
        # Also without a backoff: a fallback (or a zero-delay retry) must not start an
        # attempt once Timeouts.total has run out.
        if now() >= core.deadline:
            core.feed(DeadlinePassed(at=now()))
            raise run._failure()
        route_index = decision.route_index


def _admit_route(run: RunBase, start: int) -> Generator[Command, Any, int]:
    """The first route from ``start`` on whose breaker admits the attempt."""
    health = run._health
    assert health is not None
    run._refusals = []
    run._panic = False
    for index in range(start, len(run._routes)):
        probe_id = health.new_probe_id()
        admission: Admission = yield AdmitRoute(run._routes[index].name, probe_id)
        if run._admitted(index, probe_id, admission):
            return index
    return run._none_admitted()


# -- one attempt -------------------------------------------------------------------------
def attempt_steps(
    run: RunBase, attempt: AttemptRecord, slot_of: SlotOf
) -> Generator[Command, Any, tuple[bool, BaseException | None]]:
    """One attempt: ``(True, None)`` when it completed, else ``(False, leaving)`` with the
    machine in cleanup, its steps done and recorded."""
    core = run._core
    route = run._routes[attempt.route_index]
    clients = run._clients[attempt.route_index]
    diag = attempt.diagnostics
    leaving: BaseException | None
    connection = run._new_connection()
    run._connection = connection
    if run._interrupted:
        connection.abort(reason="engine_closed" if run._engine_closed else "interrupt")
    builder, request = run._attempt_builder_and_request(route)
    diag.omitted_options = route.omitted_options(request)
    try:
        try:
            lease: ClientLease = yield LeaseClient(slot_of(clients))
        except Exception as exc:  # the factory failed: this route cannot serve the run
            diag.error_type = type(exc).__name__
            diag.cause_chain = cause_chain(exc)
            attempt.exception = kept_exception(exc)
            core.feed(AttemptFailed(at=now(), fault=client_build_fault(route, exc)))
            leaving = yield from clean_up(run, slot_of, connection, None, None, leaving=None)
            return False, leaving
        except BaseException as exc:  # the caller left while its client was being built
            core.feed(InterruptRequested(at=now()))
            leaving = yield from clean_up(run, slot_of, connection, None, None, leaving=exc)
            return False, leaving
        diag.server_address, diag.server_port = server_of(route.server_url(lease.client))
        sent_at = now()
        connection.sent_at = sent_at
        diag.request_sent_at = sent_at - attempt.started_at
        timeouts = core.timeouts
        yield ArmClocks(
            connection,
            sent_at=sent_at,
            first_token=timeouts.first_token,
            stale=timeouts.stale,
            total_due=core.deadline,
        )
        stream: AnyStream | None = None
        try:
            try:
                stream = yield OpenStream(route, lease.client, request, connection, clients.learned)
            finally:
                run._replenish(lease)
            diag.http_status = stream.http_status
            diag.headers = header_subset(stream.headers)
            connection.attach(stream.socket)
            yield ReadEvents(stream, builder, attempt, connection, sent_at)
            if builder.stop_reason is None:
                raise Truncated
        except BaseException as exc:
            yield DISARM_CLOCKS
            core.feed(run._fault_event(route, exc, run._watch))
            run._message = builder.build(cut_reason=core.active_attempt.reason)
            run._record_wire(attempt, connection)
            if isinstance(exc, CallerLeft):
                leaving = exc.exit
            else:
                leaving = None if isinstance(exc, Exception) else exc
            leaving = yield from clean_up(run, slot_of, connection, stream, lease, leaving=leaving)
            if stream is not None:
                run._record_stream(attempt, stream)
            return False, leaving
        # Success. Release first, so a late abort cannot touch a connection that goes
        # back to the pool (and may serve another run next).
        connection.release()
        yield DISARM_CLOCKS
        at = now()
        run._record_wire(attempt, connection)
        run._message = builder.build()
        _, leaving = yield CloseStream(stream, None, answer_complete=True)
        run._record_stream(attempt, stream)
        if leaving is not None:
            # Cancelled while closing: the run ends cancelled like any other, its client
            # retired and closed by the usual cleanup.
            core.feed(InterruptRequested(at=now()))
            leaving = yield from clean_up(run, slot_of, connection, stream, lease, leaving=leaving)
            return False, leaving
        to_close, _ = lease.slot.release(lease)
        if to_close is not None:
            _, leaving = yield CloseClient(route, to_close, None)
        if leaving is None:
            core.feed(StreamFinished(at=at))
            return True, None
        # Cancelled while closing the attempt's own client (retired by another run, this
        # one its last user): that close was the cleanup's close, and it has finished.
        core.feed(InterruptRequested(at=now()))
        _clean_up_after_close(run, connection, lease)
        return False, leaving
    finally:
        run._connection = None


def clean_up(
    run: RunBase,
    slot_of: SlotOf,
    connection: AttemptConnection,
    stream: AnyStream | None,
    lease: ClientLease | None,
    *,
    leaving: BaseException | None,
) -> Generator[Command, Any, BaseException | None]:
    """Carry out the machine's cleanup plan, in its order; returns what the caller is
    leaving with, for the run to re-raise after ``CleanupFinished``."""
    plan = run._core.pending_cleanup
    assert plan is not None, "the machine planned no cleanup"
    route: Route = plan.route  # type: ignore[assignment]
    clients = run._clients_of(route)
    yield Abort(plan, connection)
    if stream is not None:
        error, leaving = yield CloseStream(stream, leaving)
        run._cleanup_stream_closed(plan, error)
    slot = slot_of(clients)
    to_close = run._cleanup_retire(plan, lease, slot)
    if to_close is not None:
        error, leaving = yield CloseClient(route, to_close, leaving)
        run._cleanup_closed(plan, lease, error)
    run._leaving = leaving is not None
    if not run._rebuild_deferred(plan):
        generation: _Generation | None
        generation, error, leaving = yield MoveInSuccessor(slot, leaving)
        run._record_successor(plan, generation, error)
    return leaving


def _clean_up_after_close(run: RunBase, connection: AttemptConnection, lease: ClientLease) -> None:
    """Record the cleanup of an attempt whose stream and client were already closed on
    the success path when the caller's cancellation arrived."""
    plan: CleanupPlan | None = run._core.pending_cleanup
    assert plan is not None, "the machine planned no cleanup"
    run._cleanup_abort(plan, connection)
    run._cleanup_stream_closed(plan, None)
    run._cleanup_closed(plan, lease, None)
    run._leaving = True
    run._rebuild_deferred(plan)
