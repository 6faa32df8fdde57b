"""One shared SDK client per route and flavour (sync or async), with retirement.

Building a client costs ~16 ms (mostly TLS context set-up), so concurrent runs of a
route share one. After a fault, cleanup *retires* the attempt's client: new attempts
get a freshly built one at once, runs still streaming on the retired one are left
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


@dataclass(slots=True)
class ClientSlot:
    build: Callable[[], Any]
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _current: _Generation | None = None
    _retired: list[_Generation] = field(default_factory=list)
    _built: int = 0
    builds_log: list[str] = field(default_factory=list)
    """Name of the thread that built each generation, in order (for verification)."""

    @property
    def built_count(self) -> int:
        return self._built

    @property
    def current_client(self) -> Any | None:
        current = self._current
        return None if current is None else current.client

    def lease(self) -> ClientLease:
        """The current client, built now (by the factory, on this thread) if needed."""
        with self._lock:
            if self._current is None:
                self._current = self._new_generation()
            generation = self._current
            generation.users += 1
            return ClientLease(self, generation)

    def rebuild(self) -> None:
        """Build the successor of a retired client now, so the next attempt finds it."""
        with self._lock:
            if self._current is None:
                self._current = self._new_generation()

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
                if self._current is generation:
                    self._current = None
                self._retired.append(generation)

    def adopt(self, client: Any) -> bool:
        """Make ``client`` (already prepared) the current one if there is none."""
        with self._lock:
            if self._current is not None:
                return False
            self._built += 1
            self.builds_log.append(threading.current_thread().name)
            self._current = _Generation(client=client, number=self._built)
            return True

    def retire_current(self) -> Any | None:
        """Retire the current client without a lease; returns it if nobody uses it."""
        with self._lock:
            generation = self._current
            if generation is None:
                return None
            self._current = None
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
            if self._current is not None:
                self._current.closed = True
                clients.append(self._current.client)
                self._current = None
            return clients
