"""The loopback provider server: recorded provider streams over real TCP, with faults.

Theory of operation
-------------------
One asyncio event loop serves every connection (``asyncio.start_server`` on 127.0.0.1),
so ten thousand idle or stalled connections cost ten thousand small tasks rather than
threads. In-process the loop runs in a daemon thread; ``serve_forever`` runs it in the
calling thread for a dedicated process. HTTP/1.1 is parsed by hand (request line,
headers, ``Content-Length`` or chunked body) because the faults live *below* HTTP
semantics: a stall after the headers, an RST in the middle of a chunked body.

Every connection has a reader task that keeps reading the socket for its whole life.
That is what lets a stalled response notice at once when the client gives up: EOF means
the client closed (``fin``), a reset means it aborted (``rst``). Bytes it reads are
buffered for the next request, so keep-alive still works.

Each request takes its fault from a script: the next fault queued for the key named in
its ``x-loopback-key`` header, else for its JSON ``model`` if that is a scripted key,
else from the default (``None``) script; an exhausted script means ``Healthy()``.

Paths under ``/_loopback/`` are the control endpoints (``POST /_loopback/script``,
``GET /_loopback/stats``), for a client in another process or language. They are not
provider traffic: a connection whose first request is a control call is taken out of
the counts and the logs, and is closed after the answer.

All accounting (connections opened and closed, who closed them and when, each request's
fault and status) is written on the loop thread under one lock and read as frozen
snapshots from any thread; waiters block on a condition the loop notifies on every
change, so tests wait for events rather than poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http
import itertools
import json
import logging
import signal
import socket
import struct
import sys
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

from . import _recordings
from ._faults import (
    DEFAULT_RECORDING,
    FAULT_TYPES,
    CompressedLine,
    DropAfterEvents,
    Healthy,
    HttpError,
    MalformedEvent,
    PingsOnly,
    RawResponse,
    ServerFault,
    StallAfterEvents,
    StallAfterHeaders,
    StallBeforeHeaders,
    TruncateAfterBlocks,
)
from ._recordings import Provider
from ._script import ScriptError, format_fault, parse_script
from ._validate import problems, validation_available

__all__ = ["KEY_HEADER", "ClosedBy", "ConnectionRecord", "LoopbackServer", "RequestRecord"]

logger = logging.getLogger(__name__)

ClosedBy = Literal["fin", "rst", "server_close"]
"""``fin``: the client closed; ``rst``: the client reset; ``server_close``: we closed."""

HOST = "127.0.0.1"
KEY_HEADER = "x-loopback-key"
CONTROL_PREFIX = "/_loopback/"
SCRIPT_PATH = CONTROL_PREFIX + "script"
STATS_PATH = CONTROL_PREFIX + "stats"
_CONTROL_METHODS = {SCRIPT_PATH: "POST", STATS_PATH: "GET"}

_ROUTES: dict[str, Provider] = {
    "/v1/messages": "anthropic",
    "/v1/chat/completions": "openai",
    "/chat/completions": "openai",
    "/v1/responses": "openai_responses",
    "/responses": "openai_responses",
}
_READ_SIZE = 64 * 1024
_MAX_HEAD = 64 * 1024
_MAX_BODY = 32 * 1024 * 1024
_END_CHUNKS = b"0\r\n\r\n"
_PING = {
    "anthropic": b'event: ping\ndata: {"type": "ping"}\n\n',
    "openai": b": keep-alive\n\n",
    "openai_responses": b": keep-alive\n\n",
}
_MALFORMED = {
    "anthropic": b"event: content_block_delta\n"
    b'data: {"type": "content_block_delta", "delta": {\n\n',
    "openai": b'data: {"id": "chatcmpl-loopback", "choices": [{"index": 0, "delta": {\n\n',
    "openai_responses": b"event: response.output_text.delta\n"
    b'data: {"type": "response.output_text.delta", "delta": {\n\n',
}
_RECORDING_FAULTS = (
    Healthy,
    StallAfterEvents,
    PingsOnly,
    DropAfterEvents,
    TruncateAfterBlocks,
    MalformedEvent,
    CompressedLine,
)
_REQUEST_ID_HEADER = {
    "anthropic": "request-id",
    "openai": "x-request-id",
    "openai_responses": "x-request-id",
}

_ANTHROPIC_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Invalid request"),
    401: ("authentication_error", "invalid x-api-key"),
    403: (
        "permission_error",
        "Your API key does not have permission to use the specified resource.",
    ),
    404: ("not_found_error", "Not found"),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Rate limited"),
    500: ("api_error", "Internal server error"),
    529: ("overloaded_error", "Overloaded"),
}
_OPENAI_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request"),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("invalid_request_error", "unsupported_country_region_territory", "Forbidden"),
    404: ("invalid_request_error", "model_not_found", "The model does not exist."),
    413: ("invalid_request_error", "request_too_large", "Request too large."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests."),
    500: ("server_error", None, "The server had an error while processing your request."),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
    529: ("server_error", None, "The engine is currently overloaded, please try again later."),
}


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


class _Closed(Exception):
    """The connection is gone (or being dropped): unwind the handler."""


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(eq=False, slots=True)
class _Conn:
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
class _Req:
    index: int
    conn: _Conn
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


@dataclass(frozen=True, slots=True)
class _HttpRequest:
    method: str
    target: str
    version: str
    headers: dict[str, str]
    body: bytes


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Overloaded" if status == 529 else "Error"


def _head(status: int, headers: Iterable[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status} {_reason(status)}"]
    lines.extend(f"{name}: {value}" for name, value in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _frame(block: bytes) -> bytes:
    """One HTTP/1.1 chunk: each SSE block goes out as exactly one chunk."""
    return b"%x\r\n%s\r\n" % (len(block), block)


@functools.cache
def _framed(provider: Provider, name: str) -> tuple[bytes, ...]:
    return tuple(_frame(block.raw) for block in _recordings.load(provider, name).blocks)


@functools.lru_cache(maxsize=4)
def _compressed_line_chunks(
    provider: Provider, recording: str, after_events: int, size: int, encoding: str
) -> tuple[bytes, ...]:
    """The body of a ``CompressedLine``, compressed, as HTTP/1.1 chunks. The line is fed
    to the compressor a piece at a time: the server never holds it whole either."""
    compressor = zlib.compressobj(
        wbits=zlib.MAX_WBITS | 16 if encoding == "gzip" else zlib.MAX_WBITS
    )
    out = [
        compressor.compress(
            b"".join(b.raw for b in _recordings.load(provider, recording).prefix(after_events))
        )
    ]
    opening, closing = b'data: {"pad": "', b'"}\n\n'
    padding = max(0, size - len(opening) - len(closing))
    out.append(compressor.compress(opening))
    piece = b"a" * min(padding, 1024 * 1024)
    while padding > 0:
        out.append(compressor.compress(piece[:padding]))
        padding -= len(piece)
    out.append(compressor.compress(closing))
    out.append(compressor.flush())
    body = b"".join(out)
    # Sent in pieces, as a server streams it: the client inflates chunk by chunk.
    return tuple(_frame(body[i : i + 16384]) for i in range(0, len(body), 16384))


@functools.cache
def _completion_body(provider: Provider, name: str) -> bytes:
    return json.dumps(_recordings.load(provider, name).completion()).encode()


def _truncated_completion_body(provider: Provider, name: str, blocks: int) -> bytes:
    recording = _recordings.load(provider, name)
    return json.dumps(recording.truncated(blocks).completion()).encode()


def error_body(provider: Provider, status: int, message: str | None = None) -> dict[str, Any]:
    """The provider's own JSON error shape for ``status``."""
    if provider == "anthropic":
        kind, default = _ANTHROPIC_ERRORS.get(
            status,
            ("api_error", "Internal server error")
            if status >= 500
            else ("invalid_request_error", _reason(status)),
        )
        return {"type": "error", "error": {"type": kind, "message": message or default}}
    kind, code, default = _OPENAI_ERRORS.get(
        status,
        ("server_error", None, _reason(status))
        if status >= 500
        else ("invalid_request_error", None, _reason(status)),
    )
    return {"error": {"message": message or default, "type": kind, "param": None, "code": code}}


