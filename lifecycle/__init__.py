"""A state-machine-driven lifecycle engine for LLM streaming calls.

The public API is what ``__all__`` names, for those who *use* the engine: the engine
and its runs, their configuration, records and messages, the errors, the hooks and the
local health store. Other audiences have a face of their own:

- ``lifecycle.adapters``: the interface a provider adapter implements (``Route``);
- ``lifecycle.health``: the fleet-wide breaker store interface, and the Redis store;
- ``lifecycle.otel``, ``lifecycle.record``, ``lifecycle.diagrams``: observers (telemetry,
  recordings and their report, lifecycle diagrams).

Every other module is private (the packages ``_core``, ``_drivers``, ``_health`` and
``_observe``: see the README's "Layout"). ``lifecycle`` is provider-neutral and never
imports ``providers``.
"""

from typing import TYPE_CHECKING, Any

from ._core.breaker import BreakerChange
from ._core.config import BreakerPolicy, RetryPolicy, Timeouts
from ._core.errors import (
    EngineClosed,
    Fault,
    Interrupted,
    LifecycleError,
    MissingCredentials,
    StreamFailed,
)
from ._core.machine import FINAL_STATES, STATES, TRANSITIONS
from ._core.message import (
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
from ._core.outcomes import OUTCOMES, OutcomeTerm, attempt_text, ending_of
from ._core.records import AttemptRecord, CleanupStep, Diagnostics, Outcome, Transition
from ._drivers.async_run import AsyncRun
from ._drivers.engine import StreamEngine
from ._drivers.sync_run import Run
from ._health.route_health import BreakerStatus, LocalHealthStore
from ._observe.hooks import LifecycleHooks, RunView
from ._observe.log_filter import SecretsFilter

__all__ = [
    "FINAL_STATES",
    "OUTCOMES",
    "STATES",
    "STOP_REASONS",
    "TRANSITIONS",
    "AsyncRun",
    "AttemptRecord",
    "BreakerChange",
    "BreakerPolicy",
    "BreakerStatus",
    "CleanupStep",
    "Diagnostics",
    "EngineClosed",
    "Fault",
    "IncompleteToolCall",
    "Interrupted",
    "LifecycleError",
    "LifecycleHooks",
    "LocalHealthStore",
    "Message",
    "MissingCredentials",
    "Outcome",
    "OutcomeTerm",
    "ProviderArtifact",
    "Restart",
    "RetryPolicy",
    "Run",
    "RunView",
    "SecretsFilter",
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
    "attempt_text",
    "ending_of",
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
