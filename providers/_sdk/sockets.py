"""Where the engine finds an attempt's socket inside an SDK client: with ``_decoding``
(a response's decoder), the only modules of this project that read private attributes
of the SDKs or of httpx/httpcore.

Two ways, both needed (why only a shutdown unblocks a reader: ``lifecycle._drivers.connection``):

- with a response: ``response.extensions["network_stream"].get_extra_info("socket")``,
  the public httpx extension, available for anthropic and openai ``Stream`` objects;
- before response headers (a request stuck in ``create()``): only the connection pool
  knows the socket. ``install_connection_tagging`` wraps the pool's network backend so
  that every connection it opens reports its socket to the attempt that writes a
  request on it (``lifecycle``'s ``active_connection``, a context variable set by the
  driver on the run's thread or task). This reaches through
  ``client._client._transport._pool._network_backend``: if an SDK or httpx upgrade
  moves any of these, ``ConnectionTaggingUnavailable`` is raised at client build time
  and ``tests/test_sockets.py`` fails loudly, rather than silently losing the ability to
  abort a request stuck before headers.

Both httpx 0.28 (httpcore 1.x) and httpx2 (httpcore2) have the same shape here.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import selectors
import socket
import ssl
import sys
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any

from lifecycle.adapters import AttemptConnection, Shutdownable, active_connection, count_read

__all__ = [
    "ConnectionTaggingUnavailable",
    "install_connection_tagging",
    "is_tagged",
    "socket_of_response",
]

logger = logging.getLogger("lifecycle.providers")
_now = time.monotonic


class ConnectionTaggingUnavailable(RuntimeError):
    """The SDK's HTTP client no longer has the shape this module knows."""


def socket_of_response(response: Any) -> Shutdownable | None:
    """The socket under an httpx(2) response, or None if the transport hides it."""
    extensions = getattr(response, "extensions", None)
    if not extensions:
        return None
    stream = extensions.get("network_stream")
    if stream is None:
        return None
    sock = stream.get_extra_info("socket")
    return sock if hasattr(sock, "shutdown") else None


def _pools_of(http_client: Any) -> Iterable[Any]:
    transports = [getattr(http_client, "_transport", None)]
    transports.extend((getattr(http_client, "_mounts", None) or {}).values())
    for transport in transports:
        if transport is None:
            continue
        pool = getattr(transport, "_pool", None)
        if pool is None:
            # A transport of the caller's own (a mock, a proxy of theirs): its
            # connections are out of reach before headers.
            if type(transport).__name__ in ("HTTPTransport", "AsyncHTTPTransport"):
                raise ConnectionTaggingUnavailable(
                    f"{type(transport).__module__}.{type(transport).__name__} has no _pool: "
                    "httpx moved its connection pool; update providers/_sdk/sockets.py"
                )
            logger.warning(
                "transport %s is not httpx's own: a request stuck before response "
                "headers can only end by the SDK's read timeout",
                type(transport).__name__,
            )
            continue
        yield pool


def install_connection_tagging(sdk_client: Any) -> None:
    """Let the engine see (and shut down) the sockets this SDK client opens. Idempotent."""
    http_client = getattr(sdk_client, "_client", None)
    if http_client is None or not hasattr(http_client, "_transport"):
        raise ConnectionTaggingUnavailable(
            f"{type(sdk_client).__module__}.{type(sdk_client).__name__} has no httpx client "
            "at ._client: the SDK moved it; update providers/_sdk/sockets.py"
        )
    for pool in _pools_of(http_client):
        backend = getattr(pool, "_network_backend", None)
        if backend is None:
            raise ConnectionTaggingUnavailable(
                f"{type(pool).__module__}.{type(pool).__name__} has no _network_backend: "
                "httpcore moved it; update providers/_sdk/sockets.py"
            )
        if isinstance(backend, _TaggingBackend | _AsyncTaggingBackend):
            continue
        if hasattr(backend, "connect_tcp") and _is_coroutine_method(backend.connect_tcp):
            pool._network_backend = _AsyncTaggingBackend(backend)
        else:
            pool._network_backend = _TaggingBackend(backend)
        _let_go_when_responses_close(pool)


