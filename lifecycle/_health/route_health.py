"""Route health shared by every run of an engine: where breakers live and how runs ask them.

``HealthStore`` is where breaker cores are kept. An operation loads one route's core,
applies a change and saves it as one atomic step, so concurrent runs (threads, tasks,
or processes sharing a ``lifecycle._health.redis_store.RedisHealthStore``) never interleave
inside a breaker transition. ``LocalHealthStore`` (the default) keeps them in this
process under a lock.

``RouteHealth`` is what the drivers call: ``admit`` before an attempt, ``report`` after
it. It maps an attempt's outcome to a breaker verdict, reads the clock (wall time, so
breakers mean the same on every machine), and hands breaker changes to the hooks. It
never fails a run: a store that raises is logged and the local store takes over.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from .._core.breaker import Admission, BreakerChange, BreakerCore, Verdict
from .._core.config import BreakerPolicy
from .._core.errors import Fault
from .._core.redaction import redact

__all__ = ["BreakerStatus", "HealthStore", "LocalHealthStore", "RouteHealth", "verdict_of"]

logger = logging.getLogger("lifecycle")
T = TypeVar("T")


class HealthStore(Protocol):
    """Keeps breaker cores; ``update`` is one atomic load-apply-save of one route."""

    def update(
        self, route: str, policy: BreakerPolicy, change: Callable[[BreakerCore], T]
    ) -> T: ...

    def aupdate(
        self, route: str, policy: BreakerPolicy, change: Callable[[BreakerCore], T]
    ) -> Awaitable[T]: ...

    def snapshot(self, routes: tuple[str, ...], policy: BreakerPolicy) -> dict[str, BreakerCore]:
        """Current cores of ``routes`` (a copy: changing them changes nothing)."""
        ...


class LocalHealthStore:
    """Breakers in this process, shared by every engine given the same store.

    Cores are kept as objects, not serialized: an admission and a report cost a lock and
    a few comparisons, on every run's path."""

    def __init__(self) -> None:
        self._cores: dict[str, BreakerCore] = {}
        self._lock = threading.Lock()
        _ALL_LOCAL_STORES.add(self)

    def update(self, route: str, policy: BreakerPolicy, change: Callable[[BreakerCore], T]) -> T:
        with self._lock:
            core = self._cores.get(route)
            if core is None:
                core = self._cores[route] = BreakerCore(route=route, policy=policy)
            core.policy = policy
            core.changes = []
            return change(core)

    async def aupdate(
        self, route: str, policy: BreakerPolicy, change: Callable[[BreakerCore], T]
    ) -> T:
        # A dict under a lock held for microseconds: no reason to leave the loop.
        return self.update(route, policy, change)

    def snapshot(self, routes: tuple[str, ...], policy: BreakerPolicy) -> dict[str, BreakerCore]:
        with self._lock:
            fields = {
                route: self._cores[route].to_fields() if route in self._cores else {}
                for route in routes
            }
        return {
            route: BreakerCore.from_fields(data, route=route, policy=policy)
            for route, data in fields.items()
        }


@dataclass(frozen=True, kw_only=True, slots=True)
class BreakerStatus:
    """One route's breaker, as an operator sees it."""

    route: str
    state: str
    failures: int
    stale: int
    dropped: int
    openings: int
    reopen_in: float | None
    """Seconds until an open breaker lets a probe through (None if not open)."""


def verdict_of(outcome: str, fault: Fault | None) -> Verdict:
    """What an attempt's end tells its route's breaker. Stalls count against the route,
    and so do provider faults worth retrying or falling back from (5xx, 529, 429, a
    dropped connection, bad credentials); the caller's own errors (400), interrupts and
    its ``Timeouts.total`` judge nothing. (``total`` is the caller's budget, and it runs
    on while the caller holds an event: an attempt it ends is outcome ``deadline``, never
    ``stale``, so only the provider's first_token and stale clocks make a stall.)"""
    if outcome == "completed":
        return "success"
    if outcome == "stale":
        return "stale"
    if outcome in ("deadline", "interrupted") or fault is None:
        return "neutral"
    if fault.retryable or fault.fallback_eligible:
        return "dropped"
    return "neutral"


