"""The exceptions a caller of the engine can see, and the classified fault behind them.

::

    LifecycleError                 every error the engine raises on purpose
    ├── StreamFailed               every route was used up, a request error failed fast,
    │                              Timeouts.total ran out, or output was cut off under
    │                              RetryPolicy(on_partial="fail"); carries .attempts,
    │                              .partial_message and the last .fault; chained
    │                              (``__cause__``) to the last attempt's exception
    ├── Interrupted                run.interrupt() was called; the run ended "cancelled"
    │   └── EngineClosed           engine.close() ended the run (also a RuntimeError:
    │                              engine.stream() on a closed engine raises it)
    └── MissingCredentials         a route's client has no credentials (also a
                                   ValueError): StreamEngine(check_factories=True)
                                   raises it; in a run it is a route fault (fallback)

SDK exceptions never escape the engine: each adapter turns them into a ``Fault``
(``providers`` classify their own SDK's errors), the policy decides from the fault, and
the caller sees the fault's fields on the error it finally gets.
Caller cancellation (``KeyboardInterrupt``, ``asyncio.CancelledError``) is never
wrapped or swallowed: it propagates after a bounded cleanup.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from .records import Outcome
from .redaction import header_subset, redact

if TYPE_CHECKING:
    from .message import Message
    from .records import AttemptRecord

__all__ = [
    "EngineClosed",
    "Fault",
    "Interrupted",
    "LifecycleError",
    "MissingCredentials",
    "StreamFailed",
    "client_build_fault",
    "oversized_fault",
    "truncated_fault",
]


@dataclass(frozen=True, kw_only=True, slots=True)
class Fault:
    """Why an attempt ended without a complete answer, as the policy needs to know it.

    ``outcome`` is what the attempt record shows: ``stale`` (no meaningful event in
    time), ``dropped`` (connection lost, malformed or truncated stream, client could
    not be built), ``error`` (the provider answered with an error status or an error
    event), ``interrupted`` (the caller asked to stop), ``deadline`` (the run's
    ``Timeouts.total`` ran out while the attempt was still in time by its own clocks).
    ``retryable``: the same route may succeed on another attempt.
    ``fallback_eligible``: another route may succeed where this one cannot
    (authentication, permission, unknown model): skip this route's remaining attempts.
    A fault that is neither is a request error: fail fast with the provider's message.
    """

    outcome: Outcome
    retryable: bool
    fallback_eligible: bool
    reason: str
    http_status: int | None = None
    retry_after: float | None = None
    request_id: str | None = None
    error_type: str | None = None
    api_mode: str | None = None
    headers: Mapping[str, str] | None = None
    """Response headers of the error, if any: only those of the diagnostics' allowlist,
    redacted (the adapters filter them; ``StreamFailed`` filters any other)."""
    learned: str | None = None
    """A fact about the route's server this fault revealed, for its later attempts (an
    adapter's own word, e.g. "without_stream_options"): the engine remembers it for the
    route and passes it to the adapter's ``open`` and ``classify``."""


class LifecycleError(Exception):
    """Base of every error the engine raises on purpose."""

    retryable: bool = False
    fallback_eligible: bool = False
    retry_after: float | None = None
    api_mode: str | None = None
    http_status: int | None = None
    request_id: str | None = None


class StreamFailed(LifecycleError):
    """The run ended ``failed``: the message says why; ``.attempts`` says how."""

    def __init__(
        self,
        message: str,
        *,
        attempts: Sequence[AttemptRecord],
        fault: Fault | None,
        partial_message: Message | None = None,
    ) -> None:
        super().__init__(message)
        self.attempts = tuple(attempts)
        if fault is not None:
            # Raw response headers may echo cookies or credentials; the error keeps what
            # the records keep.
            fault = dataclasses.replace(
                fault,
                headers=header_subset(fault.headers) if fault.headers else fault.headers,
                request_id=redact(fault.request_id) if fault.request_id else fault.request_id,
            )
        self.fault = fault
        self.partial_message = partial_message
        if fault is not None:
            self.retryable = fault.retryable
            self.fallback_eligible = fault.fallback_eligible
            self.retry_after = fault.retry_after
            self.api_mode = fault.api_mode
            self.http_status = fault.http_status
            self.request_id = fault.request_id


class Interrupted(LifecycleError):
    """``run.interrupt()`` ended the run; its state is ``cancelled``."""

    def __init__(
        self, message: str = "the run was interrupted", *, attempts: Sequence[AttemptRecord] = ()
    ) -> None:
        super().__init__(message)
        self.attempts = tuple(attempts)


class EngineClosed(Interrupted, RuntimeError):
    """The run's engine was closed (``engine.close()`` or ``aclose()``): in-flight runs
    are aborted like an interrupt (a socket shutdown, no retry), and runs started after
    the close never send a request. The run's state is ``cancelled``."""

    def __init__(
        self, message: str = "the engine was closed", *, attempts: Sequence[AttemptRecord] = ()
    ) -> None:
        super().__init__(message, attempts=attempts)


class MissingCredentials(LifecycleError, ValueError):
    """A route's client could not authenticate a single request (no API key in the
    factory nor in the environment). The message names the route and what to set. It
    is this route's problem, never the request's nor the engine's: another route may
    serve the run, so in a run it ends the attempt as a fallback-eligible route fault."""

    fallback_eligible = True


# -- the faults the engine itself classifies (adapters classify their SDK's) ----------
class NamedRoute(Protocol):
    """What a fault constructor needs of a route (``Route`` has both)."""

    @property
    def name(self) -> str: ...

    @property
    def api_mode(self) -> str: ...


def client_build_fault(route: NamedRoute, exc: BaseException) -> Fault:
    """The factory could not build a client (a missing key, a wrong client type):
    this route cannot serve the run, another one may."""
    if isinstance(exc, MissingCredentials):  # already names the route and what to set
        reason = str(exc)
    else:
        reason = f"client factory of {route.name} failed: {type(exc).__name__}: {exc}"
    return Fault(
        outcome="dropped",
        retryable=False,
        fallback_eligible=True,
        reason=redact(reason)[:300],
        error_type=type(exc).__name__,
        api_mode=route.api_mode,
    )


def truncated_fault(route: NamedRoute) -> Fault:
    """The stream ended without the provider's stop: the answer may be cut off."""
    return Fault(
        outcome="dropped",
        retryable=True,
        fallback_eligible=True,
        reason="stream ended without a stop reason (truncated)",
        api_mode=route.api_mode,
    )


def oversized_fault(route: NamedRoute, detail: str) -> Fault:
    """An event larger than the engine will buffer: the provider (or a proxy) is sending
    something that is not a normal stream; retrying the same route would repeat it."""
    return Fault(
        outcome="dropped",
        retryable=False,
        fallback_eligible=True,
        reason=f"oversized event: {detail}",
        api_mode=route.api_mode,
    )
