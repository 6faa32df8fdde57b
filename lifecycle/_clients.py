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
"""

from __future__ import annotations

import threading
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


@dataclass(slots=True)
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