def _let_go_when_responses_close(pool: Any) -> None:
    """A response's close hands its connection back to the pool (keep-alive), where the
    next request of any run may take it: the attempt that owned the socket must let go
    of it first, or its cleanup's abort would shut down the stream of whichever run
    took the connection meanwhile (an HTTP error answer is read whole, and its
    connection back in the pool, before the attempt's cleanup runs)."""
    if hasattr(pool, "handle_async_request"):
        handle_async = _own_method(pool, "handle_async_request")

        async def handle_async_request(request: Any) -> Any:
            response = await handle_async(request)
            network = response.extensions.get("network_stream")
            if isinstance(network, _AsyncTaggedStream):
                response.stream = _AsyncLettingGo(response.stream, network)
            return response

        pool.handle_async_request = handle_async_request
        return
    if getattr(pool, "handle_request", None) is None:
        raise ConnectionTaggingUnavailable(
            f"{type(pool).__module__}.{type(pool).__name__} has no handle_request: "
            "httpcore moved it; update providers/_sdk/sockets.py"
        )
    handle = _own_method(pool, "handle_request")

    def handle_request(request: Any) -> Any:
        response = handle(request)
        network = response.extensions.get("network_stream")
        if isinstance(network, _TaggedStream):
            response.stream = _LettingGo(response.stream, network)
        return response

    pool.handle_request = handle_request


def _own_method(pool: Any, name: str) -> Callable[..., Any]:
    """The pool's ``name`` as it is now, callable without holding the pool: its bound
    method, kept in the wrapper that replaces it on the pool, would tie the pool into a
    reference cycle, so that a dropped client's pool and TLS context (with its CA store)
    were freed only by a later cyclic collection, with the GIL held, on whichever thread
    allocates then (an event loop's, or the client builder's while the loop waits)."""
    method: Callable[..., Any] = getattr(pool, name)
    function = getattr(method, "__func__", None)
    if function is None or getattr(method, "__self__", None) is not pool:
        return method  # not the pool's own bound method: nothing of the pool to hold weakly
    try:
        pool_ref = weakref.ref(pool)
    except TypeError:
        return method  # a pool without weak references: kept as it was

    def call(*args: Any) -> Any:
        # Only the pool itself calls this (it is the pool's attribute): it is alive.
        return function(pool_ref(), *args)

    return call


BODY_END_READS = 4
"""How many reads a closing response may take to reach the end of its body (the openai
SDK closes at ``data: [DONE]``, one 5-byte chunked terminator before the end)."""


class _LettingGo:
    """A response body whose close first releases its socket from the attempt.

    The openai SDK closes a stream's response at ``data: [DONE]``, before reading the
    chunked terminator that follows it; httpcore then cannot know the body ended and
    drops the connection, so every OpenAI stream would open a new one (a TLS handshake
    per run against the real API). A close here first reads on to the body's end, but
    only what has already arrived: the reads do not wait (a body still streaming, or a
    stalled one, is dropped as before), and there are at most ``BODY_END_READS``.
    """

    __slots__ = ("_body", "_inner", "_network")

    def __init__(self, inner: Any, network: _TaggedStream) -> None:
        self._inner = inner
        self._network = network
        self._body: Iterator[bytes] | None = None

    def __iter__(self) -> Iterator[bytes]:
        self._body = iter(self._inner)
        yield from self._body

    def close(self) -> None:
        body = self._body
        if body is not None:
            self._body = None
            self._network.read_to_body_end(body)
        self._network.let_go()
        close = getattr(self._inner, "close", None)
        if close is not None:
            close()


class _AsyncLettingGo:
    """``_LettingGo`` for async bodies."""

    __slots__ = ("_body", "_inner", "_network")

    def __init__(self, inner: Any, network: _AsyncTaggedStream) -> None:
        self._inner = inner
        self._network = network
        self._body: AsyncIterator[bytes] | None = None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        self._body = body = self._inner.__aiter__()
        async for chunk in body:
            yield chunk

    async def aclose(self) -> None:
        body = self._body
        if body is not None:
            self._body = None
            await self._network.read_to_body_end(body)
        self._network.let_go()
        aclose = getattr(self._inner, "aclose", None)
        if aclose is not None:
            await aclose()


