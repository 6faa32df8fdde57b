"""One watchdog thread per process for every sync run: a heap of deadlines, no polling.

Each in-flight attempt has a ``Watch``. The driver only writes plain attributes on it
per event (``progress_at``, ``holding``): no lock, no heap operation, no trigger. The
heap holds at most one live entry per watch, keyed by the earliest moment the watch
could be due; when the watchdog pops an entry it recomputes the real deadline from the
watch and either fires or pushes the entry back. So the cost per run is O(log n) once
per stale period, independent of the event rate and of the number of runs.

Firing means: note which clock ran out, then ``AttemptConnection.abort()`` (a socket
shutdown). The run's own thread, woken by the shutdown, reads the note and reports a
``StallDetected`` to the machine; the watchdog never touches the machine or a client.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import os
import threading
import time
from typing import Final

from .connection import AttemptConnection

__all__ = [
    "Watch",
    "Watchdog",
    "arm_on_loop",
    "disarm_on_loop",
    "progressed_on_loop",
    "watchdog",
]

_NEVER: Final = float("inf")


class Watch:
    """Deadlines of one attempt. Written by the run's thread, read by the watchdog."""

    __slots__ = (
        "armed",
        "connection",
        "fired",
        "fired_at",
        "fired_deadline",
        "first_token_due",
        "generation",
        "holding",
        "progress_at",
        "stale",
        "timer",
        "total_due",
    )

    def __init__(self) -> None:
        self.connection: AttemptConnection | None = None
        self.first_token_due = _NEVER
        self.stale = _NEVER
        self.total_due = _NEVER
        self.progress_at: float | None = None
        """Time of the last meaningful event; None until the first one."""
        self.holding = False
        """The caller is inside its loop body with an event: not the provider's silence."""
        self.armed = False
        self.fired: str | None = None
        self.fired_at: float | None = None
        self.fired_deadline: float | None = None
        self.generation = 0
        self.timer: asyncio.TimerHandle | None = None
        """The async driver's pending loop timer for this watch, if any."""

    def reset(
        self,
        connection: AttemptConnection,
        *,
        sent_at: float,
        first_token: float,
        stale: float,
        total_due: float,
    ) -> None:
        self.generation += 1
        self.connection = connection
        self.first_token_due = sent_at + first_token
        self.stale = stale
        self.total_due = total_due
        self.progress_at = None
        self.holding = False
        self.fired = None
        self.fired_at = None
        self.fired_deadline = None
        self.armed = True

    def fire(self, clock: str, deadline: float, at: float) -> None:
        """Note which clock ran out, then abort (socket shutdown) the attempt's connection."""
        self.fired = clock
        self.fired_at = at
        self.fired_deadline = deadline
        self.armed = False
        connection = self.connection
        if connection is not None:
            connection.abort(reason=clock)

    def due(self) -> tuple[float, str]:
        """The earliest deadline now in force, and the clock it belongs to."""
        progress = self.progress_at
        if progress is None:
            gap_due, clock = self.first_token_due, "first_token"
        else:
            gap_due, clock = progress + self.stale, "stale"
        if self.total_due <= gap_due:
            return self.total_due, "total"
        return gap_due, clock


