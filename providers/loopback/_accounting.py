"""What the loopback server counts and logs, and the waits tests block on until it changes.

The server's bookkeeping lives here: the frozen records handed out (``RequestRecord``,
``ConnectionRecord``, ``ClosedBy``), the live state they are snapshots of (``Conn``,
``Req``), and ``Accounting``, which holds the counters and logs. Everything is written
on the loop thread under one re-entrant lock and read as snapshots from any thread;
every change notifies one condition, so a test waits for a state (``wait_until`` and
the ``wait_for_*`` helpers) rather than polling. ``LoopbackServer`` shares the lock for
its scripts and lifecycle state and exposes the read side as its own API.

``Accounting.close`` is the one place a connection ends: it records who closed it and
when, then closes (or resets) the transport, once. ``Closed`` is what the handler's
writes and waits raise after that, to unwind.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from ._faults import ServerFault
from ._http import HttpRequest
from ._recordings import Provider

__all__ = ["Accounting", "Closed", "ClosedBy", "Conn", "ConnectionRecord", "Req", "RequestRecord"]

ClosedBy = Literal["fin", "rst", "server_close"]
"""``fin``: the client closed; ``rst``: the client reset; ``server_close``: we closed."""


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request as the server saw it; the ``connection_*`` fields are as of the snapshot."""

    index: int
    connection_id: int
    key: str | None
    """The script key the fault came from (header key, or the model), ``None`` for default."""
    provider: Provider
    method: str
    path: str
    model: str | None
    stream: bool
    fault: ServerFault | None
    """The fault applied; ``None`` when the request was refused (404, 405, bad JSON)."""
    received_at: float
    """``time.monotonic()`` when the request was fully read."""
    status: int | None
    """The status sent, ``None`` while (or if) no status line has gone out."""
    connection_closed_at: float | None
    connection_closed_by: ClosedBy | None
    body: dict[str, Any] | None = None
    """The request body as parsed JSON, ``None`` when it was not a JSON object."""
    problems: tuple[str, ...] = ()
    """Why validation refused the body (answered 400); empty when it was accepted."""


@dataclass(frozen=True, slots=True)
class ConnectionRecord:
    id: int
    peer: tuple[str, int]
    """The client's address: its port identifies the client socket."""
    opened_at: float
    closed_at: float | None
    closed_by: ClosedBy | None
    request_indexes: tuple[int, ...]
    keys: tuple[str | None, ...]
    """The distinct script keys of its requests, in order of first use."""


class Closed(Exception):
    """The connection is gone (or being dropped): unwind the handler."""


