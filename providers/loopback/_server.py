"""The loopback provider server: recorded provider streams over real TCP, with faults.

Theory of operation
-------------------
One asyncio event loop serves every connection (``asyncio.start_server`` on 127.0.0.1),
so ten thousand idle or stalled connections cost ten thousand small tasks rather than
threads. In-process the loop runs in a daemon thread; ``serve_forever`` runs it in the
calling thread for a dedicated process. HTTP/1.1 is parsed by hand (request line,
headers, ``Content-Length`` or chunked body, in ``_http``) because the faults live
*below* HTTP semantics: a stall after the headers, an RST in the middle of a chunked
body.

Every connection has a reader task that keeps reading the socket for its whole life.
That is what lets a stalled response notice at once when the client gives up: EOF means
the client closed (``fin``), a reset means it aborted (``rst``). Bytes it reads are
buffered for the next request, so keep-alive still works.

Each request takes its fault from a script: the next fault queued for the key named in
its ``x-loopback-key`` header, else for its JSON ``model`` if that is a scripted key,
else from the default (``None``) script; an exhausted script means ``Healthy()``.
``_execute`` carries the fault out on the connection, with the bytes of ``_wire`` and
``_error_bodies``.

Paths under ``/_loopback/`` are the control endpoints (``POST /_loopback/script``,
``GET /_loopback/stats``), for a client in another process or language. They are not
provider traffic: a connection whose first request is a control call is taken out of
the counts and the logs, and is closed after the answer.

All accounting (connections opened and closed, who closed them and when, each request's
fault and status) is written on the loop thread under one lock and read as frozen
snapshots from any thread; waiters block on a condition the loop notifies on every
change, so tests wait for events rather than poll. That bookkeeping is ``_accounting``;
this module is the server's lifecycle (start, stop, the loop and its thread), the
scripts, the connection handler and the dispatch of each request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable
from functools import partial
from types import TracebackType
from typing import Any, Literal

from . import _recordings
from ._accounting import Accounting, Closed, Conn, ConnectionRecord, RequestRecord
from ._error_bodies import error_body, guess_provider
from ._execute import execute, send, send_json
from ._faults import DEFAULT_RECORDING, FAULT_TYPES, RECORDING_FAULTS, Healthy, ServerFault
from ._http import (
    MAX_BODY,
    MAX_HEAD,
    READ_SIZE,
    BadRequest,
    HttpRequest,
    keep_alive,
    read_request,
    response_head,
)
from ._recordings import Provider
from ._script import ScriptError, format_fault, parse_script
from ._validate import problems, validation_available

__all__ = ["KEY_HEADER", "LoopbackServer"]

logger = logging.getLogger(__name__)

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
        self._accounting = Accounting(keep_history=keep_history)
        # The accounting's lock and condition also guard the scripts and the state.
        self._lock = self._accounting.lock
        self._cond = self._accounting.cond
        self._scripts: dict[str | None, deque[ServerFault]] = {}
        self._state: Literal["new", "running", "stopped"] = "new"
        self._stop_requested = False
        self._port: int | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._thread: threading.Thread | None = None
        # Loop-thread only:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
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
            for conn in list(self._accounting.live):
                self._accounting.close(conn, "server_close", abort=True)
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
            if isinstance(fault, RECORDING_FAULTS) and fault.recording not in known:
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

    # ----------------------------------------------------------------- addresses

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

    # ----------------------------------------------------------------- accounting
    # The counts, logs and waits are ``Accounting``'s; the server answers for them.

    def stats(self) -> dict[str, int]:
        """What ``GET /_loopback/stats`` answers: provider connections and requests."""
        return self._accounting.stats()

    @property
    def connections_opened(self) -> int:
        return self._accounting.connections_opened

    @property
    def connections_closed(self) -> int:
        return self._accounting.connections_closed

    @property
    def open_connections(self) -> int:
        return self._accounting.open_connections

    @property
    def requests_received(self) -> int:
        return self._accounting.requests_received

    @property
    def requests(self) -> list[RequestRecord]:
        return self._accounting.requests

    def bodies(self) -> list[dict[str, Any]]:
        """The JSON bodies of the provider requests received, in order (with history kept)."""
        return self._accounting.bodies()

    def last_body(self) -> dict[str, Any]:
        """The body of the latest provider request that carried a JSON object."""
        return self._accounting.last_body()

    @property
    def connection_log(self) -> list[ConnectionRecord]:
        return self._accounting.connection_log

    def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Block until ``predicate()`` holds (re-checked on every server state change)."""
        return self._accounting.wait_until(predicate, timeout)

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Wait until no connection is open."""
        return self._accounting.wait_idle(timeout)

    def wait_for_closed(
        self, what: int | Callable[[ConnectionRecord], bool], timeout: float = 5.0
    ) -> bool:
        """Wait until ``what`` connections have closed, or a closed one satisfies ``what``."""
        return self._accounting.wait_for_closed(what, timeout)

    def wait_for_request_closed(self, index: int, timeout: float = 5.0) -> bool:
        """Wait until the connection that carried request ``index`` has closed."""
        return self._accounting.wait_for_request_closed(index, timeout)

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> bool:
        """Wait until ``count`` requests have been received in total."""
        return self._accounting.wait_for_requests(count, timeout)

    def __repr__(self) -> str:
        where = self.url if self._port is not None else "unbound"
        with self._lock:
            return (
                f"<LoopbackServer {where} {self._state} open={self.open_connections} "
                f"requests={self.requests_received}>"
            )

    # ----------------------------------------------------------------- connection I/O

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        conn = self._accounting.open(reader, writer)
        pump = asyncio.create_task(self._pump(conn))
        try:
            while True:
                request = await read_request(
                    conn.buf, partial(self._more, conn), partial(send, self._accounting, conn)
                )
                if not await self._respond(conn, request):
                    self._accounting.close(conn, "server_close", abort=False)
                    break
        except Closed:
            pass
        except BadRequest as exc:
            with contextlib.suppress(Closed):
                body = json.dumps(error_body("openai", exc.status, exc.message)).encode()
                await send(
                    self._accounting,
                    conn,
                    response_head(
                        exc.status,
                        [
                            ("content-type", "application/json"),
                            ("content-length", str(len(body))),
                            ("connection", "close"),
                        ],
                    )
                    + body,
                )
                self._accounting.close(conn, "server_close", abort=False)
        except Exception:
            logger.exception("loopback connection %d failed", conn.id)
        finally:
            self._accounting.close(conn, "server_close", abort=True)
            pump.cancel()
            await asyncio.wait({pump})
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)
            if task is not None:
                self._handlers.discard(task)

    async def _pump(self, conn: Conn) -> None:
        """Read the socket for the connection's whole life, so a client leaving is seen at once."""
        try:
            while True:
                data = await conn.reader.read(READ_SIZE)
                if not data:
                    self._accounting.close(conn, "fin", abort=False)
                    return
                conn.buf += data
                conn.changed.set()
                if len(conn.buf) > MAX_BODY + MAX_HEAD:
                    self._accounting.close(conn, "server_close", abort=True)
                    return
        except (ConnectionError, OSError):
            self._accounting.close(conn, "rst", abort=True)

    async def _more(self, conn: Conn) -> None:
        """Wait for the pump to buffer more bytes; the request parser calls it."""
        if conn.closed_by is not None:
            raise Closed
        conn.changed.clear()
        await conn.changed.wait()

    # ----------------------------------------------------------------- responses

    async def _respond(self, conn: Conn, request: HttpRequest) -> bool:
        """Answer one request; returns whether the connection stays open for another."""
        stays_open = keep_alive(request)
        path = request.target.split("?", 1)[0]
        if len(path) > 1:
            path = path.rstrip("/")
        if path.startswith(CONTROL_PREFIX):
            await self._control(conn, request, path)
            return False
        provider = _ROUTES.get(path)
        if provider is None or request.method != "POST":
            provider = provider or guess_provider(path, request.headers)
            status = 404 if path not in _ROUTES else 405
            req = self._accounting.record(
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
            await send_json(
                self._accounting,
                conn,
                req,
                status,
                error_body(provider, status, message),
                stays_open,
            )
            return stays_open
        try:
            payload = json.loads(request.body)
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            req = self._accounting.record(
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
            await send_json(self._accounting, conn, req, 400, body, stays_open)
            return stays_open
        model = payload.get("model") if isinstance(payload.get("model"), str) else None
        stream = payload.get("stream") is True
        refused = problems(provider, payload) if self._validate else ()
        if refused:
            # As the real API: a body it rejects never reaches the model, so the request
            # takes no fault from the script.
            req = self._accounting.record(
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
            await send_json(self._accounting, conn, req, 400, body, stays_open)
            return stays_open
        key, fault = self._take_fault(request.headers.get(KEY_HEADER), model)
        req = self._accounting.record(
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
        recording = fault.recording if isinstance(fault, RECORDING_FAULTS) else DEFAULT_RECORDING
        if recording not in _recordings.available(provider):
            message = (
                f"loopback: no recording {recording!r} for {provider}; "
                f"available: {', '.join(_recordings.available(provider))}"
            )
            await send_json(
                self._accounting, conn, req, 400, error_body(provider, 400, message), stays_open
            )
            return stays_open
        await execute(self._accounting, conn, req, fault, recording, stays_open)
        return stays_open

    # ----------------------------------------------------------------- control endpoints

    async def _control(self, conn: Conn, request: HttpRequest, path: str) -> None:
        self._accounting.set_control(conn)
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
        await send(self._accounting, conn, response_head(status, headers) + body)

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
