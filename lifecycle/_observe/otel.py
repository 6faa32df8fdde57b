"""OpenTelemetry traces and metrics of runs and route breakers (the ``otel`` extra).

Install ``stream-lifecycle[otel]`` and pass the hooks to the engine::

    from lifecycle.otel import OpenTelemetryHooks

    engine = StreamEngine(routes=[...], hooks=[OpenTelemetryHooks()])

Traces: one ``lifecycle.run`` span per run, with one ``transition`` event per transition
it took, and one child client span per attempt, named as the GenAI conventions name it
(``chat {model}``), with the transitions inside that attempt. Span times are the run's
own transition times (``Transition.at`` on the wall clock of ``run.started_at``), so the
spans show what the machine did, not when the hooks happened to run.

Metrics: ``lifecycle.runs`` and ``lifecycle.attempts`` (counters, by outcome),
``lifecycle.recoveries`` (runs that completed after a failed attempt),
``lifecycle.recovery_latency`` (seconds from a stall or a drop to the next attempt's
start), ``lifecycle.breaker.state`` (a gauge per route: 0 closed, 1 half-open or probing,
2 open) and ``lifecycle.breaker.transitions`` (a counter by route and new state).

GenAI semantic conventions: each attempt span also carries the ``gen_ai.*``,
``server.*`` and ``error.type`` attributes, and each attempt records
``gen_ai.client.operation.duration``, ``gen_ai.client.token.usage``,
``gen_ai.client.operation.time_to_first_chunk`` and ``gen_ai.server.time_to_first_token``
(README, "Telemetry"). Followed: OpenTelemetry semantic conventions v1.41.0,
docs/gen-ai/gen-ai-spans.md and gen-ai-metrics.md (the names checked against
``opentelemetry-semantic-conventions`` 0.66b2, tests/test_otel.py). That package is
not imported here: the ``otel`` extra is the API alone.

``gen_ai.provider.name`` comes from the route's wire API: ``anthropic`` for the Messages
API, ``openai`` for Chat Completions and Responses, OpenAI-compatible servers included.
The conventions ask for the instrumentation's best knowledge and name this very case
(many providers behind the OpenAI API and client): the telemetry flavour is OpenAI's,
and ``server.address`` (the host of the client's base URL) says whose server it was.

This module is the only one that imports ``opentelemetry``; ``import lifecycle`` never
loads it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Histogram, Meter, MeterProvider, Observation
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, TracerProvider
from opentelemetry.util.types import AttributeValue

from .._core.fork import renew_lock_after_fork
from .._core.message import Usage
from .._core.records import AttemptRecord, Transition
from .hooks import LifecycleHooks

if TYPE_CHECKING:
    from .._core.breaker import BreakerChange
    from .hooks import RunView

__all__ = ["BREAKER_STATE_VALUES", "OpenTelemetryHooks", "provider_name"]

logger = logging.getLogger("lifecycle")

SCOPE: Final = "lifecycle"
"""The instrumentation scope of every span and instrument."""
BREAKER_STATE_VALUES: Final[dict[str, int]] = {
    "closed": 0,
    "half_open": 1,
    "probing": 1,
    "open": 2,
}
"""What ``lifecycle.breaker.state`` reports for each breaker state."""
# GenAI semantic conventions v1.41.0 (see the module's docstring).
GEN_AI_OPERATION_NAME: Final = "gen_ai.operation.name"
GEN_AI_PROVIDER_NAME: Final = "gen_ai.provider.name"
GEN_AI_SYSTEM: Final = "gen_ai.system"
"""The provider's name before v1.37; still emitted for dashboards built on it."""
GEN_AI_REQUEST_MODEL: Final = "gen_ai.request.model"
GEN_AI_REQUEST_MAX_TOKENS: Final = "gen_ai.request.max_tokens"
GEN_AI_RESPONSE_ID: Final = "gen_ai.response.id"
GEN_AI_RESPONSE_MODEL: Final = "gen_ai.response.model"
GEN_AI_RESPONSE_FINISH_REASONS: Final = "gen_ai.response.finish_reasons"
GEN_AI_USAGE_INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"
GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: Final = "gen_ai.usage.cache_read.input_tokens"
GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS: Final = "gen_ai.usage.cache_creation.input_tokens"
GEN_AI_TOKEN_TYPE: Final = "gen_ai.token.type"
SERVER_ADDRESS: Final = "server.address"
SERVER_PORT: Final = "server.port"
ERROR_TYPE: Final = "error.type"
OPERATION_DURATION: Final = "gen_ai.client.operation.duration"
TOKEN_USAGE: Final = "gen_ai.client.token.usage"
TIME_TO_FIRST_CHUNK: Final = "gen_ai.client.operation.time_to_first_chunk"
TIME_TO_FIRST_TOKEN: Final = "gen_ai.server.time_to_first_token"
"""A server metric in the conventions; dashboards chart it, so the client's view of it
(request sent to first meaningful event, network included) is recorded for completed
attempts, beside the client metric ``TIME_TO_FIRST_CHUNK``."""
OPERATION: Final = "chat"
"""All three wire APIs are chat operations in the conventions' terms."""
PROVIDER_OF_API_MODE: Final[dict[str, str]] = {
    "anthropic_messages": "anthropic",
    "chat_completions": "openai",
    "responses": "openai",
}
DURATION_BUCKETS: Final = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
)  # fmt: skip
TOKEN_BUCKETS: Final = (
    1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
)  # fmt: skip
# The buckets the conventions advise for gen_ai.server.time_to_first_token; the client's
# time_to_first_chunk measures the same span of time from the other end.
FIRST_TOKEN_BUCKETS: Final = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip
FAULT_STATES: Final = frozenset({"stale", "dropped"})
FAILED_ATTEMPTS: Final = frozenset({"stale", "dropped", "error"})
"""Attempt outcomes that mark the attempt span as an error (an interrupt is the caller's)."""
RECOVERY_BUCKETS: Final = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
REQUEST_ID_HEADERS: Final = ("request-id", "x-request-id")