def is_tagged(sdk_client: Any) -> bool:
    http_client = getattr(sdk_client, "_client", None)
    transport = getattr(http_client, "_transport", None)
    pool = getattr(transport, "_pool", None)
    return isinstance(
        getattr(pool, "_network_backend", None), _TaggingBackend | _AsyncTaggingBackend
    )


def _is_coroutine_method(method: Any) -> bool:
    import inspect

    return inspect.iscoroutinefunction(method)


def _claim(owner: AttemptConnection | None, stream: Any) -> AttemptConnection | None:
    """Called when a request is written: the writing attempt now owns this connection.
    Once its engine is closing, the socket is shut first, so the write sends nothing."""
    connection = active_connection.get()
    if connection is not None and connection is not owner:
        sock = stream.get_extra_info("socket")
        if hasattr(sock, "shutdown"):
            connection.attach(sock)
    writer = connection if connection is not None else owner
    if writer is not None and writer.closing is not None and writer.closing.is_set():
        sock = stream.get_extra_info("socket")
        writer.refuse_if_closing(sock if hasattr(sock, "shutdown") else None)
    return connection


def _count(owner: AttemptConnection | None, data: bytes) -> None:
    if owner is not None and data:
        count_read(owner, len(data), _now())


class _Owned:
    """A network stream (sync or async) and the attempt that owns its connection now."""

    __slots__ = ("_inner", "_owner", "_socket")

    def __init__(self, inner: Any, owner: AttemptConnection | None = None) -> None:
        self._inner = inner
        self._owner = owner
        self._socket: Any = None
        """The inner stream's socket, once it named one: a stream's socket is the same
        object for its whole life (a TLS upgrade makes a new stream, wrapped anew), and
        asking anyio's stream for it builds every one of its extra attributes (~20
        calls), three times per request (the write, the response, the close)."""

    def let_go(self) -> None:
        """The response on this connection is closing: the connection is the pool's again,
        no longer the attempt's (the next request written on it claims it anew)."""
        owner = self._owner
        if owner is not None:
            self._owner = None
            sock = self.get_extra_info("socket")
            if sock is not None:
                owner.detach(sock)

    def get_extra_info(self, info: str) -> Any:
        if info != "socket":
            return self._inner.get_extra_info(info)
        sock = self._socket
        if sock is None:
            sock = self._socket = self._inner.get_extra_info("socket")
        return sock


class _TaggedStream(_Owned):
    """A sync network stream that reports its socket to the attempt writing on it."""

    __slots__ = ("_no_wait",)

    def __init__(self, inner: Any, owner: AttemptConnection | None = None) -> None:
        super().__init__(inner, owner)
        self._no_wait = False

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        # A zero timeout makes the socket non-blocking for this read: what has not
        # arrived yet raises (httpcore's ReadError) instead of being waited for.
        data: bytes = self._inner.read(max_bytes, 0.0 if self._no_wait else timeout)
        _count(self._owner, data)
        return data

    def read_to_body_end(self, body: Iterator[bytes]) -> None:
        """Take what is left of a closing response's body, without waiting for any of it:
        a body that reaches its end leaves its connection reusable. Anything else (data
        not there yet, too much of it, a shut socket) leaves the close to drop it."""
        self._no_wait = True
        try:
            for _ in range(BODY_END_READS):
                next(body)
        except StopIteration:
            pass
        except Exception:
            pass  # httpcore has closed the connection, as the plain close would
        finally:
            self._no_wait = False

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._owner = _claim(self._owner, self)
        self._inner.write(buffer, timeout)

    def close(self) -> None:
        self.let_go()
        self._inner.close()

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> _TaggedStream:
        owner = self._owner
        if owner is not None and isinstance(ssl_context, ssl.SSLContext):
            # The handshake runs on a new socket object (the plain one gives up its file
            # descriptor to it): the attempt must hold that one while it handshakes.
            ssl_context = _AttachingContext(ssl_context, owner)
        return _TaggedStream(self._inner.start_tls(ssl_context, server_hostname, timeout), owner)


