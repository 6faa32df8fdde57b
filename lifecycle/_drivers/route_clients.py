"""What one engine keeps per route: its client slots and what it learned of the server.

A ``Route`` is configuration (an adapter, a factory, a model) and holds no state of its
own, so one route object may serve several engines: each engine has a ``RouteClients``
per route of its chain, with the clients that engine built (one slot for sync runs, one
per event loop for async runs) and the facts that engine's attempts learned about the
route's server (``learned``: a ``Fault.learned`` such as "refuses stream_options").
Two engines sharing a route share neither clients, nor closes, nor what they learned;
closing one engine closes only its own clients.
"""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from typing import TYPE_CHECKING, Any

from .client_slots import ClientSlot

if TYPE_CHECKING:
    from .route import Route

__all__ = ["RouteClients"]


class RouteClients:
    """One engine's clients of one route, and what that engine learned of its server."""

    __slots__ = (
        "__weakref__",
        "_loop_slots",
        "_loop_slots_lock",
        "first_async",
        "learned",
        "route",
        "sync",
    )

    def __init__(self, route: Route) -> None:
        self.route = route
        self.sync = ClientSlot(
            build=route._build_sync_client, streams_per_client=route.streams_per_client
        )
        """The sync clients (every thread's runs share them)."""
        self.first_async = ClientSlot(
            build=route._build_async_client, streams_per_client=route.streams_per_client
        )
        """The async clients of the first event loop that runs this route; another loop
        running at the same time gets a slot of its own (``async_slot``)."""
        self._loop_slots: dict[asyncio.AbstractEventLoop, ClientSlot] = {}
        self._loop_slots_lock = threading.Lock()
        self.learned: frozenset[str] = frozenset()
        """Facts about the server that faults taught (``Fault.learned``), given to the
        route's ``open``/``aopen``/``classify``. Replaced, never mutated: a run on another
        thread reads either the old set or the new one."""
        _ALL_ROUTE_CLIENTS.add(self)

    def __repr__(self) -> str:
        return f"RouteClients({self.route.name})"

    def learn(self, fact: str) -> None:
        self.learned = self.learned | {fact}

    # -- async clients per event loop --------------------------------------------------
    def async_slot(self, loop: asyncio.AbstractEventLoop) -> ClientSlot:
        """The async clients of ``loop``: an async client's connections and locks belong
        to the loop it first ran on, and fail on any other ("Event loop is closed"), so
        each loop gets its own, built lazily by the first run on that loop. Once a loop
        is closed its clients cannot be closed any more: they are dropped (abandoned)."""
        with self._loop_slots_lock:
            for gone in [other for other in self._loop_slots if other.is_closed()]:
                self._loop_slots.pop(gone).take_all()
            first = self.first_async
            if first.loop is not None and first.loop is not loop and first.loop.is_closed():
                first.take_all()
                first.loop = None
            if first.loop is None or first.loop is loop:
                first.loop = loop
                return first
            slot = self._loop_slots.get(loop)
            if slot is None:
                slot = ClientSlot(
                    build=self.route._build_async_client,
                    streams_per_client=first.streams_per_client,
                    loop=loop,
                )
                self._loop_slots[loop] = slot
            return slot

    def async_slots(self) -> tuple[ClientSlot, ...]:
        """Every slot of async clients, one per event loop that ran this route."""
        with self._loop_slots_lock:
            return (self.first_async, *self._loop_slots.values())

    def slots(self) -> tuple[ClientSlot, ...]:
        """The sync slot, then every async one."""
        return (self.sync, *self.async_slots())

    def slot_for(self, client: Any) -> ClientSlot:
        """Where a client the factory built belongs: async clients go to the slot of the
        first loop that will run the route (``check_factories``)."""
        return self.first_async if self.route.is_async_client(client) else self.sync

    def _forget_loops_after_fork(self) -> None:
        # The parent's lock may have been held by another thread at the fork.
        self._loop_slots_lock = threading.Lock()
        for slot in self._loop_slots.values():
            slot.forget_after_fork()
        self._loop_slots = {}


_ALL_ROUTE_CLIENTS: weakref.WeakSet[RouteClients] = weakref.WeakSet()


def _forget_loops_in_child() -> None:
    for clients in list(_ALL_ROUTE_CLIENTS):
        clients._forget_loops_after_fork()


os.register_at_fork(after_in_child=_forget_loops_in_child)
