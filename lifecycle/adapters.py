"""The interface a provider adapter implements, for those who write one.

An adapter is a ``Route``: it builds its SDK's client (through the factory the user
gives), opens one streaming request per attempt (``AttemptStream`` /
``AsyncAttemptStream``, yielding ``lifecycle.StreamEvent``), and classifies its SDK's
errors into a ``Fault``. What it gets from the engine: the ``Request`` (the neutral
history and options), the attempt's ``AttemptConnection`` (``active_connection()``: the
socket the watchdog shuts down, and the byte counters), and redaction (``redact``,
``HEADER_ALLOWLIST``, ``header_subset``, ``register_secrets``) for anything it keeps,
and ``exception_chain`` to look through what its SDK wrapped.

An adapter keeps no state: the engine keeps its clients, one set per engine. What a
fault teaches about the server (it refuses an option the adapter adds) the adapter
returns as ``Fault.learned``; the engine remembers it for that route and passes every
fact learned so far to ``open``, ``aopen`` and ``classify`` as ``learned``.
``providers`` holds the three adapters this project ships.
"""

from ._core.errors import Fault, MissingCredentials
from ._core.redaction import HEADER_ALLOWLIST, exception_chain, header_subset, redact
from ._core.request import Request
from ._core.secrets import register_secrets
from ._drivers.connection import (
    AttemptConnection,
    OversizedEvent,
    Shutdownable,
    active_connection,
    count_decoded,
    count_read,
)
from ._drivers.route import AsyncAttemptStream, AttemptStream, Route

__all__ = [
    "HEADER_ALLOWLIST",
    "AsyncAttemptStream",
    "AttemptConnection",
    "AttemptStream",
    "Fault",
    "MissingCredentials",
    "OversizedEvent",
    "Request",
    "Route",
    "Shutdownable",
    "active_connection",
    "count_decoded",
    "count_read",
    "exception_chain",
    "header_subset",
    "redact",
    "register_secrets",
]