class _AttachingContext:
    """An ``ssl.SSLContext`` whose ``wrap_socket`` attaches the TLS socket to the attempt
    before the handshake, which it then runs (everything else goes to the context)."""

    def __init__(self, context: ssl.SSLContext, owner: AttemptConnection) -> None:
        self._context = context
        self._owner = owner

    def wrap_socket(self, sock: socket.socket, **kwargs: Any) -> ssl.SSLSocket:
        handshake = kwargs.pop("do_handshake_on_connect", True)
        tls = self._context.wrap_socket(sock, do_handshake_on_connect=False, **kwargs)
        self._owner.attach(tls)
        try:
            if self._owner.aborted:
                raise ConnectionAbortedError("the attempt was aborted before its TLS handshake")
            if handshake:
                tls.do_handshake()
        except BaseException:
            self._owner.detach(tls)
            tls.close()
            raise
        return tls

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


class _TaggingBackend:
    """Wraps httpcore's sync backend: its own TCP connect, so that the socket is known
    to the attempt from the connect's start (a thread blocked in ``connect()`` or in the
    TLS handshake is woken only by a shutdown of that very socket)."""

    __slots__ = ("_connect_error", "_connect_timeout", "_inner", "_stream_class")

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._stream_class, self._connect_error, self._connect_timeout = _sync_parts_of(inner)

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> _TaggedStream:
        connection = active_connection.get()
        if connection is None or self._stream_class is None:
            return _TaggedStream(
                self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
            )
        try:
            sock = _connect_abortably(connection, host, port, timeout, local_address)
        except TimeoutError as exc:
            raise self._connect_timeout(exc) from exc
        except OSError as exc:
            raise self._connect_error(exc) from exc
        try:
            for option in socket_options or ():
                sock.setsockopt(*option)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:
            connection.detach(sock)
            sock.close()
            raise self._connect_error(exc) from exc
        return _TaggedStream(self._stream_class(sock), connection)

    def connect_unix_socket(self, *args: Any, **kwargs: Any) -> _TaggedStream:
        return _TaggedStream(self._inner.connect_unix_socket(*args, **kwargs))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def _sync_parts_of(backend: Any) -> tuple[Any, Any, Any]:
    """httpcore's (or httpcore2's) stream class and connect errors, for a backend of its
    own; ``(None, ...)`` for a backend of the caller's, which connects its own way."""
    if type(backend).__name__ != "SyncBackend":
        return None, None, None
    # The names its own connect_tcp uses (httpcore re-labels its classes' __module__).
    names = getattr(type(backend).connect_tcp, "__globals__", {})
    parts = (names.get("SyncStream"), names.get("ConnectError"), names.get("ConnectTimeout"))
    if None in parts:
        raise ConnectionTaggingUnavailable(
            f"{type(backend).__module__}.SyncBackend.connect_tcp no longer uses SyncStream, "
            "ConnectError and ConnectTimeout: httpcore moved them; update providers/_sdk/sockets.py"
        )
    return parts


def _connect_abortably(
    connection: AttemptConnection,
    host: str,
    port: int,
    timeout: float | None,
    local_address: str | None,
) -> socket.socket:
    """``socket.create_connection``, with each socket attached to the attempt before its
    connect starts. The connect is non-blocking: once it is under way (SYN_SENT), an
    abort's shutdown resets it and wakes the wait below; an abort before that is seen by
    the check that follows the start."""
    deadline = None if timeout is None else time.monotonic() + timeout
    last_error: OSError | None = None
    for family, kind, proto, _, address in socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM):
        sock = socket.socket(family, kind, proto)
        connection.attach(sock)
        try:
            if local_address is not None:
                sock.bind((local_address, 0))
            sock.setblocking(False)
            code = sock.connect_ex(address)
            if code in (errno.EINPROGRESS, errno.EAGAIN):
                _wait_writable(connection, sock, deadline)
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if connection.aborted:
                raise ConnectionAbortedError(
                    f"the attempt was aborted while connecting ({connection.abort_reason})"
                )
            if code:
                raise OSError(code, os.strerror(code))
            sock.settimeout(timeout)  # as create_connection leaves it
            return sock
        except BaseException as exc:
            connection.detach(sock)
            sock.close()
            if isinstance(exc, TimeoutError | ConnectionAbortedError) or not isinstance(
                exc, OSError
            ):
                raise
            last_error = exc
    raise last_error or OSError(f"getaddrinfo returned no address for {host}:{port}")