@dataclass(eq=False, slots=True)
class Conn:
    id: int
    peer: tuple[str, int]
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    opened_at: float
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when bytes arrive or the connection closes; the request parser waits on it."""
    gone: asyncio.Event = field(default_factory=asyncio.Event)
    buf: bytearray = field(default_factory=bytearray)
    closed_at: float | None = None
    closed_by: ClosedBy | None = None
    request_indexes: list[int] = field(default_factory=list)
    keys: list[str | None] = field(default_factory=list)
    control: bool = False
    """Carries control calls: not counted as opened, closed, or logged."""

    def snapshot(self) -> ConnectionRecord:
        return ConnectionRecord(
            id=self.id,
            peer=self.peer,
            opened_at=self.opened_at,
            closed_at=self.closed_at,
            closed_by=self.closed_by,
            request_indexes=tuple(self.request_indexes),
            keys=tuple(self.keys),
        )


@dataclass(eq=False, slots=True)
class Req:
    index: int
    conn: Conn
    key: str | None
    provider: Provider
    method: str
    path: str
    model: str | None
    stream: bool
    fault: ServerFault | None
    received_at: float
    status: int | None = None
    body: dict[str, Any] | None = None
    problems: tuple[str, ...] = ()

    def snapshot(self) -> RequestRecord:
        return RequestRecord(
            index=self.index,
            connection_id=self.conn.id,
            key=self.key,
            provider=self.provider,
            method=self.method,
            path=self.path,
            model=self.model,
            stream=self.stream,
            fault=self.fault,
            received_at=self.received_at,
            status=self.status,
            connection_closed_at=self.conn.closed_at,
            connection_closed_by=self.conn.closed_by,
            body=self.body,
            problems=self.problems,
        )


class Accounting:
    """The counters and logs of one server, and the waits on them.

    ``lock`` guards every field here (and the server's scripts and state); ``cond``
    is notified on every change. ``live`` is the loop thread's own: the connections
    not yet closed, for the server to close when it stops.
    """

    def __init__(self, *, keep_history: bool) -> None:
        self._keep_history = keep_history
        # Re-entrant so wait_until predicates may read the public snapshot properties.
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        self._conn_ids = itertools.count()
        self._opened = 0
        self._closed = 0
        self._received = 0
        self._conn_log: list[Conn] = []
        self._req_log: list[Req] = []
        # Loop-thread only:
        self.live: set[Conn] = set()

    # ----------------------------------------------------------------- reading

    def stats(self) -> dict[str, int]:
        with self.lock:
            return {
                "opened": self._opened,
                "open": self._opened - self._closed,
                "closed": self._closed,
                "requests": self._received,
            }

    @property
    def connections_opened(self) -> int:
        with self.lock:
            return self._opened

    @property
    def connections_closed(self) -> int:
        with self.lock:
            return self._closed

    @property
    def open_connections(self) -> int:
        with self.lock:
            return self._opened - self._closed

    @property
    def requests_received(self) -> int:
        with self.lock:
            return self._received

    @property
    def requests(self) -> list[RequestRecord]:
        with self.lock:
            return [req.snapshot() for req in self._req_log]

    def bodies(self) -> list[dict[str, Any]]:
        with self.lock:
            return [req.body for req in self._req_log if req.body is not None]

    def last_body(self) -> dict[str, Any]:
        bodies = self.bodies()
        if not bodies:
            raise LookupError("no provider request with a JSON body received yet")
        return bodies[-1]

    @property
    def connection_log(self) -> list[ConnectionRecord]:
        with self.lock:
            return [conn.snapshot() for conn in self._conn_log]

    # ----------------------------------------------------------------- waiting

    def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        with self.cond:
            return self.cond.wait_for(predicate, timeout)

    def wait_idle(self, timeout: float = 5.0) -> bool:
        return self.wait_until(lambda: self._opened == self._closed, timeout)

    def wait_for_closed(
        self, what: int | Callable[[ConnectionRecord], bool], timeout: float = 5.0
    ) -> bool:
        if isinstance(what, int):
            count = what
            return self.wait_until(lambda: self._closed >= count, timeout)
        predicate = what
        return self.wait_until(
            lambda: any(
                c.closed_by is not None and predicate(c.snapshot()) for c in self._conn_log
            ),
            timeout,
        )

    def wait_for_request_closed(self, index: int, timeout: float = 5.0) -> bool:
        return self.wait_for_closed(lambda c: index in c.request_indexes, timeout)

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> bool:
        return self.wait_until(lambda: self._received >= count, timeout)

    # ----------------------------------------------------------------- writing (loop thread)

    def open(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Conn:
        peer = writer.get_extra_info("peername") or ("", 0)
        with self.lock:
            conn = Conn(
                id=next(self._conn_ids),
                peer=(str(peer[0]), int(peer[1])),
                reader=reader,
                writer=writer,
                opened_at=time.monotonic(),
            )
            self._opened += 1
            if self._keep_history:
                self._conn_log.append(conn)
            self.cond.notify_all()
        self.live.add(conn)
        return conn

    def close(self, conn: Conn, by: ClosedBy, *, abort: bool, reset: bool = False) -> None:
        """Account for and close a connection once; later calls are no-ops."""
        with self.lock:
            if conn.closed_by is not None:
                return
            conn.closed_by = by
            conn.closed_at = time.monotonic()
            if not conn.control:
                self._closed += 1
            self.cond.notify_all()
        self.live.discard(conn)
        if reset:
            sock = conn.writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        if abort:
            conn.writer.transport.abort()
        else:
            conn.writer.close()
        conn.gone.set()
        conn.changed.set()

    def set_control(self, conn: Conn) -> None:
        """Take a connection that has carried no provider request out of the counts."""
        with self.lock:
            if conn.control or conn.request_indexes:
                return
            conn.control = True
            self._opened -= 1
            if self._keep_history:
                self._conn_log.remove(conn)
            self.cond.notify_all()

    def record(
        self,
        conn: Conn,
        request: HttpRequest,
        *,
        provider: Provider,
        path: str,
        key: str | None,
        model: str | None,
        stream: bool,
        fault: ServerFault | None,
        body: dict[str, Any] | None = None,
        problems: tuple[str, ...] = (),
    ) -> Req:
        with self.lock:
            req = Req(
                index=self._received,
                conn=conn,
                key=key,
                provider=provider,
                method=request.method,
                path=path,
                model=model,
                stream=stream,
                fault=fault,
                received_at=time.monotonic(),
                body=body if self._keep_history else None,
                problems=problems,
            )
            self._received += 1
            if self._keep_history:
                self._req_log.append(req)
            conn.request_indexes.append(req.index)
            if key not in conn.keys:
                conn.keys.append(key)
            self.cond.notify_all()
        return req

    def set_status(self, req: Req, status: int) -> None:
        with self.lock:
            req.status = status
            self.cond.notify_all()
