"""Shared SDK clients per route and flavour (sync or async), with retirement.

Building a client costs ~16 ms (mostly TLS context set-up), so concurrent runs of a
route share one: up to ``streams_per_client`` at once, beyond which the slot builds
another (the SDKs' connection pools scan every pooled connection on each request and
each response close, so one client carrying 10,000 streams spends most of a CPU there;
measured in ``tests/benchmarks/bench_scale.py``). Below that many concurrent streams a
route has exactly one client. After a fault, cleanup *retires* the attempt's client:
new attempts get another one at once, runs still streaming on the retired one are left
alone, and whichever run releases it last closes it, on its own thread or task.

The slot does no I/O itself: ``release`` and ``retire`` hand back the client that must
be closed now, and the driver closes it in the right way for its flavour.

After ``os.fork()`` the child must not use a client of the parent: its pooled
keep-alive connections are the parent's sockets (a request from the child would
interleave with the parent's on the same connection). So in the child every slot
forgets its clients, abandoned without closing them: closing would close the child's
copies of the parent's file descriptors, and the HTTP libraries' close may also shut
or write to them. They stay referenced, so no finalizer ever runs on them either.
"""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ClientLease", "ClientSlot"]


@dataclass(slots=True)
class _Generation:
    client: Any
    number: int
    users: int = 0
    retired: bool = False
    closed: bool = False


@dataclass(slots=True)
class ClientLease:
    slot: ClientSlot
    generation: _Generation
    released: bool = False
    retired: bool = False

    @property
    def client(self) -> Any:
        return self.generation.client

    @property
    def number(self) -> int:
        return self.generation.number


STREAMS_PER_CLIENT = 256
"""Default: concurrent streams one client carries before the slot builds another."""


@dataclass(slots=True, weakref_slot=True, eq=False)
class ClientSlot:
    build: Callable[[], Any]
    streams_per_client: int = STREAMS_PER_CLIENT
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _live: list[_Generation] = field(default_factory=list)
    """Clients handed out to new attempts, oldest first."""
    _retired: list[_Generation] = field(default_factory=list)
    _built: int = 0
    builds_log: list[str] = field(default_factory=list)
    """Name of the thread that built each generation, in order (for verification)."""
    loop: asyncio.AbstractEventLoop | None = None
    """The event loop whose runs use this slot's (async) clients: an async client's
    connections belong to the loop it first ran on. None for sync clients, and for an
    async slot no run has used yet."""

    def __post_init__(self) -> None:
        _ALL_SLOTS.add(self)

    @property
    def built_count(self) -> int:
        return self._built

    @property
    def current_client(self) -> Any | None:
        """The client the next attempt gets if nothing else is streaming (None if none)."""
        live = self._live
        return live[0].client if live else None

    @property
    def live_clients(self) -> int:
        return len(self._live)

    def lease(self) -> ClientLease:
        """A live client with room for one more stream (the oldest such: below
        ``streams_per_client`` concurrent streams a route has one client), built now (by
        the factory, on this thread) if there is none."""
        with self._lock:
            for generation in self._live:
                if generation.users < self.streams_per_client:
                    break
            else:
                generation = self._new_generation()
                self._live.append(generation)
            generation.users += 1
            return ClientLease(self, generation)

    def rebuild(self) -> None:
        """Build the successor of a retired client now, so the next attempt finds it."""
        with self._lock:
            if not self._live:
                self._live.append(self._new_generation())

    def _new_generation(self) -> _Generation:
        client = self.build()
        self._built += 1
        self.builds_log.append(threading.current_thread().name)
        return _Generation(client=client, number=self._built)

    def retire(self, lease: ClientLease) -> None:
        """Stop handing out the lease's client; it is closed by its last user."""
        with self._lock:
            lease.retired = True
            generation = lease.generation
            if not generation.retired:
                generation.retired = True
                if generation in self._live:
                    self._live.remove(generation)
                self._retired.append(generation)

    def adopt(self, client: Any) -> bool:
        """Make ``client`` (already prepared) the current one if there is none."""
        with self._lock:
            if self._live:
                return False
            self._built += 1
            self.builds_log.append(threading.current_thread().name)
            self._live.append(_Generation(client=client, number=self._built))
            return True

    def retire_current(self) -> Any | None:
        """Retire the oldest live client without a lease; returns it if nobody uses it."""
        with self._lock:
            if not self._live:
                return None
            generation = self._live.pop(0)
            generation.retired = True
            if generation.users == 0:
                generation.closed = True
                return generation.client
            self._retired.append(generation)
            return None

    def release(self, lease: ClientLease) -> tuple[Any | None, int]:
        """Give the lease back. Returns (client to close now, or None; other users left)."""
        with self._lock:
            if lease.released:
                return None, lease.generation.users
            lease.released = True
            generation = lease.generation
            generation.users -= 1
            if generation.retired and generation.users == 0 and not generation.closed:
                generation.closed = True
                self._retired.remove(generation)
                return generation.client, 0
            return None, generation.users

    def take_idle(self) -> list[Any]:
        """For the engine's close(): every client nobody streams on, to close now; a
        client still in use is retired instead, and closed by its last user (on that
        user's thread or task). The slot hands out nothing it had before."""
        with self._lock:
            clients = []
            for generation in self._live:
                generation.retired = True
                if generation.users == 0:
                    generation.closed = True
                    clients.append(generation.client)
                else:
                    self._retired.append(generation)
            self._live.clear()
            return clients

    def forget_after_fork(self) -> None:
        """In a forked child: drop every client of the parent without closing it."""
        self._lock = threading.Lock()  # the parent's may have been held by another thread
        _ABANDONED_IN_CHILD.extend(g.client for g in (*self._live, *self._retired))
        self._live = []
        self._retired = []
        self.loop = None

    def take_all(self) -> list[Any]:
        """Every client not yet closed, for the engine's close(); the slot is empty after."""
        with self._lock:
            clients = [g.client for g in self._retired if not g.closed]
            for g in self._retired:
                g.closed = True
            self._retired.clear()
            for g in self._live:
                g.closed = True
                clients.append(g.client)
            self._live.clear()
            return clients


_ALL_SLOTS: weakref.WeakSet[ClientSlot] = weakref.WeakSet()
_ABANDONED_IN_CHILD: list[Any] = []
"""The parent's clients, kept alive in a forked child so that nothing closes them."""


def _forget_clients_in_child() -> None:
    for slot in list(_ALL_SLOTS):
        slot.forget_after_fork()


os.register_at_fork(after_in_child=_forget_clients_in_child)
