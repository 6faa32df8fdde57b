"""Known lifecycle bugs, re-created by patching the real function where each would live
with a buggy variant, so that the verification suite can prove it catches them. The
package itself carries no switch for them.

- ``misdirect_cleanup``: ``RunCore.plan_cleanup`` aims the cleanup at the route *after*
  the active one, and the retire step acts on the route it is given, exactly like the
  bug that started this project (an Anthropic stall "cleaned up" by rebuilding the
  OpenAI client, the stuck client merely released).
- ``leak_connection``: cleanup skips the abort (``RunBase._cleanup_abort`` only
  releases the connection) and ``run_steps.clean_up`` never closes the stream, so the
  faulty attempt's connection stays open.
- ``close_on_watchdog``: when a clock runs out, ``Watch.fire`` (the watchdog thread, or
  the async driver's loop timer) also closes the attempt's client from its own thread,
  the hazard the design forbids.
- ``rebuild_on_the_run``: cleanup builds the retired client's successor by calling the
  factory on the run's own thread (or its event loop), as it did before spare clients,
  instead of moving the spare in (``ClientSlot.successor`` and ``asuccessor`` rebuild
  first).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from lifecycle import AsyncRun, AttemptRecord, CleanupStep
from lifecycle._core import machine as _machine
from lifecycle._core.machine import CLEANUP_STEPS, CleanupPlan, RunCore
from lifecycle._drivers import async_run as _async_driver
from lifecycle._drivers import run_steps
from lifecycle._drivers.client_slots import ClientLease, ClientSlot
from lifecycle._drivers.run_base import RunBase, _here, now
from lifecycle._drivers.watchdog import Watch, Watchdog
from lifecycle.adapters import AttemptConnection, Route

__all__ = ["LEAKED", "MUTATIONS", "mutation"]

LEAKED: list[object] = []
"""Streams that ``leak_connection`` kept alive (so that garbage collection cannot close them)."""


def _misdirect_cleanup(patch: pytest.MonkeyPatch) -> None:
    def plan_cleanup_on_the_next_route(self: RunCore) -> None:
        attempt = self.active_attempt
        route = self.routes[(attempt.route_index + 1) % len(self.routes)]
        self.pending_cleanup = CleanupPlan(
            attempt=attempt, route=route.target, api_mode=route.api_mode, steps=CLEANUP_STEPS
        )

    def retire_in_the_planned_route(
        self: RunBase, plan: CleanupPlan, lease: ClientLease | None, slot: ClientSlot
    ) -> Any | None:
        # The plan's route's client is retired (and rebuilt after) while the attempt's
        # own client is merely released: never closed, its socket never aborted here.
        if lease is None:
            return None
        if lease.slot is slot:
            return retire(self, plan, lease, slot)
        to_close = _retire_current(slot)
        lease.slot.release(lease)
        return to_close

    retire = RunBase._cleanup_retire
    patch.setattr(_machine.RunCore, "plan_cleanup", plan_cleanup_on_the_next_route)
    patch.setattr(RunBase, "_cleanup_retire", retire_in_the_planned_route)


def _leak_connection(patch: pytest.MonkeyPatch) -> None:
    def release_without_abort(self: RunBase, plan: CleanupPlan, conn: AttemptConnection) -> None:
        conn.release()

    clean_up = run_steps.clean_up

    def clean_up_keeping_the_stream(
        run: RunBase,
        slot_of: Any,
        connection: AttemptConnection,
        stream: Any,
        lease: ClientLease | None,
        *,
        leaving: BaseException | None,
    ) -> Any:
        if stream is not None:
            LEAKED.append(stream)
        return clean_up(run, slot_of, connection, None, lease, leaving=leaving)

    patch.setattr(RunBase, "_cleanup_abort", release_without_abort)
    patch.setattr(run_steps, "clean_up", clean_up_keeping_the_stream)


def _close_on_watchdog(patch: pytest.MonkeyPatch) -> None:
    # The clock knows only the watch and its connection; these two maps lead from them
    # to the run (its active attempt and route) and to the client the attempt leased.
    run_of: dict[Watch, RunBase] = {}
    client_of: dict[AttemptConnection, Any] = {}
    run_init = RunBase.__init__
    lease = ClientSlot.lease
    fire = Watch.fire

    def init_and_remember(self: RunBase, *args: Any, **kwargs: Any) -> None:
        run_init(self, *args, **kwargs)
        run_of[self._watch] = self

    # An attempt leases its client, then arms its clocks with its connection, on its own
    # thread (or task): the lease is remembered for the thread or task, and tied to the
    # connection when the clocks are armed.
    leased_here: dict[tuple[int, int], Any] = {}
    arm = Watchdog.arm
    arm_on_loop = _async_driver.arm_on_loop

    def here() -> tuple[int, int]:
        try:
            task = id(asyncio.current_task())
        except RuntimeError:  # no running loop: a sync run's thread
            task = 0
        return threading.get_ident(), task

    def lease_and_remember(self: ClientSlot) -> ClientLease:
        leased = lease(self)
        leased_here[here()] = leased.client
        return leased

    def tie(connection: AttemptConnection) -> None:
        client = leased_here.pop(here(), None)
        if client is not None:
            client_of[connection] = client

    def arm_and_tie(self: Watchdog, watch: Watch, connection: Any, **clocks: Any) -> None:
        tie(connection)
        arm(self, watch, connection, **clocks)

    def arm_on_loop_and_tie(loop: Any, watch: Watch, connection: Any, **clocks: Any) -> None:
        tie(connection)
        arm_on_loop(loop, watch, connection, **clocks)

    def fire_and_close_the_client(self: Watch, clock: str, deadline: float, at: float) -> None:
        # Everything the close needs is read before the abort: once the socket is shut
        # down the run's own thread wakes (within about a millisecond) and moves on to
        # its cleanup and the next attempt, so reading the run afterwards races it.
        run = run_of.get(self)
        connection = self.connection
        if run is None or connection is None:
            fire(self, clock, deadline, at)
            return
        attempt = run._core.active_attempt
        route = run._routes[attempt.route_index]
        is_async = isinstance(run, AsyncRun)
        client = client_of.get(connection)
        if client is None:
            # The lease was not tied (a lease the patch did not see): the attempt's
            # client is the slot's current one (one client per route below
            # streams_per_client concurrent streams).
            clients = run._clients[attempt.route_index]
            slot = clients.async_slot(asyncio.get_running_loop()) if is_async else clients.sync
            client = slot.current_client
        fire(self, clock, deadline, at)
        if client is not None:
            _close_from_the_clock(route, client, attempt, is_async=is_async)

    patch.setattr(RunBase, "__init__", init_and_remember)
    patch.setattr(ClientSlot, "lease", lease_and_remember)
    patch.setattr(Watchdog, "arm", arm_and_tie)
    patch.setattr(_async_driver, "arm_on_loop", arm_on_loop_and_tie)
    patch.setattr(Watch, "fire", fire_and_close_the_client)


def _close_from_the_clock(
    route: Route, client: Any, attempt: AttemptRecord, *, is_async: bool
) -> None:
    # The step is recorded before the close is tried: the bug is the attempt to close
    # from the clock's thread, whether or not the SDK's close then raises there.
    where = f"{threading.current_thread().name}/loop-timer" if is_async else _here()
    attempt.diagnostics.cleanup.append(
        CleanupStep(
            step="close",
            thread=where,
            at=now() - attempt.started_at,
            detail=f"{route.api_mode} client closed by the clock (mutation)",
        )
    )
    if is_async:
        asyncio.get_running_loop().create_task(route.aclose_client(client))
    else:
        route.close_client(client)


def _build_successor_here(slot: ClientSlot) -> None:
    """The bug the spare fixed: the retired client's successor built by the factory now,
    on the caller's thread or loop, if the slot has no live client."""
    with slot._lock:
        if not slot._live:
            slot._live.append(slot._new_generation())


