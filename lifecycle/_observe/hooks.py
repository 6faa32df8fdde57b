"""Instrumentation hooks: what runs and route breakers tell the outside world.

``LifecycleHooks`` has a no-op method per moment; subclass it and override the ones you
need, then pass instances to ``StreamEngine(hooks=[...])``. The OpenTelemetry exporter
(``lifecycle.otel``) and the JSON-lines recorder (``lifecycle.record``) are such hooks.

Every run hook is derived from the run's own transitions, so the hooks see exactly what
the machine did, in order:

- ``on_run_start``: the run's first transition (out of ``idle``);
- ``on_transition``: every transition;
- ``on_attempt_end``: an attempt's record is complete (``finish``, or ``finish_cleanup``
  after its cleanup steps are recorded);
- ``on_run_end``: the run reached ``completed``, ``failed`` or ``cancelled``;
- ``on_breaker_change``: a route's breaker changed state (any run, any process sharing
  the store sees its own changes).

Run hooks are called on the thread or task that owns the run, inside the lifecycle:
keep them fast. A hook that raises is logged once (per hook and method) and otherwise
ignored: instrumentation never changes how a run ends.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol

from .._core.fork import renew_lock_after_fork
from .._core.machine import FINAL_STATES
from .._core.records import AttemptRecord, Transition

if TYPE_CHECKING:
    from .._core.breaker import BreakerChange
    from .._core.machine import RunCore
    from .._core.message import Message
    from .._core.request import Request
    from .._drivers.run_base import RunBase

__all__ = ["HookDispatcher", "LifecycleHooks", "RunView"]

logger = logging.getLogger("lifecycle")

ATTEMPT_ENDS: Final = frozenset({"finish", "finish_cleanup"})


class RunView(Protocol):
    """What a hook may read of a run (``Run`` and ``AsyncRun`` are such views): its
    identity, where it stands, and its records, all read-only. A hook that needs to
    stop a run keeps the ``Run`` it started instead of reaching for it here."""

    @property
    def id(self) -> str:
        """Identifies the run in hooks, telemetry and recordings."""

    @property
    def state(self) -> str:
        """The machine's state (``lifecycle.STATES``)."""

    @property
    def started_at(self) -> float:
        """Wall-clock time of the run's start, the origin of ``Transition.at``."""

    @property
    def route_names(self) -> tuple[str, ...]:
        """The engine's routes, in fallback order (``AttemptRecord.route_index`` indexes it)."""

    @property
    def owner(self) -> str | None:
        """Name of the thread (sync) or task (async) that iterates the run."""

    @property
    def request(self) -> Request:
        """What the caller asked for (history, options), as the routes receive it."""

    @property
    def message(self) -> Message | None:
        """The answer so far (final once the run is)."""

    @property
    def attempts(self) -> tuple[AttemptRecord, ...]:
        """One record per attempt, in order."""

    @property
    def history(self) -> tuple[Transition, ...]:
        """The transitions taken so far."""

    @property
    def last_progress_at(self) -> float | None:
        """Monotonic time of the active attempt's last meaningful event."""

    def diagram(self) -> str:
        """Mermaid text of the lifecycle with this run's path highlighted."""
        ...


class LifecycleHooks:
    """Override what you need; every method defaults to doing nothing. Each run hook
    receives a ``RunView`` of the run."""

    def on_run_start(self, run: RunView) -> None:
        """The run left ``idle``: its first attempt starts (or it was cancelled first)."""

    def on_transition(self, run: RunView, transition: Transition) -> None:
        """The run took ``transition``."""

    def on_attempt_end(self, run: RunView, attempt: AttemptRecord) -> None:
        """``attempt`` ended; its diagnostics, cleanup steps included, are final."""

    def on_run_end(self, run: RunView) -> None:
        """The run is final: ``run.state``, ``run.attempts`` and ``run.message`` are set."""

    def on_breaker_change(self, change: BreakerChange) -> None:
        """A route's breaker changed state."""


class HookDispatcher:
    """Fans the machine's transitions out to hooks, guarding each call."""

    def __init__(self, hooks: Sequence[LifecycleHooks]) -> None:
        for index, hook in enumerate(hooks):
            if not isinstance(hook, LifecycleHooks):
                raise TypeError(
                    f"StreamEngine(hooks=...)[{index}] must be a lifecycle.LifecycleHooks "
                    f"(subclass it), got {type(hook).__name__}"
                )
        self.hooks = tuple(hooks)
        self._reported: set[tuple[int, str]] = set()
        self._lock = threading.Lock()
        renew_lock_after_fork(self)

    def __bool__(self) -> bool:
        return bool(self.hooks)

    def listener(self, run: RunBase, core: RunCore) -> Callable[[Transition], None]:
        """The transition listener that turns one run's transitions into hook calls."""

        def listen(transition: Transition) -> None:
            if transition.source == "idle":
                self._call("on_run_start", run)
            self._call("on_transition", run, transition)
            if transition.trigger in ATTEMPT_ENDS and core.attempts:
                self._call("on_attempt_end", run, core.active_attempt)
            if transition.dest in FINAL_STATES:
                self._call("on_run_end", run)

        return listen

    def breaker_changed(self, change: BreakerChange) -> None:
        self._call("on_breaker_change", change)

    def _call(self, method: str, *args: Any) -> None:
        for hook in self.hooks:
            try:
                getattr(hook, method)(*args)
            except Exception:
                key = (id(hook), method)
                with self._lock:
                    first = key not in self._reported
                    self._reported.add(key)
                if first:
                    logger.warning(
                        "lifecycle hook %s.%s raised; ignored (reported once)",
                        type(hook).__name__,
                        method,
                        exc_info=True,
                    )