def _wait_writable(
    connection: AttemptConnection, sock: socket.socket, deadline: float | None
) -> None:
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_WRITE)
        while not connection.aborted:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError("timed out")
            if selector.select(remaining):
                return


ASYNC_NO_WAIT = 0.001
"""The async ``read_to_body_end``'s read timeout: anyio's ``fail_after(0)`` cancels at
the read's first checkpoint, before even data already buffered is returned."""


class _AsyncTaggedStream(_Owned):
    __slots__ = ("_no_wait",)

    def __init__(self, inner: Any, owner: AttemptConnection | None = None) -> None:
        super().__init__(inner, owner)
        self._no_wait = False

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        data: bytes = await self._inner.read(max_bytes, ASYNC_NO_WAIT if self._no_wait else timeout)
        _count(self._owner, data)
        return data

    async def read_to_body_end(self, body: AsyncIterator[bytes]) -> None:
        """``_TaggedStream.read_to_body_end``, each read waiting at most ``ASYNC_NO_WAIT``.
        A cancellation of the caller's is not swallowed (only errors are)."""
        self._no_wait = True
        try:
            for _ in range(BODY_END_READS):
                await body.__anext__()
        except StopAsyncIteration:
            pass
        except Exception:
            pass  # httpcore has closed the connection, as the plain close would
        finally:
            self._no_wait = False

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._owner = _claim(self._owner, self)
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        self.let_go()
        await self._inner.aclose()

    async def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> _AsyncTaggedStream:
        inner = await self._inner.start_tls(ssl_context, server_hostname, timeout)
        return _AsyncTaggedStream(inner, self._owner)


class _AsyncTaggingBackend:
    """Wraps httpcore's async backend: the connect runs as a task of its own, which an
    abort cancels (asyncio makes the socket inside ``create_connection``, out of
    reach); the socket is attached as soon as the connect returns, so a TLS handshake
    that hangs is shut down like any read."""

    __slots__ = ("_connect_error", "_inner")

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        package = sys.modules[type(inner).__module__.partition(".")[0]]
        self._connect_error: Any = getattr(package, "ConnectError", None)

    async def connect_tcp(self, *args: Any, **kwargs: Any) -> _AsyncTaggedStream:
        connection = active_connection.get()
        if connection is None or self._connect_error is None:
            return _AsyncTaggedStream(await self._inner.connect_tcp(*args, **kwargs))
        loop = asyncio.get_running_loop()
        connect = loop.create_task(self._inner.connect_tcp(*args, **kwargs))
        pending = _PendingConnect(loop, connect)
        connection.attach(pending)
        try:
            try:
                await asyncio.wait((connect,))
            except asyncio.CancelledError:
                connect.cancel()  # the caller's own cancellation: the connect goes with it
                raise
        finally:
            connection.detach(pending)
        if connect.cancelled() or connection.aborted:
            if not connect.cancelled() and connect.exception() is None:
                await connect.result().aclose()
            raise self._connect_error(
                f"the attempt was aborted while connecting ({connection.abort_reason})"
            )
        stream = _AsyncTaggedStream(connect.result(), connection)
        sock = stream.get_extra_info("socket")
        if hasattr(sock, "shutdown"):
            connection.attach(sock)
        return stream

    async def connect_unix_socket(self, *args: Any, **kwargs: Any) -> _AsyncTaggedStream:
        return _AsyncTaggedStream(await self._inner.connect_unix_socket(*args, **kwargs))

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _PendingConnect:
    """What an attempt holds while asyncio connects: its "shutdown" cancels the connect's
    task, from any thread (an abort may come from the watchdog or a caller's thread)."""

    __slots__ = ("_loop", "_task")

    def __init__(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any]) -> None:
        self._loop = loop
        self._task = task

    def shutdown(self, how: int, /) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing is pending
            self._loop.call_soon_threadsafe(self._task.cancel)