def _retire_current(slot: ClientSlot) -> Any | None:
    """Retire ``slot``'s oldest live client, whoever leased it; returns it if nobody
    uses it (else its last user closes it)."""
    with slot._lock:
        if not slot._live:
            return None
        generation = slot._live.pop(0)
        generation.retired = True
        if generation.users == 0:
            generation.closed = True
            return generation.client
        slot._retired.append(generation)
        return None


def _rebuild_on_the_run(patch: pytest.MonkeyPatch) -> None:
    successor = ClientSlot.successor
    asuccessor = ClientSlot.asuccessor

    def rebuild_here(self: ClientSlot) -> Any:
        _build_successor_here(self)  # the factory, on this thread: the ~60 ms of a build
        return successor(self)

    async def arebuild_here(self: ClientSlot) -> Any:
        _build_successor_here(self)  # on the event loop itself
        return await asuccessor(self)

    patch.setattr(ClientSlot, "successor", rebuild_here)
    patch.setattr(ClientSlot, "asuccessor", arebuild_here)


MUTATIONS: dict[str, Callable[[pytest.MonkeyPatch], None]] = {
    "misdirect_cleanup": _misdirect_cleanup,
    "leak_connection": _leak_connection,
    "close_on_watchdog": _close_on_watchdog,
    "rebuild_on_the_run": _rebuild_on_the_run,
}


@contextmanager
def mutation(name: str) -> Iterator[None]:
    """Apply one mutation for the duration of a ``with`` block."""
    if name not in MUTATIONS:
        raise ValueError(f"unknown mutation {name!r}; one of {tuple(MUTATIONS)}")
    with pytest.MonkeyPatch.context() as patch:
        MUTATIONS[name](patch)
        try:
            yield
        finally:
            LEAKED.clear()
