"""Shared SDK clients per route and flavour (sync or async), with retirement.

Building a client costs ~60 ms (mostly ``ssl.create_default_context()``), so concurrent
runs of a route share one: up to ``streams_per_client`` at once, beyond which the slot
builds another (the SDKs' connection pools scan every pooled connection on each request and
each response close, so one client carrying 10,000 streams spends most of a CPU there;
measured in ``tests/benchmarks/bench_scale.py``). Below that many concurrent streams a
route has exactly one client. After a fault, cleanup *retires* the attempt's client:
new attempts get another one at once, runs still streaming on the retired one are left
alone, and whichever run releases it last closes it, on its own thread or task.

The successor is built before it is needed: once a slot has been leased from, it keeps
one *spare* client, built by a short-lived builder thread (``BUILDER_THREAD``), so the
cleanup after a fault only moves the spare in (no factory call on the run's path); the
builder makes the next one once the next attempt's request is out (``replenish``): a
build holds the GIL in stretches of milliseconds, and must not delay that request.

A thread per build, not a resident builder: builds are rare (a slot's first lease,
then one per retired client), a thread start is ~0.1 ms against a ~60 ms build, and a
thread that ends by itself needs no stopping at ``engine.close()`` (which only waits
for a build in flight) nor restarting after ``os.fork()``.

Async clients are built on that thread too, never on the event loop: the SDKs' async
clients bind nothing to a loop when constructed (httpx's and httpx2's pools create their
locks, events and network backend lazily, at the first request), so a client built
there is used on the loop like one built on it. A failed build is kept, not retried:
the attempt that needed the client gets its error, and the next build happens only
when an attempt asks again, so a failing factory is called at most once per attempt,
never in a loop.

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
import contextlib
import os
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from .._core.errors import EngineClosed

__all__ = ["BUILDER_THREAD", "ClientLease", "ClientSlot"]

BUILDER_THREAD = "lifecycle-client-builder"
"""Name of the thread that builds a slot's spare client (one at a time per slot)."""
BUILDER_WAIT = 10.0
"""Seconds ``engine.close()`` waits for a spare's build in flight before abandoning it."""


@dataclass(slots=True)
class _Generation:
    client: Any
    number: int
    users: int = 0
    retired: bool = False
    closed: bool = False


