"""A loopback LLM provider for testing streaming clients against real faults.

``LoopbackServer`` is a real HTTP/1.1 server on 127.0.0.1 speaking the Anthropic
Messages and OpenAI Chat Completions streaming formats. It replays recorded provider
SSE bodies (``recordings``) and applies one fault script per request: stalls before or
after the headers or after N meaningful events, keep-alive-only streams, mid-body TCP
resets, HTTP errors in the provider's own shape, malformed events. Point the real SDKs
at it::

    with LoopbackServer() as server:
        server.script("k1", [StallAfterEvents(n=1), Healthy()])
        client = anthropic.Anthropic(base_url=server.anthropic_base_url, api_key="test")
        client.messages.create(..., stream=True, extra_headers={"x-loopback-key": "k1"})
"""

from . import _recordings as recordings
from ._accounting import ClosedBy, ConnectionRecord, RequestRecord
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
from ._script import ScriptError, format_fault, format_script, parse_script
from ._server import KEY_HEADER, LoopbackServer
from ._validate import problems, validation_available

__all__ = [
    "KEY_HEADER",
    "ClosedBy",
    "CompressedLine",
    "ConnectionRecord",
    "DropAfterEvents",
    "Healthy",
    "HttpError",
    "LoopbackServer",
    "MalformedEvent",
    "PingsOnly",
    "RawResponse",
    "RequestRecord",
    "ScriptError",
    "ServerFault",
    "StallAfterEvents",
    "StallAfterHeaders",
    "StallBeforeHeaders",
    "TruncateAfterBlocks",
    "error_body",
    "format_fault",
    "format_script",
    "parse_script",
    "problems",
    "recordings",
    "validation_available",
]