class RouteHealth:
    """The engine's view of its routes' breakers; see the module docstring."""

    def __init__(
        self,
        *,
        policy: BreakerPolicy,
        store: HealthStore | None = None,
        on_change: Callable[[BreakerChange], None] | None = None,
        clock: Callable[[], float] = time.time,
        store_retry_after: float = 5.0,
    ) -> None:
        """``clock`` is the wall clock breakers are judged by (a test may pass its own);
        after the shared store fails, the local store serves for ``store_retry_after``
        seconds before the shared one is tried again."""
        self.policy = policy
        self.store: HealthStore = store if store is not None else LocalHealthStore()
        self._fallback_store = LocalHealthStore()
        self._on_change = on_change
        self._clock = clock
        self._store_retry_after = store_retry_after
        self._probe_prefix = uuid.uuid4().hex[:16] + "-"
        self._probe_counter = itertools.count(1)
        self._degraded_until = 0.0
        self._warned = False
        self._lock = threading.Lock()
        """Guards ``_degraded_until`` and ``_warned``: runs on many threads report."""
        _ALL_ROUTE_HEALTH.add(self)

    def _renew_after_fork(self) -> None:
        # The parent's lock may have been held by another of its threads at the fork;
        # and each worker forked from one engine needs probe ids of its own, or a
        # fleet-wide store takes one worker's half-open probe for another's.
        self._lock = threading.Lock()
        self._probe_prefix = uuid.uuid4().hex[:16] + "-"
        self._probe_counter = itertools.count(1)

    # -- what drivers call --------------------------------------------------------------
    def new_probe_id(self) -> str:
        """Unique across the fleet: this engine's random prefix and a counter (an id is
        drawn for every attempt, so it must be cheap)."""
        return f"{self._probe_prefix}{next(self._probe_counter)}"

    def admit(self, route: str, probe_id: str) -> Admission:
        at = self._clock()
        return self._apply(route, lambda core: core.admit(at, probe_id=probe_id))

    async def aadmit(self, route: str, probe_id: str) -> Admission:
        at = self._clock()
        return await self._aapply(route, lambda core: core.admit(at, probe_id=probe_id))

    def report(
        self,
        route: str,
        verdict: Verdict,
        probe_id: str | None,
        admitted_at: float | None = None,
    ) -> None:
        """``admitted_at``: the attempt's ``Admission.at`` (failures of attempts in flight
        together are one incident); None counts the failure as an incident of its own."""
        at = self._clock()
        self._apply(
            route,
            lambda core: core.report(at, verdict, probe_id=probe_id, admitted_at=admitted_at),
        )

    async def areport(
        self,
        route: str,
        verdict: Verdict,
        probe_id: str | None,
        admitted_at: float | None = None,
    ) -> None:
        at = self._clock()
        await self._aapply(
            route,
            lambda core: core.report(at, verdict, probe_id=probe_id, admitted_at=admitted_at),
        )

    def status(self, routes: tuple[str, ...]) -> dict[str, BreakerStatus]:
        """Every route's breaker now, for dashboards (``lifecycle demo --watch``)."""
        now = self._clock()
        try:
            cores = self._store().snapshot(routes, self.policy)
        except Exception as exc:
            self._degrade(exc)
            cores = self._fallback_store.snapshot(routes, self.policy)
        result = {}
        for route, core in cores.items():
            core.advance(now)
            reopen = None
            if core.state == "open" and core.reopen_at is not None:
                reopen = max(0.0, core.reopen_at - now)
            result[route] = BreakerStatus(
                route=route,
                state=core.state,
                failures=core.failures,
                stale=core.stale,
                dropped=core.dropped,
                openings=core.openings,
                reopen_in=reopen,
            )
        return result

    # -- the store, with graceful degradation ------------------------------------------
    def _store(self) -> HealthStore:
        if self._degraded_until and self._clock() < self._degraded_until:
            return self._fallback_store
        return self.store

    def _degrade(self, exc: Exception) -> None:
        # Health is advice: losing the shared store must never fail a run. Use the local
        # store for a while (its breakers carry on from where they were), then try the
        # shared one again.
        with self._lock:
            self._degraded_until = self._clock() + self._store_retry_after
            first, self._warned = not self._warned, True
        if first:
            logger.warning(
                "lifecycle: health store %s failed (%s: %s); using this process's own "
                "breakers until it answers again",
                type(self.store).__name__,
                type(exc).__name__,
                redact(str(exc)),
            )

    # _apply and _aapply run twice per attempt (admit, report): ``_store``, ``_answered``
    # and ``_publish`` are only called when they have something to do (degraded, an
    # outage to announce, changes to hand out); their tests are inlined.
    def _apply(self, route: str, change: Callable[[BreakerCore], T]) -> T:
        store = self._store() if self._degraded_until else self.store
        apply = _with_changes(change)
        try:
            result, changes = store.update(route, self.policy, apply)
        except Exception as exc:
            result, changes = self._apply_locally(store, exc, route, apply)
        else:
            if self._warned:
                self._answered(store)
        if changes and self._on_change is not None:
            self._publish(changes)
        return result

    async def _aapply(self, route: str, change: Callable[[BreakerCore], T]) -> T:
        store = self._store() if self._degraded_until else self.store
        apply = _with_changes(change)
        try:
            result, changes = await store.aupdate(route, self.policy, apply)
        except Exception as exc:
            result, changes = self._apply_locally(store, exc, route, apply)
        else:
            if self._warned:
                self._answered(store)
        if changes and self._on_change is not None:
            self._publish(changes)
        return result

    def _apply_locally(
        self,
        failed: HealthStore,
        exc: Exception,
        route: str,
        apply: Callable[[BreakerCore], tuple[T, list[BreakerChange]]],
    ) -> tuple[T, list[BreakerChange]]:
        """The shared store failed: degrade, and apply the change to the local store."""
        if failed is self._fallback_store:
            raise exc
        self._degrade(exc)
        return self._fallback_store.update(route, self.policy, apply)

    def _answered(self, store: HealthStore) -> None:
        """``store`` applied a change: if it is the shared one after an outage, say so."""
        if store is not self.store or not self._warned:
            return
        with self._lock:
            announce = self._warned and self._degraded_until > 0
            self._degraded_until = 0.0
            self._warned = False
        if announce:
            logger.warning("lifecycle: health store %s answers again", type(self.store).__name__)

    def _publish(self, changes: list[BreakerChange]) -> None:
        if self._on_change is not None:
            for item in changes:
                self._on_change(item)


def _with_changes(
    change: Callable[[BreakerCore], T],
) -> Callable[[BreakerCore], tuple[T, list[BreakerChange]]]:
    """``change``, also returning the transitions it took. A store may apply it more than
    once (a Redis WATCH conflict); what the last application returns is what happened."""

    def apply(core: BreakerCore) -> tuple[T, list[BreakerChange]]:
        return change(core), list(core.changes)

    return apply


_ALL_LOCAL_STORES: weakref.WeakSet[LocalHealthStore] = weakref.WeakSet()
_ALL_ROUTE_HEALTH: weakref.WeakSet[RouteHealth] = weakref.WeakSet()


def _renew_in_child() -> None:
    for store in list(_ALL_LOCAL_STORES):
        # A parent's thread may have held it mid-update: that one core may be half
        # changed, which a breaker (advice, never a verdict) survives; a lock nobody
        # can release would block every admission of the child.
        store._lock = threading.Lock()
    for health in list(_ALL_ROUTE_HEALTH):
        health._renew_after_fork()


os.register_at_fork(after_in_child=_renew_in_child)
