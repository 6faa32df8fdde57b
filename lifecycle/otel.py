"""OpenTelemetry traces and metrics of runs and route breakers (the ``otel`` extra).

``OpenTelemetryHooks`` is a ``lifecycle.LifecycleHooks``; see its module
(``lifecycle._observe.otel``) for the spans, events and instruments it emits.
"""

from ._observe.otel import BREAKER_STATE_VALUES, OpenTelemetryHooks, provider_name

__all__ = ["BREAKER_STATE_VALUES", "OpenTelemetryHooks", "provider_name"]
