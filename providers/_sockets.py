"""Where the engine finds an attempt's socket inside an SDK client: the only module of
this project that reads private attributes of the SDKs or of httpx/httpcore.

Two ways, both needed (why only a shutdown unblocks a reader: ``lifecycle._abort``):

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

import logging
import time
from collections.abc import Iterable
from typing import Any

from lifecycle import AttemptConnection, Shutdownable, active_connection, count_read

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
                    "httpx moved its connection pool; update providers/_sockets.py"
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
            "at ._client: the SDK moved it; update providers/_sockets.py"
        )
    for pool in _pools_of(http_client):
        backend = getattr(pool, "_network_backend", None)
        if backend is None:
            raise ConnectionTaggingUnavailable(
                f"{type(pool).__module__}.{type(pool).__name__} has no _network_backend: "
                "httpcore moved it; update providers/_sockets.py"
            )
        if isinstance(backend, _TaggingBackend | _AsyncTaggingBackend):
            continue
        if hasattr(backend, "connect_tcp") and _is_coroutine_method(backend.connect_tcp):
            pool._network_backend = _AsyncTaggingBackend(backend)
        else:
            pool._network_backend = _TaggingBackend(backend)


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
    """Called when a request is written: the writing attempt now owns this connection."""
    connection = active_connection.get()
    if connection is not None and connection is not owner:
        sock = stream.get_extra_info("socket")
        if hasattr(sock, "shutdown"):
            connection.attach(sock)
    return connection


def _count(owner: AttemptConnection | None, data: bytes) -> None:
    if owner is not None and data:
        count_read(owner, len(data), _now())


class _TaggedStream:
    """A sync network stream that reports its socket to the attempt writing on it."""

    __slots__ = ("_inner", "_owner")

    def __init__(self, inner: Any, owner: AttemptConnection | None = None) -> None:
        self._inner = inner
        self._owner = owner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        data: bytes = self._inner.read(max_bytes, timeout)
        _count(self._owner, data)
        return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._owner = _claim(self._owner, self._inner)
        self._inner.write(buffer, timeout)

    def close(self) -> None:
        owner = self._owner
        if owner is not None:
            sock = self._inner.get_extra_info("socket")
            if sock is not None:
                owner.detach(sock)
        self._inner.close()

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> _TaggedStream:
        return _TaggedStream(
            self._inner.start_tls(ssl_context, server_hostname, timeout), self._owner
        )

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _TaggingBackend:
    __slots__ = ("_inner",)

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def connect_tcp(self, *args: Any, **kwargs: Any) -> _TaggedStream:
        return _TaggedStream(self._inner.connect_tcp(*args, **kwargs))

    def connect_unix_socket(self, *args: Any, **kwargs: Any) -> _TaggedStream:
        return _TaggedStream(self._inner.connect_unix_socket(*args, **kwargs))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _AsyncTaggedStream:
    __slots__ = ("_inner", "_owner")

    def __init__(self, inner: Any, owner: AttemptConnection | None = None) -> None:
        self._inner = inner
        self._owner = owner

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        data: bytes = await self._inner.read(max_bytes, timeout)
        _count(self._owner, data)
        return data

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._owner = _claim(self._owner, self._inner)
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        owner = self._owner
        if owner is not None:
            sock = self._inner.get_extra_info("socket")
            if sock is not None:
                owner.detach(sock)
        await self._inner.aclose()

    async def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> _AsyncTaggedStream:
        inner = await self._inner.start_tls(ssl_context, server_hostname, timeout)
        return _AsyncTaggedStream(inner, self._owner)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _AsyncTaggingBackend:
    __slots__ = ("_inner",)

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    async def connect_tcp(self, *args: Any, **kwargs: Any) -> _AsyncTaggedStream:
        return _AsyncTaggedStream(await self._inner.connect_tcp(*args, **kwargs))

    async def connect_unix_socket(self, *args: Any, **kwargs: Any) -> _AsyncTaggedStream:
        return _AsyncTaggedStream(await self._inner.connect_unix_socket(*args, **kwargs))

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)
