"""A state-machine-driven lifecycle engine for LLM streaming calls.

The public API is what ``__all__`` names; every other module is private. ``lifecycle``
is provider-neutral and never imports ``providers``: adapters implement ``Route``.
"""

from typing import TYPE_CHECKING, Any

from ._abort import AttemptConnection, OversizedEvent, Shutdownable, active_connection, count_read
from ._async_driver import AsyncRun
from ._breaker import BREAKER_STATES, BREAKER_TRANSITIONS, Admission, BreakerChange, BreakerCore
from ._config import BreakerPolicy, RetryPolicy, Timeouts
from ._engine import StreamEngine
from ._errors import (
    EngineClosed,
    Fault,
    Interrupted,
    LifecycleError,
    MissingCredentials,
    StreamFailed,
)
from ._health import BreakerStatus, HealthStore, LocalHealthStore, RouteHealth
from ._hooks import LifecycleHooks
from ._log_filter import SecretsFilter
from ._machine import FINAL_STATES, STATES, TRANSITIONS
from ._message import (
    STOP_REASONS,
    IncompleteToolCall,
    Message,
    ProviderArtifact,
    Restart,
    StopReason,
    StreamEvent,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from ._outcomes import OUTCOMES, OutcomeTerm, attempt_text
from ._route import AsyncAttemptStream, AttemptStream, Request, Route
from ._run import AttemptRecord, CleanupStep, Diagnostics, Transition
from ._sync_driver import Run

__all__ = [
    "BREAKER_STATES",
    "BREAKER_TRANSITIONS",
    "FINAL_STATES",
    "OUTCOMES",
    "STATES",
    "STOP_REASONS",
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
    "EngineClosed",
    "Fault",
    "HealthStore",
    "IncompleteToolCall",
    "Interrupted",
    "LifecycleError",
    "LifecycleHooks",
    "LocalHealthStore",
    "Message",
    "MissingCredentials",
    "OutcomeTerm",
    "OversizedEvent",
    "ProviderArtifact",
    "Request",
    "Restart",
    "RetryPolicy",
    "Route",
    "RouteHealth",
    "Run",
    "SecretsFilter",
    "Shutdownable",
    "StopReason",
    "StreamEngine",
    "StreamEvent",
    "StreamFailed",
    "Timeouts",
    "ToolCall",
    "ToolCallDelta",
    "Transition",
    "Usage",
    "__version__",
    "active_connection",
    "attempt_text",
    "count_read",
]

_DISTRIBUTION = "stream-lifecycle"

if TYPE_CHECKING:
    __version__: str
else:
    # Looked up on first use: importlib.metadata costs tens of milliseconds to import,
    # which every ``import lifecycle`` would otherwise pay. Hidden from mypy, which would
    # otherwise type every misspelt attribute of ``lifecycle`` as Any.
    def __getattr__(name: str) -> Any:
        if name == "__version__":
            from importlib.metadata import PackageNotFoundError, version

            try:
                value = version(_DISTRIBUTION)
            except PackageNotFoundError:  # a source checkout that was never installed
                value = "0+unknown"
            globals()["__version__"] = value
            return value
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
