"""Fault scripts: what the loopback server does with one request.

Each fault is a frozen, keyword-only dataclass so it is hashable, comparable and prints
as the constructor call that rebuilds it; that matters because faults show up in
property-test counterexamples and in the server's request log.

Positions are counted in *meaningful* events (see ``_recordings``): ``n=1`` sends every
block up to and including the first meaningful event, then the fault. ``n=0`` sends the
preamble a real provider sends before any progress (``message_start``, pings, the role
chunk). A count beyond the recording's meaningful events sends the whole recording
before the fault, without ending the body.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

__all__ = [
    "CompressedLine",
    "DropAfterEvents",
    "Healthy",
    "HttpError",
    "MalformedEvent",
    "PingsOnly",
    "RawResponse",
    "ServerFault",
    "StallAfterEvents",
    "StallAfterHeaders",
    "StallBeforeHeaders",
    "TruncateAfterBlocks",
]

DEFAULT_RECORDING = "text_basic"


def _check_count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")


def _check_recording(value: str) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"recording must be a non-empty recording name, got {value!r}")


@dataclass(frozen=True, kw_only=True, slots=True)
class Healthy:
    """Replay the whole recording, ``drip`` seconds apart between SSE blocks, after
    ``head_delay`` seconds of silence before the status line (a provider's time to the
    first byte, for checks of the clocks that count from the request sent).

    A non-streaming request gets the assembled completion after ``drip`` times the
    number of blocks, the time the stream would have taken.
    """

    recording: str = DEFAULT_RECORDING
    drip: float = 0.0
    head_delay: float = 0.0

    def __post_init__(self) -> None:
        _check_recording(self.recording)
        if not self.drip >= 0.0:
            raise ValueError(f"drip must be >= 0, got {self.drip!r}")
        if not self.head_delay >= 0.0:
            raise ValueError(f"head_delay must be >= 0, got {self.head_delay!r}")


@dataclass(frozen=True, kw_only=True, slots=True)
class StallBeforeHeaders:
    """Read the request and never answer; the connection stays open until the client leaves."""


@dataclass(frozen=True, kw_only=True, slots=True)
class StallAfterHeaders:
    """Send the 200 status and headers, then nothing."""


@dataclass(frozen=True, kw_only=True, slots=True)
class StallAfterEvents:
    """Send the stream up to the ``n``-th meaningful event, then nothing."""

    n: int = 1
    recording: str = DEFAULT_RECORDING

    def __post_init__(self) -> None:
        _check_count("n", self.n)
        _check_recording(self.recording)


@dataclass(frozen=True, kw_only=True, slots=True)
class PingsOnly:
    """After ``after_events`` meaningful events, send only keep-alives every ``interval`` s.

    Anthropic gets ``event: ping`` blocks, OpenAI SSE comments: bytes keep arriving, so
    a read timeout never fires, yet the answer makes no progress.
    """

    interval: float = 0.1
    after_events: int = 0
    recording: str = DEFAULT_RECORDING

    def __post_init__(self) -> None:
        if not self.interval > 0.0:
            raise ValueError(f"interval must be > 0, got {self.interval!r}")
        _check_count("after_events", self.after_events)
        _check_recording(self.recording)


@dataclass(frozen=True, kw_only=True, slots=True)
class DropAfterEvents:
    """Send up to the ``n``-th meaningful event, then reset the TCP connection.

    The chunked body is left unterminated and the socket is closed with ``SO_LINGER`` 0,
    so the client sees an RST mid-body, as when a proxy or the provider goes away.
    """

    n: int = 1
    recording: str = DEFAULT_RECORDING

    def __post_init__(self) -> None:
        _check_count("n", self.n)
        _check_recording(self.recording)


@dataclass(frozen=True, kw_only=True, slots=True)
class TruncateAfterBlocks:
    """Send the recording's first ``n`` SSE blocks, then end the body.

    Unlike the other positions, ``n`` counts every block (pings, ``content_block_stop``,
    ``response.output_item.done``, the ``[DONE]`` line), so a test can cut at each event
    boundary, between a tool call's last argument delta and its stop included.
    ``end="complete"`` terminates the chunked body properly, as a proxy that closes a
    stream early does: nothing but the missing events tells the client it was cut.
    ``end="cut"`` resets the TCP connection instead. A non-streaming request gets the
    completion assembled from those blocks (halved, then reset, for ``"cut"``).
    """

    n: int = 0
    recording: str = DEFAULT_RECORDING
    end: str = "complete"

    def __post_init__(self) -> None:
        _check_count("n", self.n)
        _check_recording(self.recording)
        if self.end not in ("complete", "cut"):
            raise ValueError(f"end must be 'complete' or 'cut', got {self.end!r}")


@dataclass(frozen=True, kw_only=True, slots=True)
class HttpError:
    """Answer with ``status`` and a JSON error body.

    ``body=None`` uses the provider's own error shape for the status (Anthropic
    ``{"type": "error", "error": {...}}``, OpenAI ``{"error": {...}}``). ``headers`` are
    added as given, e.g. ``(("retry-after", "1"),)``; a ``content-type`` among them
    replaces ``application/json``.
    """

    status: int = 529
    body: str | bytes | None = None
    headers: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.status, bool) or not isinstance(self.status, int):
            raise ValueError(f"status must be an int, got {self.status!r}")
        if not 200 <= self.status <= 599:
            raise ValueError(f"status must be in 200..599, got {self.status}")
        # Accept lists for convenience but store tuples so the fault stays hashable.
        headers = tuple((str(name), str(value)) for name, value in self.headers)
        for name, value in headers:
            if not name or any(c in name for c in "\r\n:") or any(c in value for c in "\r\n"):
                raise ValueError(f"invalid header {name!r}: {value!r}")
        object.__setattr__(self, "headers", headers)


@dataclass(frozen=True, kw_only=True, slots=True)
class MalformedEvent:
    """After ``after_events`` meaningful events, send one event whose data is not JSON.

    The rest of the recording follows and the body ends properly, so the only fault a
    client can see is the parse error.
    """

    after_events: int = 0
    recording: str = DEFAULT_RECORDING

    def __post_init__(self) -> None:
        _check_count("after_events", self.after_events)
        _check_recording(self.recording)


@dataclass(frozen=True, kw_only=True, slots=True)
class RawResponse:
    """Send exactly these bytes: for hostile input (HTML error pages, a JSON body where a
    stream was expected, invalid UTF-8, unknown or out-of-order events, a body cut
    mid-event). ``body`` is sent as one chunk of a chunked body (or with a
    content-length when ``chunked`` is false); ``end`` is ``"complete"`` (terminate the
    body), ``"cut"`` (TCP reset right after the bytes) or ``"stall"`` (send nothing more).
    """

    status: int = 200
    headers: tuple[tuple[str, str], ...] = (("content-type", "text/event-stream"),)
    body: bytes = b""
    chunked: bool = True
    end: str = "complete"

    def __post_init__(self) -> None:
        if not 100 <= self.status <= 599:
            raise ValueError(f"status must be an HTTP status, got {self.status!r}")
        if self.end not in ("complete", "cut", "stall"):
            raise ValueError(f"end must be 'complete', 'cut' or 'stall', got {self.end!r}")
        object.__setattr__(self, "headers", tuple((str(k), str(v)) for k, v in self.headers))
        for name, value in self.headers:
            if any(c in name + value for c in "\r\n"):
                raise ValueError("header names and values must not contain CR or LF")


@dataclass(frozen=True, kw_only=True, slots=True)
class CompressedLine:
    """After ``after_events`` meaningful events, one SSE event whose ``data:`` line is
    ``size`` bytes long (a JSON object with one long string), the whole body sent with
    ``Content-Encoding: <encoding>`` (``gzip`` or ``deflate``) whatever the request's
    ``Accept-Encoding`` asked for.

    A decompression bomb: 64 MiB of line compress to about 64 KiB on the wire, so a
    limit on wire bytes never sees it. The compressed body then ends properly.
    """

    size: int = 64 * 1024 * 1024
    encoding: str = "gzip"
    after_events: int = 0
    recording: str = DEFAULT_RECORDING

    def __post_init__(self) -> None:
        _check_count("size", self.size)
        if self.encoding not in ("gzip", "deflate"):
            raise ValueError(f"encoding must be 'gzip' or 'deflate', got {self.encoding!r}")
        _check_count("after_events", self.after_events)
        _check_recording(self.recording)


ServerFault: TypeAlias = (
    Healthy
    | StallBeforeHeaders
    | StallAfterHeaders
    | StallAfterEvents
    | PingsOnly
    | DropAfterEvents
    | TruncateAfterBlocks
    | HttpError
    | MalformedEvent
    | RawResponse
    | CompressedLine
)
"""Any fault script the server understands."""

FAULT_TYPES: tuple[type, ...] = (
    Healthy,
    StallBeforeHeaders,
    StallAfterHeaders,
    StallAfterEvents,
    PingsOnly,
    DropAfterEvents,
    TruncateAfterBlocks,
    HttpError,
    MalformedEvent,
    RawResponse,
    CompressedLine,
)

RECORDING_FAULTS = (
    Healthy,
    StallAfterEvents,
    PingsOnly,
    DropAfterEvents,
    TruncateAfterBlocks,
    MalformedEvent,
    CompressedLine,
)
"""The faults that replay a recording (they have a ``recording`` field)."""
