"""Compressed response bodies, inflated in bounded pieces that count against the budget.

``max_event_bytes`` is enforced on wire bytes by ``_sockets`` (where the network stream
is read). A server may compress its stream whatever the request's ``Accept-Encoding``
said, and 64 KiB of gzip inflate to a 64 MiB line: the wire count never sees it, httpx
0.28 inflates each network chunk whole in one call (httpx2 in pieces, but uncounted),
and the SDK's SSE decoder then buffers the line to its end, past ``first_token``, since
no clock can wake a thread busy in a decoder.

So the engine decodes gzip and deflate bodies itself: ``limit_decoded_size`` swaps the
response's raw byte stream for one that inflates each chunk a piece at a time (at most
``PIECE`` bytes per call into zlib) and counts each piece with
``lifecycle._drivers.connection.count_decoded`` before the SDK sees it, and tells the response that
what it reads is already decoded. A line longer than the budget is refused by
``OversizedEvent`` (the same fault as a long line on the wire) once the budget's worth
of it is in the SDK's buffer, never the whole line. The SDK reads the stream lazily, so
the meaningful events of a healthy stream move the budget's start between pieces.

Like ``_sockets``, this reaches into httpx(2) internals (``Response._decoder``, the
package's ``IdentityDecoder``; both stacks have the same shape); an encoding it does not
handle (``br``, ``zstd``) is left to the HTTP stack.
"""

from __future__ import annotations

import functools
import importlib
import logging
import zlib
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

from lifecycle.adapters import AttemptConnection, active_connection, count_decoded

__all__ = ["PIECE", "limit_decoded_size"]

logger = logging.getLogger("lifecycle.providers")

PIECE = 64 * 1024
"""The most one call into zlib may inflate (a quarter of a smaller budget): a bomb is
refused within a budget plus one piece, and a healthy stream's events are seen (and
count as progress) between pieces, so an event of up to 3/4 of the budget passes."""
_SMALLEST_PIECE = 256

_WBITS = {"gzip": zlib.MAX_WBITS | 16, "x-gzip": zlib.MAX_WBITS | 16, "deflate": zlib.MAX_WBITS}


