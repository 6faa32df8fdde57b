"""A state-machine-driven lifecycle engine for LLM streaming calls.

The public API is what ``__all__`` names; every other module is private. ``lifecycle``
is provider-neutral and never imports ``providers``: adapters implement ``Route``.
"""

import importlib.metadata

from ._abort import AttemptConnection, OversizedEvent, Shutdownable, active_connection, count_read
from ._async_driver import AsyncRun
from ._breaker import BREAKER_STATES, BREAKER_TRANSITIONS, Admission, BreakerChange, BreakerCore
from ._config import BreakerPolicy, RetryPolicy, Timeouts
from ._engine import StreamEngine
from ._errors import Fault, Interrupted, LifecycleError, StreamFailed
from ._health import BreakerStatus, HealthStore, LocalHealthStore, RouteHealth
from ._hooks import LifecycleHooks
from ._machine import FINAL_STATES, STATES, TRANSITIONS
from ._message import (
    IncompleteToolCall,
    Message,
    Restart,
    StreamEvent,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from ._route import AsyncAttemptStream, AttemptStream, Request, Route
from ._run import AttemptRecord, CleanupStep, Diagnostics, Transition
from ._sync_driver import Run

try:
    __version__ = importlib.metadata.version("stream-lifecycle")
except importlib.metadata.PackageNotFoundError:  # a checkout on sys.path, never installed
    __version__ = "0+unknown"

__all__ = [
    "BREAKER_STATES",
    "BREAKER_TRANSITIONS",
    "FINAL_STATES",
    "STATES",
    "TRANSITIONS",
    "Admission",
    "AsyncAttemptStream",
    "AsyncRun",
    "AttemptConnection",
    "AttemptRecord",
    "AttemptStream",
    "BreakerChange",
    "BreakerCore",
    "BreakerPolicy",
    "BreakerStatus",
    "CleanupStep",
    "Diagnostics",
    "Fault",
    "HealthStore",
    "IncompleteToolCall",
    "Interrupted",
    "LifecycleError",
    "LifecycleHooks",
    "LocalHealthStore",
    "Message",
    "OversizedEvent",
    "Request",
    "Restart",
    "RetryPolicy",
    "Route",
    "RouteHealth",
    "Run",
    "Shutdownable",
    "StreamEngine",
    "StreamEvent",
    "StreamFailed",
    "Timeouts",
    "ToolCall",
    "ToolCallDelta",
    "Transition",
    "Usage",
    "active_connection",
    "count_read",
]