class _Emptied(Exception):
    """A spare's build ended after its slot was emptied (close, fork): not the slot's."""


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
    _spare: Future[_Generation] | None = None
    """The next client, built (or being built) by the builder thread, handed out when no
    live client has room; a failed build keeps its error here for the attempt that needs it."""
    _builder: threading.Thread | None = None
    _epoch: int = 0
    """Bumped whenever the slot is emptied (close, a closed loop, a fork): a build that
    was in flight then is not this slot's any more."""
    _closed: bool = False
    """``engine.close()`` took the slot's clients: no spare is built until a lease
    reopens it. A run that ends after close (its request out, or its cleanup asking for
    a successor, as close ran) would otherwise start a build whose client nobody closes."""

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

    @property
    def has_spare(self) -> bool:
        """A built spare is waiting (not in flight, not failed)."""
        spare = self._spare
        return spare is not None and spare.done() and spare.exception() is None

    def lease(self) -> ClientLease:
        """A live client with room for one more stream (the oldest such: below
        ``streams_per_client`` concurrent streams a route has one client). Without one,
        the spare (waited for if its build is in flight); without a spare, built now by
        the factory on this thread: only a slot's first lease (or the first after a
        failed build, or after ``engine.close()``) builds here."""
        while True:
            with self._lock:
                self._closed = False
                generation = self._with_room()
                spare = self._spare
                if generation is None:
                    if spare is None:
                        generation = self._new_generation()
                        self._live.append(generation)
                    elif spare.done():
                        generation = self._take_spare()
                if generation is not None:
                    return self._hand_out(generation)
            assert spare is not None
            self._wait_for(spare)

    async def alease(self) -> ClientLease:
        """``lease()`` for a run on an event loop: the client is never built on the loop
        (a ~60 ms TLS set-up would stall every task of it), its build is awaited."""
        while True:
            with self._lock:
                self._closed = False
                generation = self._with_room()
                if generation is not None:
                    return self._hand_out(generation)
                self._start_spare()
                spare = self._spare
                assert spare is not None
                if spare.done():
                    return self._hand_out(self._take_spare())
            with contextlib.suppress(Exception):  # raised below, to every waiter
                await asyncio.wrap_future(spare)
            self._raise_if_failed(spare)

    def _with_room(self) -> _Generation | None:
        for generation in self._live:
            if generation.users < self.streams_per_client:
                return generation
        return None

    def _hand_out(self, generation: _Generation) -> ClientLease:
        generation.users += 1
        return ClientLease(self, generation)

    def replenish(self) -> None:
        """Have the builder make the next spare unless one is there or coming. The
        drivers call it once the attempt's request is out: a build holds the GIL for
        milliseconds at a time, so one started at the lease would delay that request."""
        with self._lock:
            self._start_spare()

    def _take_spare(self) -> _Generation:
        """Under the lock, the spare's build done: make it live, or raise its error (once:
        the attempt after builds anew)."""
        spare = self._spare
        assert spare is not None
        self._spare = None
        error = spare.exception()
        if error is not None:
            raise error
        generation = spare.result()
        self._live.append(generation)
        return generation

    def _wait_for(self, spare: Future[_Generation]) -> None:
        """Outside the lock: until ``spare``'s build is done; raises its error."""
        spare.exception()
        self._raise_if_failed(spare)

    def _raise_if_failed(self, spare: Future[_Generation]) -> None:
        error = spare.exception()
        if error is None or isinstance(error, _Emptied):
            return  # the caller looks again (an emptied slot's build is not its)
        with self._lock:
            if self._spare is spare:
                self._spare = None
        raise error

    def successor(self) -> _Generation | None:
        """Cleanup, after a retire: make the spare the current client if no live one is
        left, waiting for its build if it is in flight. Returns the current client's
        generation; raises a failed build's error (kept for the next attempt's lease)."""
        while True:
            with self._lock:
                ready = self._successor_ready()
                if ready is not None:
                    return ready
                spare = self._spare
                assert spare is not None
            spare.exception()  # its build's end, outside the lock

    async def asuccessor(self) -> _Generation | None:
        """``successor()`` on an event loop: the build in flight is awaited."""
        while True:
            with self._lock:
                ready = self._successor_ready()
                if ready is not None:
                    return ready
                spare = self._spare
                assert spare is not None
            with contextlib.suppress(Exception):  # raised by _successor_ready next round
                await asyncio.wrap_future(spare)

    def _successor_ready(self) -> _Generation | None:
        if self._live:
            return self._live[0]
        if self._closed:
            raise EngineClosed("the engine was closed: no successor client is built")
        self._start_spare()  # none yet (the lease failed to build): one on the builder
        spare = self._spare
        assert spare is not None
        if not spare.done():
            return None
        error = spare.exception()
        if error is not None:
            raise error
        return self._take_spare()  # the next spare: once the next request is out

    def _start_spare(self) -> None:
        """Under the lock: have the builder make a spare unless one is there or coming
        (a failed one included: it waits for the attempt that needs it); never once
        the engine closed the slot."""
        if self._spare is not None or self._closed:
            return
        spare: Future[_Generation] = Future()
        # Running from the start: an awaiting task's cancellation must not cancel it.
        spare.set_running_or_notify_cancel()
        self._spare = spare
        # Thread.start() returns only once the new thread runs, and that thread would go
        # straight on into the factory holding the GIL (an SDK client's set-up before its
        # TLS context is Python), keeping the caller, an event loop, stopped meanwhile:
        # the builder waits for the caller to be out of start() first.
        caller_out = threading.Event()
        builder = threading.Thread(
            target=self._build_spare,
            args=(spare, self._epoch, caller_out),
            name=BUILDER_THREAD,
            daemon=True,
        )
        self._builder = builder
        try:
            builder.start()
        finally:
            caller_out.set()

    def _build_spare(
        self, spare: Future[_Generation], epoch: int, caller_out: threading.Event
    ) -> None:
        caller_out.wait()
        try:
            client = self.build()
        except BaseException as exc:
            spare.set_exception(exc)
            return
        generation: _Generation | None = None
        with self._lock:
            if epoch == self._epoch:
                generation = self._generation_of(client)
        if generation is None:
            # The slot was emptied while this was built, and closing gave up waiting: a
            # never-used client (no connection yet), kept referenced so nothing closes it.
            _ABANDONED_BUILDS.append(client)
            spare.set_exception(_Emptied())
            return
        spare.set_result(generation)

    @property
    def building(self) -> Future[_Generation] | None:
        """The spare's build in flight, if any."""
        spare = self._spare
        return spare if spare is not None and not spare.done() else None

    def wait_for_builder(self, timeout: float = BUILDER_WAIT) -> bool:
        """Until no spare is being built (its thread ended); False if ``timeout`` passed."""
        builder = self._builder
        if builder is None or builder is threading.current_thread():
            return True
        builder.join(timeout)
        return not builder.is_alive()

    def _new_generation(self) -> _Generation:
        return self._generation_of(self.build())

    def _generation_of(self, client: Any) -> _Generation:
        """Under the lock: number, and log, a client just built (or adopted) here."""
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
            self._live.append(self._generation_of(client))
            return True

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
        user's thread or task). The slot hands out nothing it had before. The spare is
        left for ``take_spare``."""
        with self._lock:
            self._closed = True
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

    def take_spare(self) -> list[Any]:
        """For the engine's close(): the spare, to close now (its build waited for, up to
        ``BUILDER_WAIT``, so no builder outlives close). It never sent a request, so it
        has no connection bound to any loop: an async spare may be closed anywhere."""
        self.wait_for_builder()
        with self._lock:
            self._closed = True
            return self._drop_spare()

    def _drop_spare(self) -> list[Any]:
        """Under the lock: forget the spare (and any build in flight); its client if built."""
        spare, self._spare = self._spare, None
        self._epoch += 1
        if spare is not None and spare.done() and spare.exception() is None:
            return [spare.result().client]
        return []

    def forget_after_fork(self) -> None:
        """In a forked child: drop every client of the parent without closing it, the
        spare too; the parent's builder thread does not exist here."""
        self._lock = threading.Lock()  # the parent's may have been held by another thread
        _ABANDONED_IN_CHILD.extend(g.client for g in (*self._live, *self._retired))
        spare, self._spare, self._builder = self._spare, None, None
        if spare is not None and spare.done() and spare.exception() is None:
            _ABANDONED_IN_CHILD.append(spare.result().client)
        self._epoch += 1
        self._live = []
        self._retired = []
        self.loop = None

    def take_all(self) -> list[Any]:
        """Every client not yet closed, the spare included; the slot is empty after."""
        with self._lock:
            clients = [g.client for g in self._retired if not g.closed]
            clients += self._drop_spare()
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
_ABANDONED_BUILDS: list[Any] = []
"""Spares whose build outlived ``BUILDER_WAIT`` at a close: never used, never closed."""


def _forget_clients_in_child() -> None:
    for slot in list(_ALL_SLOTS):
        slot.forget_after_fork()


os.register_at_fork(after_in_child=_forget_clients_in_child)
