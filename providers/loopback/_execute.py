"""Carrying out each scripted fault on a connection: what is written, when, and how it ends.

A fault becomes a sequence of writes, pauses and endings on one connection: the status
line and headers, SSE chunks all at once or dripped, a stall until the client leaves, a
reset mid-body. The bytes come from ``_wire`` and ``_error_bodies``; the status sent
and every close are accounted in ``_accounting`` as they happen. A connection that goes
away while a fault is being carried out raises ``Closed``, which unwinds the handler.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from . import _recordings
from ._accounting import Accounting, Closed, Conn, Req
from ._error_bodies import error_body
from ._faults import (
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
from ._http import END_CHUNKS, frame, response_head
from ._wire import (
    MALFORMED,
    PING,
    REQUEST_ID_HEADER,
    completion_body,
    compressed_line_chunks,
    framed,
    truncated_completion_body,
)

__all__ = ["common_headers", "drop", "execute", "pause", "send", "send_json", "stall"]


# ----------------------------------------------------------------- connection primitives


async def send(accounting: Accounting, conn: Conn, data: bytes) -> None:
    """Write ``data`` and wait until it is flushed; a client reset closes the connection."""
    if conn.closed_by is not None:
        raise Closed
    conn.writer.write(data)
    try:
        await conn.writer.drain()
    except (ConnectionError, OSError):
        accounting.close(conn, "rst", abort=True)
        raise Closed from None
    if conn.closed_by is not None:
        raise Closed


async def pause(conn: Conn, seconds: float) -> None:
    """Sleep, unless the client leaves first."""
    if conn.closed_by is not None:
        raise Closed
    try:
        async with asyncio.timeout(seconds):
            await conn.gone.wait()
    except TimeoutError:
        return
    raise Closed


async def stall(conn: Conn) -> None:
    await conn.gone.wait()
    raise Closed


async def drop(accounting: Accounting, conn: Conn) -> None:
    """Flush what was written to the kernel, then reset the connection."""
    # With a zero high-water mark drain() returns only once the buffer is empty;
    # abort() would otherwise discard bytes the fault promised to deliver.
    conn.writer.transport.set_write_buffer_limits(high=0)
    await send(accounting, conn, b"")
    accounting.close(conn, "server_close", abort=True, reset=True)
    raise Closed


# ----------------------------------------------------------------- answers


async def execute(
    accounting: Accounting,
    conn: Conn,
    req: Req,
    fault: ServerFault,
    recording: str,
    keep_alive: bool,
) -> None:
    """Answer ``req`` as ``fault`` says, with ``recording`` for the faults that replay one."""
    if isinstance(fault, HttpError):
        await _send_http_error(accounting, conn, req, fault, keep_alive)
    elif isinstance(fault, RawResponse):
        await _send_raw(accounting, conn, req, fault, keep_alive)
    elif isinstance(fault, CompressedLine):
        await _send_compressed_line(accounting, conn, req, fault, keep_alive)
    elif req.stream:
        await _stream(accounting, conn, req, fault, recording, keep_alive)
    else:
        await _complete(accounting, conn, req, fault, recording, keep_alive)


def common_headers(req: Req, keep_alive: bool) -> list[tuple[str, str]]:
    return [
        (REQUEST_ID_HEADER[req.provider], f"req_loopback_{req.index}"),
        ("connection", "keep-alive" if keep_alive else "close"),
    ]


async def send_json(
    accounting: Accounting,
    conn: Conn,
    req: Req,
    status: int,
    payload: dict[str, Any],
    keep_alive: bool,
) -> None:
    body = json.dumps(payload).encode()
    headers = [("content-type", "application/json"), ("content-length", str(len(body)))]
    accounting.set_status(req, status)
    await send(
        accounting, conn, response_head(status, headers + common_headers(req, keep_alive)) + body
    )


async def _send_http_error(
    accounting: Accounting, conn: Conn, req: Req, fault: HttpError, keep_alive: bool
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
    headers += common_headers(req, keep_alive)
    headers += fault.headers
    accounting.set_status(req, fault.status)
    await send(accounting, conn, response_head(fault.status, headers) + body)


async def _send_raw(
    accounting: Accounting, conn: Conn, req: Req, fault: RawResponse, keep_alive: bool
) -> None:
    headers = list(fault.headers)
    if fault.chunked:
        headers.append(("transfer-encoding", "chunked"))
        payload = frame(fault.body) if fault.body else b""
        ending = END_CHUNKS
    else:
        headers.append(("content-length", str(len(fault.body))))
        payload, ending = fault.body, b""
    headers += common_headers(req, keep_alive)
    accounting.set_status(req, fault.status)
    await send(accounting, conn, response_head(fault.status, headers) + payload)
    if fault.end == "complete":
        if ending:
            await send(accounting, conn, ending)
    elif fault.end == "cut":
        await drop(accounting, conn)
    else:
        await stall(conn)


async def _send_compressed_line(
    accounting: Accounting, conn: Conn, req: Req, fault: CompressedLine, keep_alive: bool
) -> None:
    chunks = compressed_line_chunks(
        req.provider, fault.recording, fault.after_events, fault.size, fault.encoding
    )
    head = response_head(
        200,
        [
            ("content-type", "text/event-stream; charset=utf-8"),
            ("content-encoding", fault.encoding),
            ("transfer-encoding", "chunked"),
            *common_headers(req, keep_alive),
        ],
    )
    accounting.set_status(req, 200)
    await send(accounting, conn, head)
    for chunk in chunks:
        await send(accounting, conn, chunk)
    await send(accounting, conn, END_CHUNKS)


async def _stream(
    accounting: Accounting,
    conn: Conn,
    req: Req,
    fault: ServerFault,
    recording: str,
    keep_alive: bool,
) -> None:
    """Answer a ``stream: true`` request: chunked SSE, one block per chunk."""
    if isinstance(fault, StallBeforeHeaders):
        await stall(conn)
    provider = req.provider
    chunks = framed(provider, recording)
    head = response_head(
        200,
        [
            ("content-type", "text/event-stream; charset=utf-8"),
            ("cache-control", "no-cache"),
            ("transfer-encoding", "chunked"),
            *common_headers(req, keep_alive),
        ],
    )
    accounting.set_status(req, 200)

    def prefix(n: int) -> bytes:
        return b"".join(chunks[: len(_recordings.load(provider, recording).prefix(n))])

    if isinstance(fault, StallAfterHeaders):
        await send(accounting, conn, head)
        await stall(conn)
    elif isinstance(fault, StallAfterEvents):
        await send(accounting, conn, head + prefix(fault.n))
        await stall(conn)
    elif isinstance(fault, DropAfterEvents):
        await send(accounting, conn, head + prefix(fault.n))
        await drop(accounting, conn)
    elif isinstance(fault, TruncateAfterBlocks):
        await send(accounting, conn, head + b"".join(chunks[: fault.n]))
        if fault.end == "cut":
            await drop(accounting, conn)
        await send(accounting, conn, END_CHUNKS)
    elif isinstance(fault, PingsOnly):
        await send(accounting, conn, head + prefix(fault.after_events))
        ping = frame(PING[provider])
        while True:
            await pause(conn, fault.interval)
            await send(accounting, conn, ping)
    elif isinstance(fault, MalformedEvent):
        sent = len(_recordings.load(provider, recording).prefix(fault.after_events))
        await send(
            accounting,
            conn,
            head
            + b"".join(chunks[:sent])
            + frame(MALFORMED[provider])
            + b"".join(chunks[sent:])
            + END_CHUNKS,
        )
    elif isinstance(fault, Healthy):
        if fault.head_delay > 0.0:
            await pause(conn, fault.head_delay)
        if fault.drip <= 0.0:
            await send(accounting, conn, head + b"".join(chunks) + END_CHUNKS)
            return
        await send(accounting, conn, head)
        for i, chunk in enumerate(chunks):
            if i:
                await pause(conn, fault.drip)
            await send(accounting, conn, chunk)
        await send(accounting, conn, END_CHUNKS)


async def _complete(
    accounting: Accounting,
    conn: Conn,
    req: Req,
    fault: ServerFault,
    recording: str,
    keep_alive: bool,
) -> None:
    """Answer a non-streaming request with the completion assembled from the recording.

    Faults keep their meaning where a plain body allows: stalls hold the body back,
    a drop resets the connection halfway through it, a malformed event truncates it.
    """
    if isinstance(fault, StallBeforeHeaders):
        await stall(conn)
    body = completion_body(req.provider, recording)
    if isinstance(fault, TruncateAfterBlocks):
        body = truncated_completion_body(req.provider, recording, fault.n)
    if isinstance(fault, MalformedEvent):
        body = body[: len(body) // 2]
    head = response_head(
        200,
        [
            ("content-type", "application/json"),
            ("content-length", str(len(body))),
            *common_headers(req, keep_alive),
        ],
    )
    if isinstance(fault, Healthy) and fault.drip + fault.head_delay > 0.0:
        blocks = len(_recordings.load(req.provider, recording).blocks)
        await pause(conn, fault.head_delay + fault.drip * blocks)
    accounting.set_status(req, 200)
    if isinstance(fault, StallAfterHeaders | StallAfterEvents | PingsOnly):
        await send(accounting, conn, head)
        await stall(conn)
    elif isinstance(fault, DropAfterEvents) or (
        isinstance(fault, TruncateAfterBlocks) and fault.end == "cut"
    ):
        await send(accounting, conn, head + body[: len(body) // 2])
        await drop(accounting, conn)
    else:
        await send(accounting, conn, head + body)
