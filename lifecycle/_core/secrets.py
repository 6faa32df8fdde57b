"""The actual secrets of the routes' clients, so that every text the engine writes can be
cleared of them, whatever their shape.

Shape patterns (``sk-...``, ``Bearer ...``) miss the keys of OpenAI-compatible providers
(``gsk_...``, ``AIza...``, opaque tokens). The providers' adapters register here the API
key and the auth header values of each client a route's factory builds, and of each
request it sends (a callable ``api_key`` is only known then). ``scrub`` removes every
piece of a known secret at least ``MIN_PIECE`` characters long: a provider that echoes a
key may cut it (``"Incorrect API key provided: gsk_abc...xyz"``).

The registry is process-wide: ``redact`` is called from everywhere (records, errors,
logging filters) without an engine at hand, and a secret of one engine is no less a
secret in another's text. It holds secrets only (never the texts scrubbed), and
registering a value already known costs one set lookup, so it can run per request.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable

__all__ = ["MIN_PIECE", "REDACTED", "known_secret_count", "register_secrets", "scrub"]

REDACTED = "[redacted]"
MIN_PIECE = 8
"""Shortest piece of a secret that is removed, and the shortest secret registered: a
shorter value (a test's ``api_key="test"``) is no secret, and removing its every
occurrence would mangle ordinary words."""

_SCHEMES = ("bearer ", "basic ", "token ")

_lock = threading.Lock()
_secrets: frozenset[str] = frozenset()
_pieces: frozenset[str] = frozenset()
"""Every MIN_PIECE-long substring of every secret: a text's window found here is part of
a secret (a longer piece is a run of overlapping windows)."""


def register_secrets(values: Iterable[object]) -> None:
    """Remember these values (API keys, auth header values) as secrets. An auth header's
    scheme (``Bearer``) is not part of its secret: redaction keeps it."""
    global _secrets, _pieces
    fresh = {secret for value in values if (secret := _secret_of(value)) is not None}
    if fresh <= _secrets:  # the common case, per request: nothing new
        return
    with _lock:
        fresh -= _secrets
        if not fresh:
            return
        pieces = set(_pieces)
        for secret in fresh:
            pieces.update(secret[i : i + MIN_PIECE] for i in range(len(secret) - MIN_PIECE + 1))
        # Readers take the two references without the lock: publish pieces first, so a
        # reader that sees a secret also sees its pieces.
        _pieces = frozenset(pieces)
        _secrets = _secrets | fresh


def _reset_lock_in_child() -> None:
    # A fork while another thread registered would leave the child's copy held forever.
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_lock_in_child)


def known_secret_count() -> int:
    return len(_secrets)


def scrub(text: str) -> str:
    """``text`` with every piece of a known secret (at least MIN_PIECE characters long)
    replaced by ``[redacted]``; overlapping and adjacent pieces become one."""
    pieces = _pieces
    if not pieces or len(text) < MIN_PIECE:
        return text
    covered_until = -1
    spans: list[tuple[int, int]] = []
    for start in range(len(text) - MIN_PIECE + 1):
        if text[start : start + MIN_PIECE] not in pieces:
            continue
        end = start + MIN_PIECE
        if spans and start <= covered_until:
            spans[-1] = (spans[-1][0], end)
        else:
            spans.append((start, end))
        covered_until = end
    if not spans:
        return text
    parts: list[str] = []
    position = 0
    for start, end in spans:
        parts += [text[position:start], REDACTED]
        position = end
    parts.append(text[position:])
    return "".join(parts)


def _secret_of(value: object) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if not isinstance(value, str):
        return None
    value = value.strip()
    lowered = value.lower()
    for scheme in _SCHEMES:
        if lowered.startswith(scheme):
            value = value[len(scheme) :].strip()
            break
    return value if len(value) >= MIN_PIECE else None
