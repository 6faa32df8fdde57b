"""The active attempt's connection, and the only thing another thread may do to it: abort.

Measured on Linux: a thread blocked reading a silent
stream is woken by ``sock.shutdown(SHUT_RDWR)`` in about 1 ms, and by nothing else
done from another thread: ``close()`` of the client, the stream, the HTTP client or
the socket leaves it blocked until the read timeout, and frees its file descriptor for
reuse while the read still holds it. So a foreign thread (the watchdog, a caller's
``interrupt()``) only ever calls ``AttemptConnection.abort()``, which shuts the socket
down and never closes it; closing is left to the thread that owns the run.

Adapters tell the connection which socket it is: through the HTTP client's network
backend when the request is written (so a request stuck before response headers can
be aborted too), and through the response's ``network_stream`` once headers arrived.
``active_connection`` is how the backend, deep inside the SDK, finds the attempt that
is writing: the driver sets it only around the call that opens the attempt's request,
and resets it in that same context (a run may be stepped from a worker pool, each step
in another thread's context).
"""

from __future__ import annotations

import contextlib
import functools
import socket
import threading
import time
from contextvars import ContextVar
from typing import Final, Protocol
from urllib.parse import urlsplit

__all__ = [
    "AttemptConnection",
    "OversizedEvent",
    "Shutdownable",
    "active_connection",
    "count_decoded",
    "count_read",
]


class Shutdownable(Protocol):
    def shutdown(self, how: int, /) -> None: ...


class AttemptConnection:
    """The socket of one attempt, shared by the run's thread and its aborters."""

    __slots__ = (
        "_live",
        "_lock",
        "_sock",
        "abort_reason",
        "aborted_at",
        "aborted_by",
        "byte_budget",
        "bytes_at_progress",
        "bytes_read",
        "closing",
        "decoded_at_progress",
        "decoded_bytes",
        "first_byte_at",
        "sent_at",
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sock: Shutdownable | None = None
        self._live = True
        self.aborted_at: float | None = None
        self.aborted_by: str | None = None
        self.abort_reason: str | None = None
        self.bytes_read = 0
        self.bytes_at_progress = 0
        """``bytes_read`` when the last meaningful event arrived."""
        self.byte_budget: float = float("inf")
        """How many bytes may arrive without a meaningful event before the read fails
        with ``OversizedEvent`` (a single SSE line of 64 MiB must not be buffered whole)."""
        self.decoded_bytes = 0
        """Bytes of a compressed body after decoding (``count_decoded``): the budget
        holds on them too, since 64 KiB of gzip can inflate to a 64 MiB line."""
        self.decoded_at_progress = 0
        self.first_byte_at: float | None = None
        self.sent_at: float | None = None
        self.closing: threading.Event | None = None
        """The engine's close flag: once it is set, ``refuse_if_closing`` shuts the socket
        a request is about to be written on, so an attempt that the engine's close() has
        not reached yet sends nothing."""

    def progressed(self) -> None:
        """A meaningful event arrived: the byte budget starts again from here."""
        self.bytes_at_progress = self.bytes_read
        self.decoded_at_progress = self.decoded_bytes

    @property
    def aborted(self) -> bool:
        return self.aborted_at is not None

    @property
    def has_socket(self) -> bool:
        return self._sock is not None

    def attach(self, sock: Shutdownable | None) -> None:
        """Record the socket this attempt is using; shut it at once if already aborted."""
        if sock is None:
            return
        with self._lock:
            if not self._live:
                return
            self._sock = sock
            if self.aborted_at is not None:
                _shutdown(sock)

    def detach(self, sock: Shutdownable) -> None:
        """The socket is being closed by its owner: an abort must no longer touch it,
        because its file descriptor number may be reused as soon as it is closed."""
        with self._lock:
            if self._sock is sock:
                self._sock = None

    def abort(self, *, reason: str) -> bool:
        """Shut the socket down (any thread). Returns whether a socket was shut.

        Idempotent; after ``release()`` it does nothing, so a connection that went back
        to the pool (and may now serve another run) is never touched.
        """
        with self._lock:
            if not self._live:
                return False
            if self.aborted_at is None:
                self.aborted_at = time.monotonic()
                self.aborted_by = threading.current_thread().name
                self.abort_reason = reason
            sock = self._sock
            if sock is None:
                return False
            _shutdown(sock)
            return True

    def refuse_if_closing(self, sock: Shutdownable | None) -> None:
        """Called by the transport before it writes on ``sock`` for this attempt."""
        closing = self.closing
        if closing is None or not closing.is_set():
            return
        with self._lock:
            if not self._live:
                return
            if self.aborted_at is None:
                self.aborted_at = time.monotonic()
                self.aborted_by = threading.current_thread().name
                self.abort_reason = "engine_closed"
            if sock is not None:
                _shutdown(sock)

    def release(self) -> None:
        """The attempt is over for this connection: from now on abort() is a no-op."""
        with self._lock:
            self._live = False
            self._sock = None


def _shutdown(sock: Shutdownable) -> None:
    # Already shut, or already closed by its owner: either way the reader is free.
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class OversizedEvent(Exception):
    """Raised from the network read when more than ``byte_budget`` bytes arrived without
    a meaningful event: the engine stops reading instead of buffering it."""


def count_read(connection: AttemptConnection | None, size: int, at: float) -> None:
    """Account ``size`` bytes read for ``connection`` (called by adapters' network streams)."""
    if connection is None or not size:
        return
    connection.bytes_read += size
    if connection.first_byte_at is None:
        connection.first_byte_at = at
    if connection.bytes_read - connection.bytes_at_progress > connection.byte_budget:
        raise OversizedEvent(
            f"more than {int(connection.byte_budget)} bytes arrived without a meaningful event"
        )


def count_decoded(connection: AttemptConnection, size: int) -> None:
    """Account ``size`` bytes inflated from a compressed body (called by adapters as they
    decode, a bounded piece at a time, before the SDK sees the piece)."""
    connection.decoded_bytes += size
    if connection.decoded_bytes - connection.decoded_at_progress > connection.byte_budget:
        raise OversizedEvent(
            f"more than {int(connection.byte_budget)} decoded bytes arrived without a "
            "meaningful event"
        )


active_connection: ContextVar[AttemptConnection | None] = ContextVar(
    "lifecycle_active_connection", default=None
)


DEFAULT_PORTS: Final = {"https": 443, "http": 80}


@functools.lru_cache(maxsize=256)
def server_of(url: str | None) -> tuple[str | None, int | None]:
    """Host and port of a base URL (the scheme's default port when the URL has none).
    Cached: each attempt asks about its route's base URL, one of a handful."""
    if not url:
        return None, None
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None and parts.hostname:
        port = DEFAULT_PORTS.get(parts.scheme)
    return parts.hostname, port