class Watchdog:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        """The condition's own lock: held with ``with self._lock`` on the run's path (two
        calls, where ``with self._cond`` adds the condition's Python ``__enter__`` and
        ``__exit__``); ``self._cond.notify()`` under it is the same as under the condition."""
        self._cond = threading.Condition(self._lock)
        self._heap: list[tuple[float, int, int, Watch]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._alive = False
        """The thread runs its loop: set (under the lock) when it is started, cleared when
        its loop ends. ``Thread.is_alive()`` costs three calls, on every push."""
        self.fired_count = 0

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    def arm(
        self,
        watch: Watch,
        connection: AttemptConnection,
        *,
        sent_at: float,
        first_token: float,
        stale: float,
        total_due: float,
    ) -> None:
        watch.reset(
            connection, sent_at=sent_at, first_token=first_token, stale=stale, total_due=total_due
        )
        due, _ = watch.due()
        self._push(due, watch)

    def progressed(self, watch: Watch) -> None:
        """The first meaningful event arrived: the stale clock replaces first_token.
        Entries only ever move later lazily, so if stale is shorter than what remained
        of first_token, push the earlier deadline now (once per attempt)."""
        due, _ = watch.due()
        if due < watch.first_token_due:
            self._push(due, watch)

    def disarm(self, watch: Watch) -> None:
        # The heap entry stays and is dropped when popped: its generation is old.
        watch.armed = False
        watch.generation += 1

    def _push(self, due: float, watch: Watch) -> None:
        with self._lock:
            if not self._alive:
                self._start_thread()
            entry = (due, next(self._seq), watch.generation, watch)
            heapq.heappush(self._heap, entry)
            if self._heap[0] is entry:
                self._cond.notify()

    def _start_thread(self) -> None:
        """Under the lock: the first push, or the first after the loop ended (it never
        ends but by an exception) or after a fork."""
        self._alive = True
        self._thread = threading.Thread(target=self._run, name="lifecycle-watchdog", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._loop()
        finally:
            self._alive = False

    def _loop(self) -> None:
        while True:
            with self._cond:
                while True:
                    if not self._heap:
                        self._cond.wait()
                        continue
                    due = self._heap[0][0]
                    now = time.monotonic()
                    if due > now:
                        self._cond.wait(due - now)
                        continue
                    _, _, generation, watch = heapq.heappop(self._heap)
                    break
            if generation != watch.generation or not watch.armed:
                continue
            self._check(watch, generation)

    def _check(self, watch: Watch, generation: int) -> None:
        now = time.monotonic()
        deadline, clock = watch.due()
        if watch.holding and clock != "total":
            # The caller holds an event; its time is not silence. Look again one stale
            # period from now: the driver restarts progress_at when the caller resumes.
            self._requeue(min(now + watch.stale, watch.total_due), watch, generation)
            return
        if deadline > now:
            self._requeue(deadline, watch, generation)
            return
        self.fired_count += 1
        watch.fire(clock, deadline, now)

    def _requeue(self, due: float, watch: Watch, generation: int) -> None:
        with self._lock:
            if generation != watch.generation:
                return
            heapq.heappush(self._heap, (due, next(self._seq), generation, watch))

    def forget_after_fork(self) -> None:
        """In a forked child: the parent's watches belong to the parent's runs (their
        threads do not exist here) and their sockets are the parent's; firing one would
        shut down the parent's healthy stream. Start empty; the thread starts again with
        the child's first armed watch."""
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._heap = []
        self._seq = itertools.count()
        self._thread = None
        self._alive = False
        self.fired_count = 0


watchdog = Watchdog()
"""The process-wide watchdog (its thread starts with the first armed watch)."""
os.register_at_fork(after_in_child=watchdog.forget_after_fork)


# -- asyncio: one timer per run on the loop's own heap ------------------------------------
# Runs on an event loop are watched by the loop itself: ``loop.call_at`` puts one timer
# per in-flight attempt on the loop's heap. Like the thread watchdog, the timer is lazy:
# per event the driver only writes ``progress_at``; when the timer fires it recomputes
# the deadline and either aborts or re-arms itself once.


def arm_on_loop(
    loop: asyncio.AbstractEventLoop,
    watch: Watch,
    connection: AttemptConnection,
    *,
    sent_at: float,
    first_token: float,
    stale: float,
    total_due: float,
) -> None:
    watch.reset(
        connection, sent_at=sent_at, first_token=first_token, stale=stale, total_due=total_due
    )
    due, _ = watch.due()
    watch.timer = loop.call_at(due, _check_on_loop, loop, watch, watch.generation)


def progressed_on_loop(loop: asyncio.AbstractEventLoop, watch: Watch) -> None:
    """As ``Watchdog.progressed``: bring the loop timer forward if stale is shorter."""
    due, _ = watch.due()
    timer = watch.timer
    if timer is not None and due < timer.when():
        timer.cancel()
        watch.timer = loop.call_at(due, _check_on_loop, loop, watch, watch.generation)


def disarm_on_loop(watch: Watch) -> None:
    watch.armed = False
    watch.generation += 1
    timer = watch.timer
    if timer is not None:
        timer.cancel()
        watch.timer = None


def _check_on_loop(loop: asyncio.AbstractEventLoop, watch: Watch, generation: int) -> None:
    if generation != watch.generation or not watch.armed:
        return
    current = loop.time()
    deadline, clock = watch.due()
    if watch.holding and clock != "total":
        due = min(current + watch.stale, watch.total_due)
    elif deadline > current:
        due = deadline
    else:
        watch.timer = None
        watch.fire(clock, deadline, current)
        return
    watch.timer = loop.call_at(due, _check_on_loop, loop, watch, generation)
