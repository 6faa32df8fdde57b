"""HTTP/1.1 framing for the loopback server, by hand: reading requests, writing heads and chunks.

The faults live *below* HTTP semantics (a stall after the headers, an RST in the middle
of a chunked body), so the server parses and frames HTTP/1.1 itself rather than through
a framework. This module knows bytes and HTTP only: no connections, providers or faults.
``read_request`` reads from a buffer the caller keeps filling (``more`` waits for bytes
to arrive), so the same socket can carry the next keep-alive request.
"""

from __future__ import annotations

import http
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

__all__ = [
    "END_CHUNKS",
    "MAX_BODY",
    "MAX_HEAD",
    "READ_SIZE",
    "BadRequest",
    "HttpRequest",
    "frame",
    "keep_alive",
    "read_request",
    "reason",
    "response_head",
]

READ_SIZE = 64 * 1024
MAX_HEAD = 64 * 1024
MAX_BODY = 32 * 1024 * 1024
END_CHUNKS = b"0\r\n\r\n"


class BadRequest(Exception):
    """The bytes are not a request the server can answer: answer ``status`` and close."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    target: str
    version: str
    headers: dict[str, str]
    body: bytes


def reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Overloaded" if status == 529 else "Error"


def response_head(status: int, headers: Iterable[tuple[str, str]]) -> bytes:
    """A response's status line and headers, up to and including the blank line."""
    lines = [f"HTTP/1.1 {status} {reason(status)}"]
    lines.extend(f"{name}: {value}" for name, value in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def frame(block: bytes) -> bytes:
    """One HTTP/1.1 chunk: each SSE block goes out as exactly one chunk."""
    return b"%x\r\n%s\r\n" % (len(block), block)


def keep_alive(request: HttpRequest) -> bool:
    """Whether the connection stays open after the answer to ``request``."""
    connection = request.headers.get("connection", "").lower()
    return (
        "close" not in connection if request.version != "HTTP/1.0" else "keep-alive" in connection
    )


async def _read_line(buf: bytearray, more: Callable[[], Awaitable[None]], limit: int) -> bytes:
    while (end := buf.find(b"\r\n")) < 0:
        if len(buf) > limit:
            raise BadRequest(400, "line too long")
        await more()
    line = bytes(buf[:end])
    del buf[: end + 2]
    return line


async def _read_exact(buf: bytearray, more: Callable[[], Awaitable[None]], size: int) -> bytes:
    while len(buf) < size:
        await more()
    data = bytes(buf[:size])
    del buf[:size]
    return data


async def read_request(
    buf: bytearray,
    more: Callable[[], Awaitable[None]],
    send: Callable[[bytes], Awaitable[None]],
) -> HttpRequest:
    """Take the next request off the front of ``buf``.

    ``more()`` returns once more bytes have been appended to ``buf`` (or raises when the
    connection is gone); ``send`` writes the ``100 Continue`` an ``Expect`` asks for.
    """
    while True:
        # RFC 9112 asks servers to ignore empty lines before a request line.
        while buf.startswith(b"\r\n"):
            del buf[:2]
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            break
        if len(buf) > MAX_HEAD:
            raise BadRequest(431, "request header too large")
        await more()
    text = bytes(buf[:end]).decode("latin-1")
    del buf[: end + 4]
    request_line, *header_lines = text.split("\r\n")
    parts = request_line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest(400, f"malformed request line: {request_line[:100]!r}")
    method, target, version = parts
    headers: dict[str, str] = {}
    for line in header_lines:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise BadRequest(400, f"malformed header line: {line[:100]!r}")
        name = name.lower()
        value = value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    if headers.get("expect", "").lower() == "100-continue":
        await send(b"HTTP/1.1 100 Continue\r\n\r\n")
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = await _read_chunked(buf, more)
    else:
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            raise BadRequest(400, "invalid content-length") from None
        if length < 0:
            raise BadRequest(400, "invalid content-length")
        if length > MAX_BODY:
            raise BadRequest(413, "request body too large")
        body = await _read_exact(buf, more, length)
    return HttpRequest(method, target, version, headers, body)


async def _read_chunked(buf: bytearray, more: Callable[[], Awaitable[None]]) -> bytes:
    body = bytearray()
    while True:
        size_line = await _read_line(buf, more, 1024)
        try:
            size = int(size_line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise BadRequest(400, "invalid chunk size") from None
        if size == 0:
            while await _read_line(buf, more, MAX_HEAD):  # trailers end at a blank line
                pass
            return bytes(body)
        body += await _read_exact(buf, more, size)
        if await _read_exact(buf, more, 2) != b"\r\n":
            raise BadRequest(400, "chunk not terminated by CRLF")
        if len(body) > MAX_BODY:
            raise BadRequest(413, "request body too large")
