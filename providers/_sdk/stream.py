"""The attempt stream over an SDK's stream, sync (``SDKStream``) and async
(``AsyncSDKStream``), driven by a per-API ``StreamTranslator``.

The wrapper owns what every SDK-backed adapter does alike: the response's decoded-size
accounting, its status, kept headers and socket, the mapping of a translator's shape
error to a malformed stream, the API's last chunk, and the facts the engine reads once
the stream is closed. The translator, in its adapter's module, is the wire translation.

The per-event loop is the hot path (``tests/benchmarks/bench_lifecycle.py``): one
``translate`` call per wire event and no allocation of the wrapper's own; the last-chunk
test is called only for a translator whose API marks one, and only on a wire event that
translated to nothing.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, ClassVar

from lifecycle import StreamEvent
from lifecycle.adapters import AsyncAttemptStream, AttemptStream

from .._fields import kept_headers
from .classify import SHAPE_ERRORS, schema_violation
from .decoding import limit_decoded_size
from .sockets import socket_of_response

__all__ = ["AsyncSDKStream", "SDKStream", "StreamTranslator"]


class StreamTranslator(ABC):
    """Folds one API's wire events into neutral ones; one translator per attempt.

    The facts the engine reads after close (``unknown_events``, ``response_id``,
    ``response_model``) are the translator's, copied onto the stream when it closes; a
    translator that does not learn one leaves the default."""

    __slots__ = ()

    unknown_events: int = 0
    """Wire events of a type the translator does not know: ignored, and counted."""
    response_id: str | None = None
    response_model: str | None = None

    marks_last: ClassVar[bool] = False
    """Whether the API marks its last chunk (``is_last``): after it the stream yields
    ``finish()`` and reads the rest of the body (the engine drains it) untranslated."""

    @abstractmethod
    def translate(self, event: Any) -> StreamEvent | list[StreamEvent] | None:
        """The neutral event one wire event stands for: None if none, a list if several.
        A shape error raised here (``SHAPE_ERRORS``) is a malformed stream."""

    def is_last(self, event: Any) -> bool:
        """Whether ``event`` is the answer's last (asked if ``marks_last``). It is asked
        only of a wire event that translated to nothing: the last chunk carries no
        events of its own (chat completions' usage chunk has no choices)."""
        return False

    def finish(self) -> StreamEvent | None:
        """What the API's end stands for: at its last chunk, or at the end of the body if
        none came. Called once, outside the shape-error mapping."""
        return None


class SDKStream(AttemptStream):
    """An SDK's sync stream as an attempt stream; ``new_translator()`` is called when its
    events are first read. ``wire``, if given, is what the translator reads instead of
    the SDK stream's own event objects (e.g. their JSON, ``sse_json``)."""

    def __init__(
        self,
        stream: Any,
        new_translator: Callable[[], StreamTranslator],
        wire: Iterator[Any] | None = None,
    ) -> None:
        self._stream = stream
        _open(self, stream)
        self._new_translator = new_translator
        self._translator: StreamTranslator | None = None
        self._wire = wire

    def events(self) -> Iterator[StreamEvent]:
        self._translator = translator = self._new_translator()
        translate = translator.translate
        is_last = translator.is_last if translator.marks_last else None
        wire = iter(self._stream) if self._wire is None else self._wire
        stopped = False
        for event in wire:
            try:
                neutral = translate(event)
            except SHAPE_ERRORS as exc:
                raise schema_violation(event, exc) from exc
            if neutral is None:
                if is_last is not None and is_last(event):
                    stopped = True
                    break
            elif type(neutral) is StreamEvent or isinstance(neutral, StreamEvent):
                yield neutral
            else:
                yield from neutral
        final = translator.finish()
        if final is not None:
            yield final
        if stopped:
            for _ in wire:
                pass  # after the answer's last chunk: the engine is draining the body

    def close(self) -> None:
        _keep_facts(self, self._translator)
        self._stream.close()


class AsyncSDKStream(AsyncAttemptStream):
    """An SDK's async stream as an attempt stream; as ``SDKStream``."""

    def __init__(
        self,
        stream: Any,
        new_translator: Callable[[], StreamTranslator],
        wire: AsyncIterator[Any] | None = None,
    ) -> None:
        self._stream = stream
        _open(self, stream)
        self._new_translator = new_translator
        self._translator: StreamTranslator | None = None
        self._wire = wire

    async def events(self) -> AsyncIterator[StreamEvent]:
        self._translator = translator = self._new_translator()
        translate = translator.translate
        is_last = translator.is_last if translator.marks_last else None
        wire = aiter(self._stream) if self._wire is None else self._wire
        stopped = False
        async for event in wire:
            try:
                neutral = translate(event)
            except SHAPE_ERRORS as exc:
                raise schema_violation(event, exc) from exc
            if neutral is None:
                if is_last is not None and is_last(event):
                    stopped = True
                    break
            elif type(neutral) is StreamEvent or isinstance(neutral, StreamEvent):
                yield neutral
            else:
                for each in neutral:
                    yield each
        final = translator.finish()
        if final is not None:
            yield final
        if stopped:
            async for _ in wire:
                pass  # after the answer's last chunk: the engine is draining the body

    async def aclose(self) -> None:
        _keep_facts(self, self._translator)
        await self._stream.close()


def _open(target: AttemptStream | AsyncAttemptStream, stream: Any) -> None:
    """What a stream reads of the SDK stream's HTTP response when it is opened."""
    response = stream.response
    limit_decoded_size(response)
    target.http_status = response.status_code
    target.headers = kept_headers(response.headers)
    target.socket = socket_of_response(response)


def _keep_facts(
    target: AttemptStream | AsyncAttemptStream, translator: StreamTranslator | None
) -> None:
    """What the engine reads of the stream once it is closed."""
    if translator is not None:
        target.unknown_events = translator.unknown_events
        target.response_id = translator.response_id
        target.response_model = translator.response_model