def limit_decoded_size(response: Any) -> None:
    """Make a compressed ``response`` (an httpx(2) streaming response whose body is not
    read yet) inflate in counted pieces, for the attempt that is opening it."""
    connection = active_connection.get()
    if connection is None:
        return
    encodings = [
        value.strip().lower()
        for value in response.headers.get("content-encoding", "").split(",")
        if value.strip().lower() not in ("", "identity")
    ]
    if not encodings or any(encoding not in _WBITS for encoding in encodings):
        return
    if hasattr(response, "_decoder") or getattr(response, "is_stream_consumed", True):
        return  # the SDK started reading the body: too late to take the decoding over
    parts = _parts_of(type(response).__module__.partition(".")[0])
    if parts is None:
        return
    sync_base, async_base, identity, decoding_error = parts
    # Content-Encoding lists codings in the order applied: the last applied comes off first.
    budget = connection.byte_budget
    piece = PIECE if budget >= 4 * PIECE else max(_SMALLEST_PIECE, int(budget) // 4)
    decoder = _Decoder(
        [_Inflater(encoding, decoding_error, piece) for encoding in reversed(encodings)],
        connection,
    )
    stream = response.stream
    if isinstance(stream, async_base):
        response.stream = _async_stream_class(async_base)(stream, decoder)
    elif isinstance(stream, sync_base):
        response.stream = _sync_stream_class(sync_base)(stream, decoder)
    else:
        return
    response._decoder = identity()


@functools.cache
def _parts_of(package_name: str) -> tuple[type, type, type, type] | None:
    """The byte stream bases, identity decoder and decoding error of httpx or httpx2."""
    try:
        package = importlib.import_module(package_name)
        decoders = importlib.import_module(f"{package_name}._decoders")
        return (
            package.SyncByteStream,
            package.AsyncByteStream,
            decoders.IdentityDecoder,
            package.DecodingError,
        )
    except (ImportError, AttributeError):
        logger.warning(
            "%s has no SyncByteStream, AsyncByteStream, DecodingError or "
            "_decoders.IdentityDecoder: compressed bodies are not counted against "
            "max_event_bytes; update providers/_sdk/decoding.py",
            package_name,
        )
        return None


class _Inflater:
    """One content coding, undone in pieces of at most ``piece`` bytes."""

    __slots__ = ("_decoding_error", "_first", "_piece", "_raw_fallback", "_zlib")

    def __init__(self, encoding: str, decoding_error: type, piece: int) -> None:
        self._piece = piece
        self._zlib = zlib.decompressobj(_WBITS[encoding])
        # "deflate" is zlib-wrapped by the RFC, raw by some servers: httpx accepts both.
        self._raw_fallback = encoding == "deflate"
        self._first = True
        self._decoding_error = decoding_error

    def pipe(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            yield from self._inflate(chunk)

    def _inflate(self, data: bytes) -> Iterator[bytes]:
        try:
            piece = self._zlib.decompress(data, self._piece)
        except zlib.error as exc:
            if not (self._first and self._raw_fallback):
                raise self._decoding_error(str(exc)) from exc
            self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)
            self._first = False
            yield from self._inflate(data)
            return
        self._first = False
        while piece:
            yield piece
            try:
                piece = self._zlib.decompress(self._zlib.unconsumed_tail, self._piece)
            except zlib.error as exc:
                raise self._decoding_error(str(exc)) from exc

    def flush(self) -> Iterator[bytes]:
        try:
            rest = self._zlib.flush()
        except zlib.error as exc:
            raise self._decoding_error(str(exc)) from exc
        if rest:
            yield rest


class _Decoder:
    """The codings of one body, and the attempt whose budget its pieces count against."""

    __slots__ = ("_connection", "_inflaters")

    def __init__(self, inflaters: list[_Inflater], connection: AttemptConnection) -> None:
        self._inflaters = inflaters
        self._connection = connection

    def decode(self, raw: bytes) -> Iterator[bytes]:
        pieces: Iterable[bytes] = (raw,)
        for inflater in self._inflaters:
            pieces = inflater.pipe(pieces)
        return self._counted(pieces)

    def flush(self) -> Iterator[bytes]:
        pieces: Iterable[bytes] = ()
        for inflater in self._inflaters:
            pieces = _chain(inflater.pipe(pieces), inflater.flush())
        return self._counted(pieces)

    def _counted(self, pieces: Iterable[bytes]) -> Iterator[bytes]:
        connection = self._connection
        for piece in pieces:
            if connection.aborted:
                # One raw chunk may inflate to many pieces: no more of them once a clock
                # or an interrupt has ended the attempt.
                raise ConnectionAbortedError(
                    f"the attempt was aborted while its body was decoded "
                    f"({connection.abort_reason})"
                )
            count_decoded(connection, len(piece))
            yield piece


def _chain(first: Iterable[bytes], second: Iterable[bytes]) -> Iterator[bytes]:
    yield from first
    yield from second


class _DecodedSyncStream:
    def __init__(self, inner: Any, decoder: _Decoder) -> None:
        self._inner = inner
        self._decoder = decoder

    def __iter__(self) -> Iterator[bytes]:
        chunks = iter(self._inner)
        try:
            for raw in chunks:
                yield from self._decoder.decode(raw)
            yield from self._decoder.flush()
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()

    def close(self) -> None:
        self._inner.close()

    def __getattr__(self, name: str) -> Any:
        # What the response asks of its stream besides reading it (httpx2: ``elapsed``).
        return getattr(self._inner, name)


class _DecodedAsyncStream:
    def __init__(self, inner: Any, decoder: _Decoder) -> None:
        self._inner = inner
        self._decoder = decoder

    async def __aiter__(self) -> AsyncIterator[bytes]:
        chunks = self._inner.__aiter__()
        try:
            async for raw in chunks:
                for piece in self._decoder.decode(raw):
                    yield piece
            for piece in self._decoder.flush():
                yield piece
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()

    async def aclose(self) -> None:
        await self._inner.aclose()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@functools.cache
def _sync_stream_class(base: type) -> type:
    # The response checks its stream against the package's own base class.
    return type("DecodedSyncStream", (_DecodedSyncStream, base), {})


@functools.cache
def _async_stream_class(base: type) -> type:
    return type("DecodedAsyncStream", (_DecodedAsyncStream, base), {})
