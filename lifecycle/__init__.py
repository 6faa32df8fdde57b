"""A state-machine-driven lifecycle engine for LLM streaming calls.

The public API is what ``__all__`` names; every other module is private. ``lifecycle``
is provider-neutral and never imports ``providers``: adapters implement ``Route``.
"""

from ._abort import AttemptConnection, OversizedEvent, Shutdownable, active_connection, count_read
from ._async_driver import AsyncRun
from ._config import RetryPolicy, Timeouts
from ._engine import StreamEngine
from ._errors import Fault, Interrupted, LifecycleError, StreamFailed
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

__all__ = [
    "FINAL_STATES",
    "STATES",
    "TRANSITIONS",
    "AsyncAttemptStream",
    "AsyncRun",
    "AttemptConnection",
    "AttemptRecord",
    "AttemptStream",
    "CleanupStep",
    "Diagnostics",
    "Fault",
    "IncompleteToolCall",
    "Interrupted",
    "LifecycleError",
    "Message",
    "OversizedEvent",
    "Request",
    "Restart",
    "RetryPolicy",
    "Route",
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