@dataclass(kw_only=True, slots=True)
class _RunTrace:
    """What the hooks remember of one run between two calls (only its own thread or task
    touches it; the dict that holds it is shared)."""

    span: Span
    attempt_span: Span | None = None
    last_ns: int
    """Wall-clock ns of the run's latest transition."""
    fault_at: float | None = None
    """``Transition.at`` of the latest entry into a fault state not yet recovered from."""
    fault: str = ""
    """That fault state (``stale`` or ``dropped``)."""
    failed_attempts: int = 0


def _wall_ns(run: RunView, at: float) -> int:
    """Wall-clock ns of a moment ``at`` seconds after the run started (``Transition.at``).

    The two parts are rounded apart: a float sum near 1.7e9 s would lose ~0.2 µs."""
    return round(run.started_at * 1e9) + round(at * 1e9)


def _route_name(run: RunView, index: int) -> str:
    names = run.route_names
    return names[index] if 0 <= index < len(names) else f"route[{index}]"


def _transition_attributes(transition: Transition) -> dict[str, AttributeValue]:
    return {
        "source": transition.source,
        "trigger": transition.trigger,
        "dest": transition.dest,
    }


class OpenTelemetryHooks(LifecycleHooks):
    """Spans and metrics for every run of the engines it is given to.

    ``tracer_provider`` and ``meter_provider`` default to the global ones (looked up
    lazily by the OpenTelemetry API, so providers set after this is built are used).
    """

    def __init__(
        self,
        *,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        self._tracer = trace.get_tracer(SCOPE, tracer_provider=tracer_provider)
        meter = metrics.get_meter(SCOPE, meter_provider=meter_provider)
        self._runs = meter.create_counter(
            "lifecycle.runs", unit="{run}", description="Runs ended, by final state"
        )
        self._attempts = meter.create_counter(
            "lifecycle.attempts",
            unit="{attempt}",
            description="Attempts ended, by route, API mode and outcome",
        )
        self._recoveries = meter.create_counter(
            "lifecycle.recoveries",
            unit="{run}",
            description="Runs that completed after at least one failed attempt",
        )
        self._recovery_latency = _histogram(
            meter,
            "lifecycle.recovery_latency",
            unit="s",
            description="Seconds from a stall or a drop to the start of the next attempt",
            buckets=RECOVERY_BUCKETS,
        )
        self._operation_duration = _histogram(
            meter,
            OPERATION_DURATION,
            unit="s",
            description="GenAI operation duration.",
            buckets=DURATION_BUCKETS,
        )
        self._token_usage = _histogram(
            meter,
            TOKEN_USAGE,
            unit="{token}",
            description="Number of input and output tokens used.",
            buckets=TOKEN_BUCKETS,
        )
        self._time_to_first_chunk = _histogram(
            meter,
            TIME_TO_FIRST_CHUNK,
            unit="s",
            description="Time to receive the first chunk, from the request's sending.",
            buckets=FIRST_TOKEN_BUCKETS,
        )
        self._time_to_first_token = _histogram(
            meter,
            TIME_TO_FIRST_TOKEN,
            unit="s",
            description="Time to generate first token for successful responses.",
            buckets=FIRST_TOKEN_BUCKETS,
        )
        self._breaker_transitions = meter.create_counter(
            "lifecycle.breaker.transitions",
            unit="{transition}",
            description="Route breaker transitions, by route and new state",
        )
        self._breaker_states: dict[str, int] = {}
        self._traces: dict[str, _RunTrace] = {}
        self._lock = threading.Lock()
        renew_lock_after_fork(self)
        meter.create_observable_gauge(
            "lifecycle.breaker.state",
            callbacks=[self._observe_breakers],
            unit="1",
            description="Each route's breaker as last seen: 0 closed, 1 half-open/probing, 2 open",
        )

    # -- runs -------------------------------------------------------------------------
    def on_run_start(self, run: RunView) -> None:
        self._trace_of(run)

    def on_transition(self, run: RunView, transition: Transition) -> None:
        state = self._trace_of(run)
        at_ns = _wall_ns(run, transition.at)
        state.last_ns = at_ns
        attributes = _transition_attributes(transition)
        state.span.add_event("transition", attributes, timestamp=at_ns)
        if transition.trigger == "start_attempt":
            if state.attempt_span is not None:  # never ended: should not happen
                state.attempt_span.end(end_time=at_ns)
            state.attempt_span = self._start_attempt(run, state, at_ns)
            if state.fault_at is not None:
                latency = max(0.0, transition.at - state.fault_at)
                self._recovery_latency.record(latency, {"fault": state.fault})
                state.fault_at = None
        if state.attempt_span is not None:
            state.attempt_span.add_event("transition", attributes, timestamp=at_ns)
        if transition.dest in FAULT_STATES:
            state.fault_at, state.fault = transition.at, transition.dest

    def on_attempt_end(self, run: RunView, attempt: AttemptRecord) -> None:
        state = self._trace_of(run)
        route = _route_name(run, attempt.route_index)
        outcome = attempt.outcome or "unknown"
        self._attempts.add(1, {"route": route, "api_mode": attempt.api_mode, "outcome": outcome})
        if attempt.outcome != "completed":
            state.failed_attempts += 1
        self._record_gen_ai_metrics(run, attempt)
        span, state.attempt_span = state.attempt_span, None
        if span is None:
            return
        span.set_attributes(_attempt_attributes(attempt, route))
        span.set_attributes(_gen_ai_span_attributes(run, attempt))
        if outcome in FAILED_ATTEMPTS:
            span.set_status(Status(StatusCode.ERROR, attempt.reason or outcome))
        span.end(end_time=state.last_ns)

    def on_run_end(self, run: RunView) -> None:
        with self._lock:
            state = self._traces.pop(run.id, None)
        if state is None:
            return
        outcome = run.state
        self._runs.add(1, {"outcome": outcome})
        if outcome == "completed" and state.failed_attempts:
            self._recoveries.add(1)
        if state.attempt_span is not None:  # the run ended without its attempt's end
            state.attempt_span.end(end_time=state.last_ns)
        span = state.span
        span.set_attributes({"lifecycle.outcome": outcome, "lifecycle.attempts": len(run.attempts)})
        if outcome == "failed":
            span.set_status(Status(StatusCode.ERROR, _failure_reason(run)))
        span.end(end_time=state.last_ns)

    # -- breakers ---------------------------------------------------------------------
    def on_breaker_change(self, change: BreakerChange) -> None:
        with self._lock:
            self._breaker_states[change.route] = BREAKER_STATE_VALUES.get(change.dest, 0)
        self._breaker_transitions.add(1, {"route": change.route, "dest": change.dest})

    def _observe_breakers(self, options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            states = list(self._breaker_states.items())
        return [Observation(value, {"route": route}) for route, value in states]

    # -- helpers ----------------------------------------------------------------------
    def _trace_of(self, run: RunView) -> _RunTrace:
        """The run's trace, its span started at the run's creation if this is its first
        hook call."""
        with self._lock:
            state = self._traces.get(run.id)
        if state is not None:
            return state
        start_ns = _wall_ns(run, 0.0)
        span = self._tracer.start_span(
            "lifecycle.run",
            kind=SpanKind.INTERNAL,
            start_time=start_ns,
            attributes={"lifecycle.run_id": run.id, "lifecycle.routes": run.route_names},
        )
        state = _RunTrace(span=span, last_ns=start_ns)
        with self._lock:
            self._traces[run.id] = state
        return state

    def _record_gen_ai_metrics(self, run: RunView, attempt: AttemptRecord) -> None:
        diag = attempt.diagnostics
        attributes = _gen_ai_metric_attributes(attempt)
        if diag.elapsed is not None:
            self._operation_duration.record(diag.elapsed, attributes)
        if diag.ttft is not None:
            self._time_to_first_chunk.record(diag.ttft, attributes)
        if attempt.outcome != "completed":
            return
        if diag.ttft is not None:
            self._time_to_first_token.record(diag.ttft, attributes)
        usage = _usage_of(run, attempt)
        if usage is not None:
            for token_type, count in (
                ("input", usage.input_tokens),
                ("output", usage.output_tokens),
            ):
                if count is not None:
                    self._token_usage.record(count, {**attributes, GEN_AI_TOKEN_TYPE: token_type})

    def _start_attempt(self, run: RunView, state: _RunTrace, at_ns: int) -> Span:
        attributes: dict[str, AttributeValue] = {}
        attempts = run.attempts
        name = OPERATION
        if attempts:
            attempt = attempts[-1]
            # The conventions' client span name: "{gen_ai.operation.name} {gen_ai.request.model}".
            name = f"{OPERATION} {attempt.model}"
            attributes = {
                "lifecycle.attempt": attempt.number,
                "lifecycle.api_mode": attempt.api_mode,
                "lifecycle.model": attempt.model,
                "lifecycle.route": _route_name(run, attempt.route_index),
                **_gen_ai_request_attributes(run, attempt),
            }
        return self._tracer.start_span(
            name,
            context=trace.set_span_in_context(state.span),
            kind=SpanKind.CLIENT,
            start_time=at_ns,
            attributes=attributes,
        )


def _attempt_attributes(attempt: AttemptRecord, route: str) -> dict[str, AttributeValue]:
    diag = attempt.diagnostics
    attributes: dict[str, AttributeValue] = {
        "lifecycle.attempt": attempt.number,
        "lifecycle.api_mode": attempt.api_mode,
        "lifecycle.model": attempt.model,
        "lifecycle.route": route,
        "lifecycle.outcome": attempt.outcome or "unknown",
        "lifecycle.chunks": diag.chunks,
        "lifecycle.bytes": diag.bytes,
        "lifecycle.probe": attempt.probe,
    }
    if diag.ttfb is not None:
        attributes["lifecycle.ttfb"] = diag.ttfb
    if diag.ttft is not None:
        attributes["lifecycle.ttft"] = diag.ttft
    if diag.http_status is not None:
        attributes["http.response.status_code"] = diag.http_status
    request_id = next(
        (diag.headers[name] for name in REQUEST_ID_HEADERS if diag.headers.get(name)), None
    )
    if request_id is not None:
        attributes["lifecycle.request_id"] = request_id
    if attempt.reason is not None:
        attributes["lifecycle.reason"] = attempt.reason
    return attributes


def provider_name(api_mode: str) -> str:
    """``gen_ai.provider.name`` of a wire API (see the module's docstring); a wire API of
    an adapter this module does not know keeps its own name, as the conventions allow."""
    return PROVIDER_OF_API_MODE.get(api_mode, api_mode)


def _gen_ai_identity(attempt: AttemptRecord) -> dict[str, AttributeValue]:
    """The operation, provider and requested model: on the span and on every metric."""
    provider = provider_name(attempt.api_mode)
    return {
        GEN_AI_OPERATION_NAME: OPERATION,
        GEN_AI_PROVIDER_NAME: provider,
        GEN_AI_SYSTEM: provider,
        GEN_AI_REQUEST_MODEL: attempt.model,
    }


def _gen_ai_request_attributes(run: RunView, attempt: AttemptRecord) -> dict[str, AttributeValue]:
    """What is known when the attempt starts: at the span's start, so samplers see it."""
    return {**_gen_ai_identity(attempt), GEN_AI_REQUEST_MAX_TOKENS: run.request.max_tokens}


def _error_type(attempt: AttemptRecord) -> str | None:
    """``error.type`` of a failed attempt: the provider's error code (the HTTP status) if
    it sent one, ``timeout`` for a stall, else the exception's class or the outcome."""
    if attempt.outcome not in FAILED_ATTEMPTS:
        return None
    diag = attempt.diagnostics
    if diag.http_status is not None and diag.http_status >= 400:
        return str(diag.http_status)
    if attempt.outcome == "stale":
        return "timeout"
    return diag.error_type or attempt.outcome


def _gen_ai_metric_attributes(attempt: AttemptRecord) -> dict[str, AttributeValue]:
    """The attributes the conventions list for the client metrics (low cardinality)."""
    diag = attempt.diagnostics
    attributes = _gen_ai_identity(attempt)
    if diag.response_model:
        attributes[GEN_AI_RESPONSE_MODEL] = diag.response_model
    if diag.server_address:
        attributes[SERVER_ADDRESS] = diag.server_address
        if diag.server_port is not None:
            attributes[SERVER_PORT] = diag.server_port
    error_type = _error_type(attempt)
    if error_type is not None:
        attributes[ERROR_TYPE] = error_type
    return attributes


def _usage_of(run: RunView, attempt: AttemptRecord) -> Usage | None:
    """The completed attempt's usage: ``run.message`` is that attempt's at its end."""
    message = run.message
    if attempt.outcome != "completed" or message is None:
        return None
    return message.usage


def _gen_ai_span_attributes(run: RunView, attempt: AttemptRecord) -> dict[str, AttributeValue]:
    diag = attempt.diagnostics
    attributes = {**_gen_ai_request_attributes(run, attempt), **_gen_ai_metric_attributes(attempt)}
    if diag.response_id:
        attributes[GEN_AI_RESPONSE_ID] = diag.response_id
    message = run.message
    if attempt.outcome == "completed" and message is not None:
        # The conventions ask for the provider's own word, not the neutral one.
        finish_reason = message.provider_stop_reason or message.stop_reason
        if finish_reason:
            attributes[GEN_AI_RESPONSE_FINISH_REASONS] = (finish_reason,)
    usage = _usage_of(run, attempt)
    if usage is not None:
        for name, count in (
            (GEN_AI_USAGE_INPUT_TOKENS, usage.input_tokens),
            (GEN_AI_USAGE_OUTPUT_TOKENS, usage.output_tokens),
            (GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS, usage.cache_read_tokens),
            (GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS, usage.cache_write_tokens),
        ):
            if count is not None:
                attributes[name] = count
    return attributes


def _failure_reason(run: RunView) -> str:
    history = run.history
    if history and history[-1].trigger == "exhaust_routes":
        return "no route admits the run (breakers open)"
    if history and history[-1].trigger == "expire":
        return "Timeouts.total ran out"
    attempts = run.attempts
    return (attempts[-1].reason if attempts else None) or "failed"


def _histogram(
    meter: Meter, name: str, *, unit: str, description: str, buckets: Sequence[float]
) -> Histogram:
    try:
        return meter.create_histogram(
            name,
            unit=unit,
            description=description,
            explicit_bucket_boundaries_advisory=buckets,
        )
    except TypeError:  # opentelemetry-api < 1.23: no bucket advice
        return meter.create_histogram(name, unit=unit, description=description)
