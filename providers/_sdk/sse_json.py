"""An SDK stream's events as the JSON the server sent, without the SDK's models of them.

Iterating an SDK stream builds a pydantic model of every event (the SDK's
``construct_type``); the engine's translator then reads a handful of its fields and
drops it. That construction is most of what iterating the bare SDK costs: on the long
recorded Chat Completions stream (178 chunks, loopback), 20.3 ms per stream through the
SDK against 5.1 ms for the same events' JSON alone. The Anthropic and Chat Completions
adapters' translators read the JSON (``tests/benchmarks/bench_lifecycle.py``: the
engine now streams in about a third of the bare SDK's time on the long stream, and
about the bare SDK's on the 9-event tool-use stream).

The SDK still does everything up to the body: the request, its status (an error
status raises the SDK's own exception before any event), the response, and the
server-sent-event framing (its own decoder, ``Stream._iter_events``, present in every
release this project allows: anthropic 0.40 to 2.x, openai 1.78 to 3.x). What its
iteration does with each event besides building a model is done here the same way, so
the engine classifies every fault as before; each reader says what that is. Data that
is not JSON raises the same ``json.JSONDecodeError`` as the SDK's ``sse.json()``.

One thing of the SDK's is not done: anthropic 2.x reports each parsed item to the
response's stream observer (its tracing); the observer still learns how the body ended
(read or closed), from the body itself.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import openai

__all__ = ["anthropic_events", "anthropic_events_async", "openai_chunks", "openai_chunks_async"]


# -- openai -----------------------------------------------------------------------------
# What ``openai.Stream``'s iteration does with a Chat Completions event: ``data: [DONE]``
# ends the stream and closes its response there, as the SDK's own iteration does
# (the close reads the chunked terminator that follows ``[DONE]``, ``sockets._LettingGo``,
# so the connection goes back to the pool; left to the engine's close of the stream, the
# sync connection was dropped instead: ``tests/test_connection_reuse.py`` failed so); a
# JSON object with a truthy ``error`` raises ``openai.APIError`` with the SDK's message
# and body.


def openai_chunks(stream: Any) -> Iterator[Any]:
    """The JSON of each event of an ``openai.Stream``, in order."""
    loads = json.loads
    for sse in stream._iter_events():
        data = sse.data
        if data.startswith("[DONE]"):
            stream.response.close()
            return
        chunk = loads(data)
        if type(chunk) is dict and chunk.get("error"):
            raise _stream_error(chunk, stream)
        yield chunk


async def openai_chunks_async(stream: Any) -> AsyncIterator[Any]:
    """As ``openai_chunks``, for an ``openai.AsyncStream``."""
    loads = json.loads
    async for sse in stream._iter_events():
        data = sse.data
        if data.startswith("[DONE]"):
            await stream.response.aclose()
            return
        chunk = loads(data)
        if type(chunk) is dict and chunk.get("error"):
            raise _stream_error(chunk, stream)
        yield chunk


def _stream_error(chunk: dict[str, Any], stream: Any) -> openai.APIError:
    """What the openai SDK raises for an error object inside a 200 stream."""
    error = chunk["error"]
    message = error.get("message") if isinstance(error, dict) else None
    if not message or not isinstance(message, str):
        message = "An error occurred during streaming"
    return openai.APIError(message=message, request=stream.response.request, body=error)


# -- anthropic --------------------------------------------------------------------------
# What ``anthropic.Stream``'s iteration does with each server-sent event: ``ping`` and an
# unnamed event are skipped; ``event: error`` raises the client's own status error for
# its body (``_make_status_error``, as the SDK does, so the fault is classified as
# before); an event without data is skipped; the rest is the event's JSON, its ``type``
# taken from the event's name where the JSON lacks one (anthropic 0.40 did so). Unlike
# 0.40, whose iteration dropped event names it did not know, an unknown event reaches the
# translator (counted in ``unknown_events``), as on the current SDKs. The response is
# closed when the body ends, as the SDK's iteration closes it.


def anthropic_events(stream: Any) -> Iterator[Any]:
    """The JSON of each event of an ``anthropic.Stream``, in order."""
    loads = json.loads
    for sse in stream._iter_events():
        name = sse.event
        if name == "ping" or name is None:
            continue
        if name == "error":
            raise _anthropic_error(sse, stream)
        data = sse.data
        if not data:
            continue
        event = loads(data)
        if type(event) is dict and "type" not in event:
            event["type"] = name
        yield event
    stream.response.close()


async def anthropic_events_async(stream: Any) -> AsyncIterator[Any]:
    """As ``anthropic_events``, for an ``anthropic.AsyncStream``."""
    loads = json.loads
    async for sse in stream._iter_events():
        name = sse.event
        if name == "ping" or name is None:
            continue
        if name == "error":
            raise _anthropic_error(sse, stream)
        data = sse.data
        if not data:
            continue
        event = loads(data)
        if type(event) is dict and "type" not in event:
            event["type"] = name
        yield event
    await stream.response.aclose()


def _anthropic_error(sse: Any, stream: Any) -> BaseException:
    """What the anthropic SDK raises for ``event: error`` inside a 200 stream."""
    response = stream.response
    body: Any = sse.data
    try:
        body = json.loads(sse.data)
        message = f"{body}"
    except Exception:
        message = sse.data or f"Error code: {response.status_code}"
    error: BaseException = stream._client._make_status_error(message, body=body, response=response)
    return error
