"""The bytes each provider's answers are made of: SSE blocks as chunks, pings, broken events.

What differs by provider on the wire, other than the error bodies (``_error_bodies``):
the keep-alive a ``PingsOnly`` fault repeats, the malformed event a ``MalformedEvent``
inserts, the request-id header, and the recordings turned into HTTP/1.1 chunks or
non-streaming completion bodies. All of it is bytes computed ahead of sending (cached
where a recording is replayed many times); ``_execute`` decides when each goes out.
"""

from __future__ import annotations

import functools
import json
import zlib

from . import _recordings
from ._http import frame
from ._recordings import Provider

__all__ = [
    "MALFORMED",
    "PING",
    "REQUEST_ID_HEADER",
    "completion_body",
    "compressed_line_chunks",
    "framed",
    "truncated_completion_body",
]

PING = {
    "anthropic": b'event: ping\ndata: {"type": "ping"}\n\n',
    "openai": b": keep-alive\n\n",
    "openai_responses": b": keep-alive\n\n",
}
MALFORMED = {
    "anthropic": b"event: content_block_delta\n"
    b'data: {"type": "content_block_delta", "delta": {\n\n',
    "openai": b'data: {"id": "chatcmpl-loopback", "choices": [{"index": 0, "delta": {\n\n',
    "openai_responses": b"event: response.output_text.delta\n"
    b'data: {"type": "response.output_text.delta", "delta": {\n\n',
}
REQUEST_ID_HEADER = {
    "anthropic": "request-id",
    "openai": "x-request-id",
    "openai_responses": "x-request-id",
}


@functools.cache
def framed(provider: Provider, name: str) -> tuple[bytes, ...]:
    """The recording's SSE blocks, one HTTP/1.1 chunk each."""
    return tuple(frame(block.raw) for block in _recordings.load(provider, name).blocks)


@functools.lru_cache(maxsize=4)
def compressed_line_chunks(
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
    return tuple(frame(body[i : i + 16384]) for i in range(0, len(body), 16384))


@functools.cache
def completion_body(provider: Provider, name: str) -> bytes:
    """The non-streaming JSON answer assembled from the recording."""
    return json.dumps(_recordings.load(provider, name).completion()).encode()


def truncated_completion_body(provider: Provider, name: str, blocks: int) -> bytes:
    """The non-streaming answer assembled from the recording's first ``blocks`` blocks."""
    recording = _recordings.load(provider, name)
    return json.dumps(recording.truncated(blocks).completion()).encode()