def _guess_provider(path: str, headers: dict[str, str]) -> Provider:
    """For requests off the known routes, answer in the shape the caller most likely parses."""
    if "anthropic-version" in headers or "x-api-key" in headers or "messages" in path:
        return "anthropic"
    return "openai"


def _raise_fd_limit() -> None:
    """Let a dedicated server process hold as many sockets as the hard limit allows."""
    if sys.platform == "win32":
        return
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _print_listening(server: LoopbackServer) -> None:
    print(f"listening on {server.url}", flush=True)


class LoopbackServer:
    """An HTTP/1.1 server on 127.0.0.1 that replays recorded provider streams with faults.

    Use as a context manager (``with LoopbackServer() as server:``) or with
    ``start()``/``stop()`` to run it on a background thread; ``serve_forever()`` blocks
    instead. ``port=0`` picks a free port. ``keep_history=False`` keeps only the
    counters, for long benchmarks where per-request records would grow without bound.

    Request bodies are validated as the real APIs do (``_validate``): one the API would
    refuse is answered 400 ``invalid_request_error`` naming the problems, in the
    provider's error shape, and takes no fault from the script. ``validate=False``
    accepts any JSON object. Each request's body and problems are on its record
    (``requests``, ``bodies()``, ``last_body()``).
    """

    def __init__(
        self,
        port: int = 0,
        *,
        backlog: int = 4096,
        keep_history: bool = True,
        validate: bool = True,
    ) -> None:
        if validate and not validation_available():
            raise ImportError(
                "LoopbackServer(validate=True) needs jsonschema: "
                "pip install 'stream-lifecycle[loopback]', or pass validate=False"
            )
        self._validate = validate
        self._requested_port = port
        self._backlog = backlog
        self._keep_history = keep_history
        # Re-entrant so wait_until predicates may read the public snapshot properties.
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._scripts: dict[str | None, deque[ServerFault]] = {}
        self._conn_ids = itertools.count()
        self._opened = 0
        self._closed = 0
        self._received = 0
        self._conn_log: list[_Conn] = []
        self._req_log: list[_Req] = []
        self._state: Literal["new", "running", "stopped"] = "new"
        self._stop_requested = False
        self._port: int | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._thread: threading.Thread | None = None
        # Loop-thread only:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._live: set[_Conn] = set()
        self._handlers: set[asyncio.Task[Any]] = set()

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> LoopbackServer:
        """Start serving on a daemon thread; returns once the port is bound."""
        self._begin()
        self._thread = threading.Thread(
            target=self._run_in_thread, name="loopback-server", daemon=True
        )
        self._thread.start()
        self._ready.wait()
        if self._startup_error is not None:
            self._thread.join()
            with self._lock:
                self._state = "stopped"
            raise self._startup_error
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Close the listener and every connection, then end the loop thread. Idempotent."""
        with self._lock:
            if self._state == "new":
                self._state = "stopped"
                return
            self._stop_requested = True
            loop, event = self._loop, self._stop_event
        if loop is not None and event is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already closed
                loop.call_soon_threadsafe(event.set)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def serve_forever(self, announce: Callable[[LoopbackServer], None] | None = None) -> None:
        """Serve in the calling thread until ``stop()``, SIGINT or SIGTERM.

        Once bound it calls ``announce(self)``; by default that prints ``listening on
        <url>`` to stdout, one line, for a parent process to read.
        """
        self._begin()
        _raise_fd_limit()
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(self._main(announce=announce or _print_listening))

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _begin(self) -> None:
        with self._lock:
            if self._state != "new":
                raise RuntimeError("a LoopbackServer can be started only once")
            self._state = "running"

    def _run_in_thread(self) -> None:
        try:
            asyncio.run(self._main(announce=None))
        except BaseException as exc:
            if self._startup_error is None:  # else start() re-raises it in the caller
                if self._ready.is_set():
                    logger.exception("loopback server loop crashed")
                else:
                    self._startup_error = exc
        finally:
            self._ready.set()

    async def _main(self, *, announce: Callable[[LoopbackServer], None] | None) -> None:
        self._loop = asyncio.get_running_loop()
        stop_event = asyncio.Event()
        with self._lock:
            self._stop_event = stop_event
            if self._stop_requested:
                stop_event.set()
        try:
            server = await asyncio.start_server(
                self._on_connection, HOST, self._requested_port, backlog=self._backlog
            )
        except BaseException as exc:
            self._startup_error = exc
            self._ready.set()
            raise
        self._port = server.sockets[0].getsockname()[1]
        self._ready.set()
        if announce is not None:
            announce(self)
            if threading.current_thread() is threading.main_thread():
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    self._loop.add_signal_handler(signal.SIGTERM, stop_event.set)
        try:
            await stop_event.wait()
        finally:
            server.close()
            for conn in list(self._live):
                self._close(conn, "server_close", abort=True)
            if self._handlers:
                await asyncio.wait(set(self._handlers), timeout=5.0)
            await server.wait_closed()
            with self._lock:
                self._state = "stopped"
                self._cond.notify_all()

    # ----------------------------------------------------------------- scripting

    def script(self, key: str | None, faults: Iterable[ServerFault]) -> None:
        """Queue ``faults`` for requests with ``key``, one per request; replaces any queue.

        ``key`` matches the ``x-loopback-key`` header, or else the request's ``model``;
        ``None`` is the script for requests that match no key.
        """
        queue = deque(faults)
        known = {name for p in _recordings.PROVIDERS for name in _recordings.available(p)}
        for fault in queue:
            if not isinstance(fault, FAULT_TYPES):
                raise TypeError(f"not a loopback fault: {fault!r}")
            # A typo should fail here, not as a 400 deep inside the code under test.
            # (A recording of the other provider only fails when a request gets it.)
            if isinstance(fault, _RECORDING_FAULTS) and fault.recording not in known:
                raise ValueError(f"{fault!r}: no such recording; known: {', '.join(sorted(known))}")
        with self._lock:
            self._scripts[key] = queue

    def pending(self, key: str | None) -> tuple[ServerFault, ...]:
        """The faults still queued for ``key``."""
        with self._lock:
            return tuple(self._scripts.get(key, ()))

    def _fault_key(self, header_key: str | None, model: str | None) -> str | None:
        with self._lock:
            if header_key is not None:
                return header_key
            if model is not None and model in self._scripts:
                return model
            return None

    def _take_fault(
        self, header_key: str | None, model: str | None
    ) -> tuple[str | None, ServerFault]:
        with self._lock:
            key = self._fault_key(header_key, model)
            queue = self._scripts.get(key)
            return key, (queue.popleft() if queue else Healthy())

    # ----------------------------------------------------------------- accounting

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the server is not listening yet; call start()")
        return self._port

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def anthropic_base_url(self) -> str:
        """The Anthropic SDK appends ``/v1/messages`` itself."""
        return self.url

    @property
    def openai_base_url(self) -> str:
        """The OpenAI SDK appends only ``/chat/completions``, so the ``/v1`` is ours."""
        return self.url + "/v1"

    @property
    def script_url(self) -> str:
        """``POST`` a JSON ``{"key": ..., "script": ...}`` here to queue faults."""
        return self.url + SCRIPT_PATH

    @property
    def stats_url(self) -> str:
        """``GET`` the connection and request counts here."""
        return self.url + STATS_PATH

    def stats(self) -> dict[str, int]:
        """What ``GET /_loopback/stats`` answers: provider connections and requests."""
        with self._lock:
            return {
                "opened": self._opened,
                "open": self._opened - self._closed,
                "closed": self._closed,
                "requests": self._received,
            }

    @property
    def connections_opened(self) -> int:
        with self._lock:
            return self._opened

    @property
    def connections_closed(self) -> int:
        with self._lock:
            return self._closed

    @property
    def open_connections(self) -> int:
        with self._lock:
            return self._opened - self._closed

    @property
    def requests_received(self) -> int:
        with self._lock:
            return self._received

    @property
    def requests(self) -> list[RequestRecord]:
        with self._lock:
            return [req.snapshot() for req in self._req_log]

    def bodies(self) -> list[dict[str, Any]]:
        """The JSON bodies of the provider requests received, in order (with history kept)."""
        with self._lock:
            return [req.body for req in self._req_log if req.body is not None]

    def last_body(self) -> dict[str, Any]:
        """The body of the latest provider request that carried a JSON object."""
        bodies = self.bodies()
        if not bodies:
            raise LookupError("no provider request with a JSON body received yet")
        return bodies[-1]

    @property
    def connection_log(self) -> list[ConnectionRecord]:
        with self._lock:
            return [conn.snapshot() for conn in self._conn_log]

    def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Block until ``predicate()`` holds (re-checked on every server state change)."""
        with self._cond:
            return self._cond.wait_for(predicate, timeout)

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Wait until no connection is open."""
        return self.wait_until(lambda: self._opened == self._closed, timeout)

    def wait_for_closed(
        self, what: int | Callable[[ConnectionRecord], bool], timeout: float = 5.0
    ) -> bool:
        """Wait until ``what`` connections have closed, or a closed one satisfies ``what``."""
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
        """Wait until the connection that carried request ``index`` has closed."""
        return self.wait_for_closed(lambda c: index in c.request_indexes, timeout)

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> bool:
        """Wait until ``count`` requests have been received in total."""
        return self.wait_until(lambda: self._received >= count, timeout)

    def __repr__(self) -> str:
        where = self.url if self._port is not None else "unbound"
        with self._lock:
            return (
                f"<LoopbackServer {where} {self._state} open={self._opened - self._closed} "
                f"requests={self._received}>"
            )

    def _open(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> _Conn:
        peer = writer.get_extra_info("peername") or ("", 0)
        with self._lock:
            conn = _Conn(
                id=next(self._conn_ids),
                peer=(str(peer[0]), int(peer[1])),
                reader=reader,
                writer=writer,
                opened_at=time.monotonic(),
            )
            self._opened += 1
            if self._keep_history:
                self._conn_log.append(conn)
            self._cond.notify_all()
        self._live.add(conn)
        return conn

    def _close(self, conn: _Conn, by: ClosedBy, *, abort: bool, reset: bool = False) -> None:
        """Account for and close a connection once; later calls are no-ops."""
        with self._lock:
            if conn.closed_by is not None:
                return
            conn.closed_by = by
            conn.closed_at = time.monotonic()
            if not conn.control:
                self._closed += 1
            self._cond.notify_all()
        self._live.discard(conn)
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

    def _record(
        self,
        conn: _Conn,
        request: _HttpRequest,
        *,
        provider: Provider,
        path: str,
        key: str | None,
        model: str | None,
        stream: bool,
        fault: ServerFault | None,
        body: dict[str, Any] | None = None,
        problems: tuple[str, ...] = (),
    ) -> _Req:
        with self._lock:
            req = _Req(
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
            self._cond.notify_all()
        return req

    def _set_status(self, req: _Req, status: int) -> None:
        with self._lock:
            req.status = status
            self._cond.notify_all()

    # ----------------------------------------------------------------- connection I/O

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        conn = self._open(reader, writer)
        pump = asyncio.create_task(self._pump(conn))
        try:
            while True:
                request = await self._read_request(conn)
                if not await self._respond(conn, request):
                    self._close(conn, "server_close", abort=False)
                    break
        except _Closed:
            pass
        except _BadRequest as exc:
            with contextlib.suppress(_Closed):
                body = json.dumps(error_body("openai", exc.status, exc.message)).encode()
                await self._send(
                    conn,
                    _head(
                        exc.status,
                        [
                            ("content-type", "application/json"),
                            ("content-length", str(len(body))),
                            ("connection", "close"),
                        ],
                    )
                    + body,
                )
                self._close(conn, "server_close", abort=False)
        except Exception:
            logger.exception("loopback connection %d failed", conn.id)
        finally:
            self._close(conn, "server_close", abort=True)
            pump.cancel()
            await asyncio.wait({pump})
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)
            if task is not None:
                self._handlers.discard(task)

    async def _pump(self, conn: _Conn) -> None:
        """Read the socket for the connection's whole life, so a client leaving is seen at once."""
        try:
            while True:
                data = await conn.reader.read(_READ_SIZE)
                if not data:
                    self._close(conn, "fin", abort=False)
                    return
                conn.buf += data
                conn.changed.set()
                if len(conn.buf) > _MAX_BODY + _MAX_HEAD:
                    self._close(conn, "server_close", abort=True)
                    return
        except (ConnectionError, OSError):
            self._close(conn, "rst", abort=True)

    async def _more(self, conn: _Conn) -> None:
        if conn.closed_by is not None:
            raise _Closed
        conn.changed.clear()
        await conn.changed.wait()

    async def _read_line(self, conn: _Conn, limit: int) -> bytes:
        while (end := conn.buf.find(b"\r\n")) < 0:
            if len(conn.buf) > limit:
                raise _BadRequest(400, "line too long")
            await self._more(conn)
        line = bytes(conn.buf[:end])
        del conn.buf[: end + 2]
        return line

    async def _read_exact(self, conn: _Conn, size: int) -> bytes:
        while len(conn.buf) < size:
            await self._more(conn)
        data = bytes(conn.buf[:size])
        del conn.buf[:size]
        return data

    async def _read_request(self, conn: _Conn) -> _HttpRequest:
        while True:
            # RFC 9112 asks servers to ignore empty lines before a request line.
            while conn.buf.startswith(b"\r\n"):
                del conn.buf[:2]
            end = conn.buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            if len(conn.buf) > _MAX_HEAD:
                raise _BadRequest(431, "request header too large")
            await self._more(conn)
        head = bytes(conn.buf[:end]).decode("latin-1")
        del conn.buf[: end + 4]
        request_line, *header_lines = head.split("\r\n")
        parts = request_line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise _BadRequest(400, f"malformed request line: {request_line[:100]!r}")
        method, target, version = parts
        headers: dict[str, str] = {}
        for line in header_lines:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise _BadRequest(400, f"malformed header line: {line[:100]!r}")
            name = name.lower()
            value = value.strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        if headers.get("expect", "").lower() == "100-continue":
            await self._send(conn, b"HTTP/1.1 100 Continue\r\n\r\n")
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = await self._read_chunked(conn)
        else:
            try:
                length = int(headers.get("content-length", "0"))
            except ValueError:
                raise _BadRequest(400, "invalid content-length") from None
            if length < 0:
                raise _BadRequest(400, "invalid content-length")
            if length > _MAX_BODY:
                raise _BadRequest(413, "request body too large")
            body = await self._read_exact(conn, length)
        return _HttpRequest(method, target, version, headers, body)

    async def _read_chunked(self, conn: _Conn) -> bytes:
        body = bytearray()
        while True:
            size_line = await self._read_line(conn, 1024)
            try:
                size = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _BadRequest(400, "invalid chunk size") from None
            if size == 0:
                while await self._read_line(conn, _MAX_HEAD):  # trailers end at a blank line
                    pass
                return bytes(body)
            body += await self._read_exact(conn, size)
            if await self._read_exact(conn, 2) != b"\r\n":
                raise _BadRequest(400, "chunk not terminated by CRLF")
            if len(body) > _MAX_BODY:
                raise _BadRequest(413, "request body too large")

    async def _send(self, conn: _Conn, data: bytes) -> None:
        if conn.closed_by is not None:
            raise _Closed
        conn.writer.write(data)
        try:
            await conn.writer.drain()
        except (ConnectionError, OSError):
            self._close(conn, "rst", abort=True)
            raise _Closed from None
        if conn.closed_by is not None:
            raise _Closed

    async def _pause(self, conn: _Conn, seconds: float) -> None:
        """Sleep, unless the client leaves first."""
        if conn.closed_by is not None:
            raise _Closed
        try:
            async with asyncio.timeout(seconds):
                await conn.gone.wait()
        except TimeoutError:
            return
        raise _Closed

    async def _stall(self, conn: _Conn) -> None:
        await conn.gone.wait()
        raise _Closed

    async def _drop(self, conn: _Conn) -> None:
        """Flush what was written to the kernel, then reset the connection."""
        # With a zero high-water mark drain() returns only once the buffer is empty;
        # abort() would otherwise discard bytes the fault promised to deliver.
        conn.writer.transport.set_write_buffer_limits(high=0)
        await self._send(conn, b"")
        self._close(conn, "server_close", abort=True, reset=True)
        raise _Closed

    # ----------------------------------------------------------------- responses

    async def _respond(self, conn: _Conn, request: _HttpRequest) -> bool:
        """Answer one request; returns whether the connection stays open for another."""
        connection = request.headers.get("connection", "").lower()
        keep_alive = (
            "close" not in connection
            if request.version != "HTTP/1.0"
            else "keep-alive" in connection
        )
        path = request.target.split("?", 1)[0]
        if len(path) > 1:
            path = path.rstrip("/")
        if path.startswith(CONTROL_PREFIX):
            await self._control(conn, request, path)
            return False
        provider = _ROUTES.get(path)
        if provider is None or request.method != "POST":
            provider = provider or _guess_provider(path, request.headers)
            status = 404 if path not in _ROUTES else 405
            req = self._record(
                conn,
                request,
                provider=provider,
                path=path,
                key=None,
                model=None,
                stream=False,
                fault=None,
            )
            message = (
                f"{'Not found' if status == 404 else 'Method not allowed'}: {request.method} {path}"
            )
            await self._send_json(
                conn, req, status, error_body(provider, status, message), keep_alive
            )
            return keep_alive
        try:
            payload = json.loads(request.body)
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            req = self._record(
                conn,
                request,
                provider=provider,
                path=path,
                key=None,
                model=None,
                stream=False,
                fault=None,
            )
            body = error_body(provider, 400, "request body must be a JSON object")
            await self._send_json(conn, req, 400, body, keep_alive)
            return keep_alive
        model = payload.get("model") if isinstance(payload.get("model"), str) else None
        stream = payload.get("stream") is True
        refused = problems(provider, payload) if self._validate else ()
        if refused:
            # As the real API: a body it rejects never reaches the model, so the request
            # takes no fault from the script.
            req = self._record(
                conn,
                request,
                provider=provider,
                path=path,
                key=self._fault_key(request.headers.get(KEY_HEADER), model),
                model=model,
                stream=stream,
                fault=None,
                body=payload,
                problems=refused,
            )
            message = "; ".join(refused)
            body = error_body(provider, 400, message)
            if provider != "anthropic":
                body["error"]["param"] = refused[0].split(":", 1)[0]
            await self._send_json(conn, req, 400, body, keep_alive)
            return keep_alive
        key, fault = self._take_fault(request.headers.get(KEY_HEADER), model)
        req = self._record(
            conn,
            request,
            provider=provider,
            path=path,
            key=key,
            model=model,
            stream=stream,
            fault=fault,
            body=payload,
        )
        recording = fault.recording if isinstance(fault, _RECORDING_FAULTS) else DEFAULT_RECORDING
        if recording not in _recordings.available(provider):
            message = (
                f"loopback: no recording {recording!r} for {provider}; "
                f"available: {', '.join(_recordings.available(provider))}"
            )
            await self._send_json(conn, req, 400, error_body(provider, 400, message), keep_alive)
            return keep_alive
        if isinstance(fault, HttpError):
            await self._send_http_error(conn, req, fault, keep_alive)
        elif isinstance(fault, RawResponse):
            await self._send_raw(conn, req, fault, keep_alive)
        elif isinstance(fault, CompressedLine):
            await self._send_compressed_line(conn, req, fault, keep_alive)
        elif stream:
            await self._stream(conn, req, fault, recording, keep_alive)
        else:
            await self._complete(conn, req, fault, recording, keep_alive)
        return keep_alive

    # ----------------------------------------------------------------- control endpoints

    def _set_control(self, conn: _Conn) -> None:
        """Take a connection that has carried no provider request out of the counts."""
        with self._lock:
            if conn.control or conn.request_indexes:
                return
            conn.control = True
            self._opened -= 1
            if self._keep_history:
                self._conn_log.remove(conn)
            self._cond.notify_all()

    async def _control(self, conn: _Conn, request: _HttpRequest, path: str) -> None:
        self._set_control(conn)
        method = _CONTROL_METHODS.get(path)
        status = 200
        payload: dict[str, Any] | None = None
        if method is None:
            status = 404
            message = f"no control endpoint {path}; there are {', '.join(_CONTROL_METHODS)}"
        elif request.method != method:
            status, message = 405, f"{path} takes {method}, not {request.method}"
        elif path == STATS_PATH:
            payload = self.stats()
        else:
            try:
                payload = self._script_from_json(request.body)
            except ScriptError as exc:
                status, message = 400, str(exc)
        if payload is None:
            payload = {"error": {"type": "loopback_control_error", "message": message}}
        body = json.dumps(payload).encode()
        headers = [
            ("content-type", "application/json"),
            ("content-length", str(len(body))),
            ("connection", "close"),
        ]
        await self._send(conn, _head(status, headers) + body)

    def _script_from_json(self, body: bytes) -> dict[str, Any]:
        try:
            payload = json.loads(body)
        except ValueError:
            raise ScriptError(
                'the body must be JSON: {"key": "k1", "script": "stall_after:1,healthy"}'
            ) from None
        if not isinstance(payload, dict) or "script" not in payload:
            raise ScriptError('the body must be a JSON object with a "script" (and a "key")')
        key = payload.get("key")
        if key is not None and not isinstance(key, str):
            raise ScriptError(f'"key" must be a string or null, got {key!r}')
        script = payload["script"]
        if not isinstance(script, str | list):
            raise ScriptError(f'"script" must be a string or a list of steps, got {script!r}')
        faults = parse_script(script)
        try:
            self.script(key, faults)
        except ValueError as exc:  # a recording of no provider
            raise ScriptError(str(exc)) from None
        return {"key": key, "pending": [format_fault(f) for f in self.pending(key)]}

    def _common_headers(self, req: _Req, keep_alive: bool) -> list[tuple[str, str]]:
        return [
            (_REQUEST_ID_HEADER[req.provider], f"req_loopback_{req.index}"),
            ("connection", "keep-alive" if keep_alive else "close"),
        ]

    async def _send_json(
        self, conn: _Conn, req: _Req, status: int, payload: dict[str, Any], keep_alive: bool
    ) -> None:
        body = json.dumps(payload).encode()
        headers = [("content-type", "application/json"), ("content-length", str(len(body)))]
        self._set_status(req, status)
        await self._send(
            conn, _head(status, headers + self._common_headers(req, keep_alive)) + body
        )

    async def _send_http_error(
        self, conn: _Conn, req: _Req, fault: HttpError, keep_alive: bool
    ) -> None:
        if fault.body is None:
            body = json.dumps(error_body(req.provider, fault.status)).encode()
        elif isinstance(fault.body, str):
            body = fault.body.encode()
        else:
            body = fault.body
        headers: list[tuple[str, str]] = []
        if not any(name.lower() == "content-type" for name, _ in fault.headers):
            headers.append(("content-type", "application/json"))
        headers.append(("content-length", str(len(body))))
        headers += self._common_headers(req, keep_alive)
        headers += fault.headers
        self._set_status(req, fault.status)
        await self._send(conn, _head(fault.status, headers) + body)

    async def _send_raw(self, conn: _Conn, req: _Req, fault: RawResponse, keep_alive: bool) -> None:
        headers = list(fault.headers)
        if fault.chunked:
            headers.append(("transfer-encoding", "chunked"))
            payload = _frame(fault.body) if fault.body else b""
            ending = _END_CHUNKS
        else:
            headers.append(("content-length", str(len(fault.body))))
            payload, ending = fault.body, b""
        headers += self._common_headers(req, keep_alive)
        self._set_status(req, fault.status)
        await self._send(conn, _head(fault.status, headers) + payload)
        if fault.end == "complete":
            if ending:
                await self._send(conn, ending)
        elif fault.end == "cut":
            await self._drop(conn)
        else:
            await self._stall(conn)

    async def _send_compressed_line(
        self, conn: _Conn, req: _Req, fault: CompressedLine, keep_alive: bool
    ) -> None:
        chunks = _compressed_line_chunks(
            req.provider, fault.recording, fault.after_events, fault.size, fault.encoding
        )
        head = _head(
            200,
            [
                ("content-type", "text/event-stream; charset=utf-8"),
                ("content-encoding", fault.encoding),
                ("transfer-encoding", "chunked"),
                *self._common_headers(req, keep_alive),
            ],
        )
        self._set_status(req, 200)
        await self._send(conn, head)
        for chunk in chunks:
            await self._send(conn, chunk)
        await self._send(conn, _END_CHUNKS)

    async def _stream(
        self, conn: _Conn, req: _Req, fault: ServerFault, recording: str, keep_alive: bool
    ) -> None:
        """Answer a ``stream: true`` request: chunked SSE, one block per chunk."""
        if isinstance(fault, StallBeforeHeaders):
            await self._stall(conn)
        provider = req.provider
        chunks = _framed(provider, recording)
        head = _head(
            200,
            [
                ("content-type", "text/event-stream; charset=utf-8"),
                ("cache-control", "no-cache"),
                ("transfer-encoding", "chunked"),
                *self._common_headers(req, keep_alive),
            ],
        )
        self._set_status(req, 200)

        def prefix(n: int) -> bytes:
            return b"".join(chunks[: len(_recordings.load(provider, recording).prefix(n))])

        if isinstance(fault, StallAfterHeaders):
            await self._send(conn, head)
            await self._stall(conn)
        elif isinstance(fault, StallAfterEvents):
            await self._send(conn, head + prefix(fault.n))
            await self._stall(conn)
        elif isinstance(fault, DropAfterEvents):
            await self._send(conn, head + prefix(fault.n))
            await self._drop(conn)
        elif isinstance(fault, TruncateAfterBlocks):
            await self._send(conn, head + b"".join(chunks[: fault.n]))
            if fault.end == "cut":
                await self._drop(conn)
            await self._send(conn, _END_CHUNKS)
        elif isinstance(fault, PingsOnly):
            await self._send(conn, head + prefix(fault.after_events))
            ping = _frame(_PING[provider])
            while True:
                await self._pause(conn, fault.interval)
                await self._send(conn, ping)
        elif isinstance(fault, MalformedEvent):
            sent = len(_recordings.load(provider, recording).prefix(fault.after_events))
            await self._send(
                conn,
                head
                + b"".join(chunks[:sent])
                + _frame(_MALFORMED[provider])
                + b"".join(chunks[sent:])
                + _END_CHUNKS,
            )
        elif isinstance(fault, Healthy):
            if fault.head_delay > 0.0:
                await self._pause(conn, fault.head_delay)
            if fault.drip <= 0.0:
                await self._send(conn, head + b"".join(chunks) + _END_CHUNKS)
                return
            await self._send(conn, head)
            for i, chunk in enumerate(chunks):
                if i:
                    await self._pause(conn, fault.drip)
                await self._send(conn, chunk)
            await self._send(conn, _END_CHUNKS)

    async def _complete(
        self, conn: _Conn, req: _Req, fault: ServerFault, recording: str, keep_alive: bool
    ) -> None:
        """Answer a non-streaming request with the completion assembled from the recording.

        Faults keep their meaning where a plain body allows: stalls hold the body back,
        a drop resets the connection halfway through it, a malformed event truncates it.
        """
        if isinstance(fault, StallBeforeHeaders):
            await self._stall(conn)
        body = _completion_body(req.provider, recording)
        if isinstance(fault, TruncateAfterBlocks):
            body = _truncated_completion_body(req.provider, recording, fault.n)
        if isinstance(fault, MalformedEvent):
            body = body[: len(body) // 2]
        head = _head(
            200,
            [
                ("content-type", "application/json"),
                ("content-length", str(len(body))),
                *self._common_headers(req, keep_alive),
            ],
        )
        if isinstance(fault, Healthy) and fault.drip + fault.head_delay > 0.0:
            blocks = len(_recordings.load(req.provider, recording).blocks)
            await self._pause(conn, fault.head_delay + fault.drip * blocks)
        self._set_status(req, 200)
        if isinstance(fault, StallAfterHeaders | StallAfterEvents | PingsOnly):
            await self._send(conn, head)
            await self._stall(conn)
        elif isinstance(fault, DropAfterEvents) or (
            isinstance(fault, TruncateAfterBlocks) and fault.end == "cut"
        ):
            await self._send(conn, head + body[: len(body) // 2])
            await self._drop(conn)
        else:
            await self._send(conn, head + body)
