"""OpenTelemetry hooks (``lifecycle.otel``) end to end: real SDK runs over real HTTP to the
loopback server, spans caught by the OpenTelemetry SDK's in-memory exporter and metrics by
its in-memory reader, on a tracer and a meter provider of the test's own (never the
global ones). Both providers and both drivers, through the ``provider`` fixture.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")

from conftest import MESSAGES, make_route, unique_model
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind, StatusCode

from lifecycle import (
    BreakerPolicy,
    LifecycleHooks,
    RetryPolicy,
    StreamFailed,
    Timeouts,
)
from lifecycle.otel import OpenTelemetryHooks
from providers.loopback import Healthy, HttpError, StallAfterEvents

pytestmark = pytest.mark.timeout(60)

TIMEOUTS = Timeouts(connect=5, first_token=0.5, stale=0.5, total=30)
ONE_EACH = RetryPolicy(max_attempts=1, initial_backoff=0, max_backoff=0)
"""One attempt per route: a stall on the first route falls back to the second at once."""


@dataclass
class Telemetry:
    hooks: OpenTelemetryHooks
    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader
    tracer_provider: TracerProvider
    meter_provider: MeterProvider

    def finished(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    def run_span(self, run_id: str) -> ReadableSpan:
        found = [
            s
            for s in self.finished()
            if s.name == "lifecycle.run" and attrs(s).get("lifecycle.run_id") == run_id
        ]
        assert len(found) == 1, [s.name for s in self.finished()]
        return found[0]

    def attempt_spans(self, run_span: ReadableSpan) -> list[ReadableSpan]:
        """The attempt (client) spans of the run span's trace, in start order."""
        trace_id = run_span.context.trace_id
        found = [
            s
            for s in self.finished()
            if s.kind == SpanKind.CLIENT and s.context.trace_id == trace_id
        ]
        return sorted(found, key=lambda s: s.start_time or 0)

    def points(self, name: str) -> list[Any]:
        """Every data point of metric ``name`` (cumulative since the provider started)."""
        data = self.metrics.get_metrics_data()
        found: list[Any] = []
        if data is None:
            return found
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        found.extend(metric.data.data_points)
        return found

    def counts(self, name: str, *keys: str) -> dict[tuple[Any, ...], Any]:
        """A counter's (or gauge's) values by the attributes ``keys``."""
        return {tuple(dict(p.attributes).get(k) for k in keys): p.value for p in self.points(name)}


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def transitions(span: ReadableSpan) -> list[tuple[Any, Any, Any]]:
    events = [e for e in span.events if e.name == "transition"]
    assert len(events) == len(span.events), [e.name for e in span.events]
    return [
        (e.attributes["source"], e.attributes["trigger"], e.attributes["dest"])  # type: ignore[index]
        for e in events
    ]


def wall_ns(run: Any, at: float) -> int:
    """Wall-clock ns of ``Transition.at``: the run's creation (``time.time()``) plus the
    transition's offset, each rounded on its own (a float sum near 1.7e9 s has 0.2 µs
    steps, which would blur the order of close transitions)."""
    return round(run.started_at * 1e9) + round(at * 1e9)


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    hooks = OpenTelemetryHooks(tracer_provider=tracer_provider, meter_provider=meter_provider)
    yield Telemetry(hooks, spans, reader, tracer_provider, meter_provider)
    # Every run ended: nothing of them is left behind.
    assert hooks._traces == {}
    tracer_provider.shutdown()
    meter_provider.shutdown()


def stale_then_fallback(provider: Any, telemetry: Telemetry) -> Any:
    """The issue's run: the first route stalls after one event, the other completes."""
    provider.script([StallAfterEvents(n=1)])
    provider.script([Healthy()], model=provider.other_model)
    engine = provider.engine(timeouts=TIMEOUTS, retry=ONE_EACH, hooks=[telemetry.hooks])
    run, seen = provider.run_to_end(engine)
    assert seen.error is None, repr(seen.error)
    assert run.state == "completed"
    assert [(a.route_index, a.outcome) for a in run.attempts] == [(0, "stale"), (1, "completed")]
    return run


def test_span_tree_of_a_stale_run_that_fell_back(provider: Any, telemetry: Telemetry) -> None:
    run = stale_then_fallback(provider, telemetry)
    run_span = telemetry.run_span(run.id)
    first_span, second_span = spans = telemetry.attempt_spans(run_span)
    assert len(telemetry.finished()) == 3

    # The tree: one trace, both attempts children of the run span.
    assert run_span.parent is None
    for span in spans:
        assert span.parent is not None
        assert span.parent.span_id == run_span.context.span_id
        assert span.context.trace_id == run_span.context.trace_id
    assert first_span.context.span_id != second_span.context.span_id

    # The run span.
    route, fallback = provider.route(), provider.other_route()
    run_attrs = attrs(run_span)
    assert run_attrs["lifecycle.run_id"] == run.id
    assert tuple(run_attrs["lifecycle.routes"]) == (route.name, fallback.name)
    assert run_attrs["lifecycle.outcome"] == "completed"
    assert run_attrs["lifecycle.attempts"] == 2
    assert run_span.status.status_code == StatusCode.UNSET

    # The stale attempt, on the first route.
    first, second = run.attempts
    requests = provider.requests()
    fallback_requests = provider.requests(provider.other_model)
    assert len(requests) == len(fallback_requests) == 1
    a1 = attrs(first_span)
    assert a1["lifecycle.outcome"] == "stale"
    assert a1["lifecycle.api_mode"] == provider.api_mode
    assert a1["lifecycle.model"] == provider.model
    assert a1["lifecycle.route"] == route.name == run.route_names[0]
    assert a1["lifecycle.reason"] == first.reason
    assert "Timeouts.stale" in a1["lifecycle.reason"]
    assert a1["http.response.status_code"] == 200  # the stall came after the headers
    assert a1["lifecycle.request_id"] == f"req_loopback_{requests[0].index}"
    assert a1["lifecycle.chunks"] == first.diagnostics.chunks >= 1
    assert a1["lifecycle.probe"] is False
    assert first_span.status.status_code == StatusCode.ERROR

    # The completed attempt, on the other route.
    a2 = attrs(second_span)
    assert a2["lifecycle.outcome"] == "completed"
    assert a2["lifecycle.api_mode"] == provider.other_api_mode
    assert a2["lifecycle.model"] == provider.other_model
    assert a2["lifecycle.route"] == fallback.name == run.route_names[1]
    assert a2["http.response.status_code"] == 200
    assert a2["lifecycle.request_id"] == f"req_loopback_{fallback_requests[0].index}"
    assert a2["lifecycle.ttft"] > 0 and a2["lifecycle.ttft"] == second.diagnostics.ttft
    assert a2["lifecycle.ttfb"] > 0 and a2["lifecycle.ttfb"] <= a2["lifecycle.ttft"]
    assert a2["lifecycle.bytes"] > 0 and a2["lifecycle.bytes"] == second.diagnostics.bytes
    assert a2["lifecycle.chunks"] > 0 and a2["lifecycle.chunks"] == second.diagnostics.chunks
    assert "lifecycle.reason" not in a2
    assert second_span.status.status_code == StatusCode.UNSET

    # Transition events: the run span has the whole history, in order and at its times;
    # each attempt span has its own part of it, from its start_attempt on.
    history = [(t.source, t.trigger, t.dest) for t in run.history]
    assert transitions(run_span) == history
    assert [e.timestamp for e in run_span.events] == [wall_ns(run, t.at) for t in run.history]
    split = [i for i, t in enumerate(run.history) if t.trigger == "start_attempt"]
    assert split == [0, split[1]] and len(split) == 2
    assert transitions(first_span) == history[: split[1]]
    assert transitions(second_span) == history[split[1] :]
    assert history[split[1] - 1] == ("cleanup", "finish_cleanup", "falling_back")
    assert any(t.trigger == "stall" and t.dest == "stale" for t in run.history[: split[1]])

    # Times: explicit, from the transitions, children within the parent.
    assert run_span.start_time == round(run.started_at * 1e9)
    assert run_span.end_time == wall_ns(run, run.history[-1].at)
    assert first_span.start_time == wall_ns(run, run.history[0].at)
    assert first_span.end_time == wall_ns(run, run.history[split[1] - 1].at)
    assert second_span.start_time == wall_ns(run, run.history[split[1]].at)
    assert second_span.end_time == run_span.end_time
    assert first_span.start_time is not None and first_span.end_time is not None
    assert second_span.start_time is not None and second_span.end_time is not None
    assert run_span.start_time is not None and run_span.end_time is not None
    assert run_span.start_time <= first_span.start_time < first_span.end_time
    assert first_span.end_time <= second_span.start_time < second_span.end_time
    assert second_span.end_time <= run_span.end_time
    # The completed attempt's span lasts as long as the attempt's own record says.
    assert second.diagnostics.elapsed is not None
    duration = (second_span.end_time - second_span.start_time) / 1e9
    assert duration == pytest.approx(second.diagnostics.elapsed, abs=2e-6)
    # The stale attempt's span covers its stall threshold and its cleanup.
    assert (first_span.end_time - first_span.start_time) / 1e9 >= TIMEOUTS.stale


def test_metrics_of_a_stale_run_that_fell_back(provider: Any, telemetry: Telemetry) -> None:
    run = stale_then_fallback(provider, telemetry)
    first, second = run.attempts
    names = run.route_names
    assert telemetry.counts("lifecycle.attempts", "route", "api_mode", "outcome") == {
        (names[0], provider.api_mode, "stale"): 1,
        (names[1], provider.other_api_mode, "completed"): 1,
    }
    assert telemetry.counts("lifecycle.runs", "outcome") == {("completed",): 1}
    assert telemetry.counts("lifecycle.recoveries") == {(): 1}

    # One recovery: from the stall to the fallback attempt's start, as the attempts'
    # own records measure it (monotonic times, independent of the transition history).
    (point,) = telemetry.points("lifecycle.recovery_latency")
    assert dict(point.attributes) == {"fault": "stale"}
    assert point.count == 1
    assert first.diagnostics.elapsed is not None
    measured = second.started_at - (first.started_at + first.diagnostics.elapsed)
    assert 0 < measured < 1.0
    assert point.sum == pytest.approx(measured, abs=2e-6)
    assert point.min == point.max == point.sum
    # No breaker changed: no breaker metric.
    assert telemetry.points("lifecycle.breaker.transitions") == []
    assert telemetry.points("lifecycle.breaker.state") == []


def test_failed_run_is_an_error_span(provider: Any, telemetry: Telemetry) -> None:
    provider.script([HttpError(status=400), Healthy()])
    engine = provider.engine(timeouts=TIMEOUTS, retry=ONE_EACH, hooks=[telemetry.hooks])
    run, seen = provider.run_to_end(engine)
    assert isinstance(seen.error, StreamFailed), repr(seen.error)
    assert run.state == "failed"
    run_span = telemetry.run_span(run.id)
    assert run_span.status.status_code == StatusCode.ERROR
    assert run_span.status.description is not None and "400" in run_span.status.description
    assert attrs(run_span)["lifecycle.outcome"] == "failed"
    assert attrs(run_span)["lifecycle.attempts"] == 1
    (attempt_span,) = telemetry.attempt_spans(run_span)
    assert attempt_span.parent is not None
    assert attempt_span.parent.span_id == run_span.context.span_id
    a = attrs(attempt_span)
    assert a["lifecycle.outcome"] == "error"
    assert a["http.response.status_code"] == 400
    assert a["lifecycle.request_id"] == f"req_loopback_{provider.requests()[0].index}"
    assert "lifecycle.ttft" not in a and a["lifecycle.chunks"] == 0
    assert attempt_span.status.status_code == StatusCode.ERROR
    assert transitions(run_span) == [(t.source, t.trigger, t.dest) for t in run.history]
    assert run.history[-1].dest == "failed"
    assert telemetry.counts("lifecycle.runs", "outcome") == {("failed",): 1}
    assert telemetry.counts("lifecycle.attempts", "outcome") == {("error",): 1}
    assert telemetry.counts("lifecycle.recoveries") == {}
    assert telemetry.points("lifecycle.recovery_latency") == []


class RaisingHooks(LifecycleHooks):
    """A broken instrumentation: every hook raises."""

    def on_run_start(self, run: Any) -> None:
        raise RuntimeError("broken on_run_start")

    def on_transition(self, run: Any, transition: Any) -> None:
        raise RuntimeError("broken on_transition")

    def on_attempt_end(self, run: Any, attempt: Any) -> None:
        raise RuntimeError("broken on_attempt_end")

    def on_run_end(self, run: Any) -> None:
        raise RuntimeError("broken on_run_end")


def test_a_raising_hook_changes_nothing(
    provider: Any, telemetry: Telemetry, caplog: pytest.LogCaptureFixture
) -> None:
    provider.script([StallAfterEvents(n=1)])
    provider.script([Healthy()], model=provider.other_model)
    engine = provider.engine(
        timeouts=TIMEOUTS, retry=ONE_EACH, hooks=[RaisingHooks(), telemetry.hooks]
    )
    with caplog.at_level(logging.WARNING, logger="lifecycle"):
        run, seen = provider.run_to_end(engine)
    assert seen.error is None, repr(seen.error)
    assert run.state == "completed"
    assert run.message is not None and run.message.text == provider.text_of_other()
    assert [a.outcome for a in run.attempts] == ["stale", "completed"]
    # Each broken method is reported once, however often it raised.
    reported = [r.getMessage() for r in caplog.records if "lifecycle hook" in r.getMessage()]
    assert sorted(reported) == sorted(
        f"lifecycle hook RaisingHooks.{m} raised; ignored (reported once)"
        for m in ("on_run_start", "on_transition", "on_attempt_end", "on_run_end")
    )
    # The hooks after the broken one still saw everything.
    run_span = telemetry.run_span(run.id)
    assert attrs(run_span)["lifecycle.outcome"] == "completed"
    assert [attrs(s)["lifecycle.outcome"] for s in telemetry.attempt_spans(run_span)] == [
        "stale",
        "completed",
    ]


class ExplodingProcessor(SpanProcessor):
    """A telemetry pipeline that fails: every span's end raises."""

    def on_end(self, span: ReadableSpan) -> None:
        raise RuntimeError("exporter down")


@pytest.mark.parametrize("driver", ["sync"])
def test_a_failing_telemetry_backend_changes_nothing(provider: Any) -> None:
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(ExplodingProcessor())
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    hooks = OpenTelemetryHooks(tracer_provider=tracer_provider, meter_provider=meter_provider)
    provider.script([HttpError(status=529), Healthy()])
    retry = RetryPolicy(max_attempts=2, initial_backoff=0, max_backoff=0)
    engine = provider.engine(timeouts=TIMEOUTS, retry=retry, hooks=[hooks])
    run, seen = provider.run_to_end(engine)
    assert seen.error is None, repr(seen.error)
    assert run.state == "completed"
    assert [a.outcome for a in run.attempts] == ["error", "completed"]
    assert hooks._traces == {}  # the run's state was dropped even though its span's end raised
    # Metrics are recorded before the spans end: they survive a broken span pipeline.
    telemetry = Telemetry(hooks, InMemorySpanExporter(), reader, tracer_provider, meter_provider)
    assert telemetry.counts("lifecycle.attempts", "outcome") == {("error",): 1, ("completed",): 1}
    assert telemetry.counts("lifecycle.runs", "outcome") == {("completed",): 1}
    assert telemetry.counts("lifecycle.recoveries") == {(): 1}
    tracer_provider.shutdown()
    meter_provider.shutdown()


def test_breaker_metrics_after_the_breaker_opens(provider: Any, telemetry: Telemetry) -> None:
    provider.script([HttpError(status=529)])
    engine = provider.engine(
        timeouts=TIMEOUTS,
        retry=ONE_EACH,
        with_other=False,
        hooks=[telemetry.hooks],
        # Fail-fast: without it a lone open route is tried anyway (panic mode), and this
        # test is about the span of a run the breaker refuses.
        breaker=BreakerPolicy(failures_to_open=1, cooldown=60, fail_fast_when_all_open=True),
    )
    route = provider.route().name
    run, seen = provider.run_to_end(engine)
    assert isinstance(seen.error, StreamFailed), repr(seen.error)
    assert [a.outcome for a in run.attempts] == ["error"]
    assert engine.breakers()[route].state == "open"
    assert telemetry.counts("lifecycle.breaker.state", "route") == {(route,): 2}
    assert telemetry.counts("lifecycle.breaker.transitions", "route", "dest") == {
        (route, "open"): 1
    }

    # The next run is refused by the open breaker: a failed run span without attempts.
    run2, seen2 = provider.run_to_end(engine)
    assert isinstance(seen2.error, StreamFailed), repr(seen2.error)
    assert run2.attempts == ()
    assert len(provider.requests()) == 1
    run_span = telemetry.run_span(run2.id)
    assert telemetry.attempt_spans(run_span) == []
    assert run_span.status.status_code == StatusCode.ERROR
    assert attrs(run_span)["lifecycle.outcome"] == "failed"
    assert attrs(run_span)["lifecycle.attempts"] == 0
    history = [(t.source, t.trigger, t.dest) for t in run2.history]
    assert transitions(run_span) == history
    assert history[-1][1:] == ("exhaust_routes", "failed")
    assert all(trigger != "start_attempt" for _, trigger, _ in history)
    assert run_span.status.description is not None
    assert "breaker" in run_span.status.description
    assert telemetry.counts("lifecycle.runs", "outcome") == {("failed",): 2}
    assert telemetry.counts("lifecycle.breaker.state", "route") == {(route,): 2}


def test_concurrent_runs_on_threads_each_get_their_own_tree(
    server: Any, make_engine: Any, telemetry: Telemetry
) -> None:
    model = unique_model("anthropic")
    engine = make_engine(
        [make_route("anthropic", server, model)], timeouts=TIMEOUTS, hooks=[telemetry.hooks]
    )
    runs: list[Any] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def one() -> None:
        try:
            with engine.stream(messages=MESSAGES, max_tokens=16) as run:
                for _ in run:
                    pass
            with lock:
                runs.append(run)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one, name=f"otel-run-{i}") for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == [] and len(runs) == 8
    trace_ids = set()
    for run in runs:
        assert run.state == "completed"
        run_span = telemetry.run_span(run.id)
        (attempt_span,) = telemetry.attempt_spans(run_span)
        assert attempt_span.parent is not None
        assert attempt_span.parent.span_id == run_span.context.span_id
        assert transitions(run_span) == [(t.source, t.trigger, t.dest) for t in run.history]
        trace_ids.add(run_span.context.trace_id)
    assert len(trace_ids) == 8
    assert telemetry.counts("lifecycle.runs", "outcome") == {("completed",): 8}
    assert telemetry.counts("lifecycle.attempts", "outcome") == {("completed",): 8}


def test_import_lifecycle_does_not_import_opentelemetry() -> None:
    code = (
        "import sys, lifecycle; "
        "loaded = sorted(m for m in sys.modules if m.startswith('opentelemetry')); "
        "assert not loaded, loaded; "
        "import lifecycle.otel; "
        "assert 'opentelemetry.trace' in sys.modules"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr


# -- OpenTelemetry GenAI semantic conventions ------------------------------------------

PROVIDER_NAME = {"anthropic": "anthropic", "openai": "openai"}
RESPONSE = {
    # What the default recording (text_basic) says of itself: the loopback replays it
    # under any requested model, so request and response models differ, as in real life.
    "anthropic": {
        "id": "msg_4QpJur2dWWDjF6C758FbBw5vm12BaVipnK",
        "model": "claude-3-opus-latest",
        "finish_reasons": ("end_turn",),
        "input_tokens": 11,
        "output_tokens": 6,
    },
    "openai": {
        "id": "chatcmpl-ABfw1e5abtU8OwGr15vOreYVb2MiF",
        "model": "gpt-4o-2024-08-06",
        "finish_reasons": ("stop",),
        "input_tokens": 79,
        "output_tokens": 14,
    },
}
MAX_TOKENS = 64  # conftest.REQUEST's


def other_name(provider: Any) -> str:
    return "openai" if provider.name == "anthropic" else "anthropic"


def gen_ai(span: ReadableSpan) -> dict[str, Any]:
    """The span's attributes of the conventions (everything but ``lifecycle.*`` and the
    HTTP status the lifecycle always set)."""
    return {
        k: tuple(v) if isinstance(v, tuple | list) else v
        for k, v in attrs(span).items()
        if k.startswith(("gen_ai.", "server.", "error."))
    }


def metric(telemetry: Telemetry, name: str) -> Any:
    data = telemetry.metrics.get_metrics_data()
    assert data is not None
    found = [
        m
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for m in scope.metrics
        if m.name == name
    ]
    assert len(found) == 1, name
    return found[0]


def by_attributes(points: list[Any]) -> dict[frozenset[tuple[str, Any]], Any]:
    return {frozenset(dict(p.attributes).items()): p for p in points}


def test_gen_ai_span_attributes_of_a_stale_run_that_fell_back(
    provider: Any, telemetry: Telemetry
) -> None:
    run = stale_then_fallback(provider, telemetry)
    run_span = telemetry.run_span(run.id)
    first_span, second_span = telemetry.attempt_spans(run_span)
    # The convention's client span name, under the lifecycle's run span.
    assert first_span.name == f"chat {provider.model}"
    assert second_span.name == f"chat {provider.other_model}"
    assert first_span.parent is not None and second_span.parent is not None
    assert first_span.parent.span_id == second_span.parent.span_id == run_span.context.span_id
    server = provider.server
    stalled = RESPONSE[provider.name]
    # The stall came after the stream's first event: it told the response's id and model.
    assert gen_ai(first_span) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": PROVIDER_NAME[provider.name],
        "gen_ai.system": PROVIDER_NAME[provider.name],
        "gen_ai.request.model": provider.model,
        "gen_ai.request.max_tokens": MAX_TOKENS,
        "gen_ai.response.id": stalled["id"],
        "gen_ai.response.model": stalled["model"],
        "server.address": "127.0.0.1",
        "server.port": server.port,
        "error.type": "timeout",
    }
    answered = RESPONSE[other_name(provider)]
    assert gen_ai(second_span) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": PROVIDER_NAME[other_name(provider)],
        "gen_ai.system": PROVIDER_NAME[other_name(provider)],
        "gen_ai.request.model": provider.other_model,
        "gen_ai.request.max_tokens": MAX_TOKENS,
        "gen_ai.response.id": answered["id"],
        "gen_ai.response.model": answered["model"],
        "gen_ai.response.finish_reasons": answered["finish_reasons"],
        "gen_ai.usage.input_tokens": answered["input_tokens"],
        "gen_ai.usage.output_tokens": answered["output_tokens"],
        "server.address": "127.0.0.1",
        "server.port": server.port,
    }
    assert run.message is not None and run.message.usage is not None
    assert run.message.usage.output_tokens == answered["output_tokens"]
    # The lifecycle's own attributes stay beside them.
    assert attrs(first_span)["lifecycle.outcome"] == "stale"
    assert attrs(second_span)["lifecycle.outcome"] == "completed"
    # The run span is the lifecycle's, not a GenAI operation.
    assert not any(k.startswith("gen_ai.") for k in attrs(run_span))


def test_gen_ai_metrics_of_a_stale_run_that_fell_back(provider: Any, telemetry: Telemetry) -> None:
    run = stale_then_fallback(provider, telemetry)
    first, second = run.attempts
    port = provider.server.port
    stalled, answered = RESPONSE[provider.name], RESPONSE[other_name(provider)]
    stalled_attributes = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": PROVIDER_NAME[provider.name],
        "gen_ai.system": PROVIDER_NAME[provider.name],
        "gen_ai.request.model": provider.model,
        "gen_ai.response.model": stalled["model"],
        "server.address": "127.0.0.1",
        "server.port": port,
    }
    answered_attributes = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": PROVIDER_NAME[other_name(provider)],
        "gen_ai.system": PROVIDER_NAME[other_name(provider)],
        "gen_ai.request.model": provider.other_model,
        "gen_ai.response.model": answered["model"],
        "server.address": "127.0.0.1",
        "server.port": port,
    }

    duration = metric(telemetry, "gen_ai.client.operation.duration")
    assert duration.unit == "s"
    points = by_attributes(list(duration.data.data_points))
    assert set(points) == {
        frozenset({**stalled_attributes, "error.type": "timeout"}.items()),
        frozenset(answered_attributes.items()),
    }
    stalled_point = points[frozenset({**stalled_attributes, "error.type": "timeout"}.items())]
    answered_point = points[frozenset(answered_attributes.items())]
    assert stalled_point.count == answered_point.count == 1
    assert stalled_point.sum == pytest.approx(first.diagnostics.elapsed, abs=1e-9)
    assert stalled_point.sum >= TIMEOUTS.stale
    assert answered_point.sum == pytest.approx(second.diagnostics.elapsed, abs=1e-9)
    # The convention's advised buckets.
    assert tuple(answered_point.explicit_bounds) == (
        0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
    )  # fmt: skip

    usage = metric(telemetry, "gen_ai.client.token.usage")
    assert usage.unit == "{token}"
    tokens = by_attributes(list(usage.data.data_points))
    assert {key: p.sum for key, p in tokens.items()} == {
        frozenset({**answered_attributes, "gen_ai.token.type": "input"}.items()): answered[
            "input_tokens"
        ],
        frozenset({**answered_attributes, "gen_ai.token.type": "output"}.items()): answered[
            "output_tokens"
        ],
    }
    assert all(p.count == 1 for p in tokens.values())

    # The stall came after one meaningful event: both attempts had a first chunk (the
    # client's metric), only the completed one is a successful response (the server's).
    assert first.diagnostics.ttft is not None and second.diagnostics.ttft is not None
    first_chunk = metric(telemetry, "gen_ai.client.operation.time_to_first_chunk")
    assert first_chunk.unit == "s"
    assert {
        key: (p.count, p.sum)
        for key, p in by_attributes(list(first_chunk.data.data_points)).items()
    } == {
        frozenset({**stalled_attributes, "error.type": "timeout"}.items()): (
            1,
            pytest.approx(first.diagnostics.ttft, abs=1e-9),
        ),
        frozenset(answered_attributes.items()): (
            1,
            pytest.approx(second.diagnostics.ttft, abs=1e-9),
        ),
    }
    first_token = metric(telemetry, "gen_ai.server.time_to_first_token")
    assert first_token.unit == "s"
    (point,) = first_token.data.data_points
    assert dict(point.attributes) == answered_attributes
    assert point.count == 1
    assert point.sum == pytest.approx(second.diagnostics.ttft, abs=1e-9)


def test_gen_ai_telemetry_of_a_failed_run(provider: Any, telemetry: Telemetry) -> None:
    provider.script([HttpError(status=400), Healthy()])
    engine = provider.engine(timeouts=TIMEOUTS, retry=ONE_EACH, hooks=[telemetry.hooks])
    run, seen = provider.run_to_end(engine)
    assert isinstance(seen.error, StreamFailed), repr(seen.error)
    (attempt_span,) = telemetry.attempt_spans(telemetry.run_span(run.id))
    assert attempt_span.name == f"chat {provider.model}"
    common = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": PROVIDER_NAME[provider.name],
        "gen_ai.system": PROVIDER_NAME[provider.name],
        "gen_ai.request.model": provider.model,
        "server.address": "127.0.0.1",
        "server.port": provider.server.port,
        "error.type": "400",  # the provider's own error code, as the convention asks
    }
    # No stream, so no response id, model, finish reason or usage.
    assert gen_ai(attempt_span) == {**common, "gen_ai.request.max_tokens": MAX_TOKENS}
    assert attempt_span.status.status_code == StatusCode.ERROR
    (point,) = metric(telemetry, "gen_ai.client.operation.duration").data.data_points
    assert dict(point.attributes) == common
    assert point.count == 1
    assert point.sum == pytest.approx(run.attempts[0].diagnostics.elapsed, abs=1e-9)
    for name in (
        "gen_ai.client.token.usage",
        "gen_ai.server.time_to_first_token",
        "gen_ai.client.operation.time_to_first_chunk",
    ):
        assert telemetry.points(name) == [], name


def test_names_are_the_semantic_conventions() -> None:
    """Every name emitted is the one the conventions' own package defines."""
    from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as ga
    from opentelemetry.semconv._incubating.metrics import gen_ai_metrics as gm
    from opentelemetry.semconv.attributes import error_attributes, server_attributes

    from lifecycle._observe import otel

    assert otel.GEN_AI_OPERATION_NAME == ga.GEN_AI_OPERATION_NAME
    assert otel.GEN_AI_PROVIDER_NAME == ga.GEN_AI_PROVIDER_NAME
    assert otel.GEN_AI_SYSTEM == ga.GEN_AI_SYSTEM
    assert otel.GEN_AI_REQUEST_MODEL == ga.GEN_AI_REQUEST_MODEL
    assert otel.GEN_AI_REQUEST_MAX_TOKENS == ga.GEN_AI_REQUEST_MAX_TOKENS
    assert otel.GEN_AI_RESPONSE_ID == ga.GEN_AI_RESPONSE_ID
    assert otel.GEN_AI_RESPONSE_MODEL == ga.GEN_AI_RESPONSE_MODEL
    assert otel.GEN_AI_RESPONSE_FINISH_REASONS == ga.GEN_AI_RESPONSE_FINISH_REASONS
    assert otel.GEN_AI_USAGE_INPUT_TOKENS == ga.GEN_AI_USAGE_INPUT_TOKENS
    assert otel.GEN_AI_USAGE_OUTPUT_TOKENS == ga.GEN_AI_USAGE_OUTPUT_TOKENS
    assert otel.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS == ga.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS
    assert (
        otel.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS == ga.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS
    )
    assert otel.GEN_AI_TOKEN_TYPE == ga.GEN_AI_TOKEN_TYPE
    assert otel.SERVER_ADDRESS == server_attributes.SERVER_ADDRESS
    assert otel.SERVER_PORT == server_attributes.SERVER_PORT
    assert otel.ERROR_TYPE == error_attributes.ERROR_TYPE
    assert otel.OPERATION_DURATION == gm.GEN_AI_CLIENT_OPERATION_DURATION
    assert otel.TOKEN_USAGE == gm.GEN_AI_CLIENT_TOKEN_USAGE
    assert otel.TIME_TO_FIRST_TOKEN == gm.GEN_AI_SERVER_TIME_TO_FIRST_TOKEN
    assert otel.TIME_TO_FIRST_CHUNK == gm.GEN_AI_CLIENT_OPERATION_TIME_TO_FIRST_CHUNK
    assert ga.GenAiOperationNameValues.CHAT.value == "chat"
    assert {otel.provider_name(m) for m in ("anthropic_messages",)} == {
        ga.GenAiProviderNameValues.ANTHROPIC.value
    }
    assert {otel.provider_name(m) for m in ("chat_completions", "responses")} == {
        ga.GenAiProviderNameValues.OPENAI.value
    }


def test_the_otel_extra_is_the_api_only() -> None:
    """An application installs ``stream-lifecycle[otel]`` beside its own SDK and exporters:
    the extra must not pull in (or pin) an SDK; the tests get theirs from ``test``."""
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    extras = project["project"]["optional-dependencies"]
    assert [r.split(">")[0].split("=")[0] for r in extras["otel"]] == ["opentelemetry-api"]
    assert any(r.startswith("opentelemetry-sdk") for r in extras["test"])


def test_the_hooks_run_on_the_api_alone() -> None:
    """With the SDK unimportable, the hooks still build and take a whole run's calls
    (the API's no-op providers)."""
    code = """
import sys
class NoSdk:
    def find_spec(self, name, path=None, target=None):
        if name == "opentelemetry.sdk" or name.startswith("opentelemetry.sdk."):
            raise ImportError("no SDK here")
sys.meta_path.insert(0, NoSdk())
import anthropic
from lifecycle import StreamEngine
from lifecycle.otel import OpenTelemetryHooks
from providers import AnthropicMessages
from providers.loopback import LoopbackServer
with LoopbackServer() as server:
    route = AnthropicMessages(
        lambda: anthropic.Anthropic(base_url=server.anthropic_base_url, api_key="test"),
        model="claude-api-only",
    )
    with StreamEngine(routes=[route], hooks=[OpenTelemetryHooks()]) as engine:
        with engine.stream(messages=[{"role": "user", "content": "Hi"}], max_tokens=16) as run:
            for _ in run:
                pass
    assert run.state == "completed", run.state
assert not [m for m in sys.modules if m.startswith("opentelemetry.sdk")]
print("ok")
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_gen_ai_attributes_of_a_responses_api_run(
    server: Any, telemetry: Telemetry, is_async: bool
) -> None:
    """The third wire API: its response id and model come from ``response.created``."""
    import asyncio

    import openai

    from lifecycle import StreamEngine
    from providers import OpenAIResponses

    model = unique_model("openai")
    server.script(model, [Healthy()])
    factory: Any = openai.AsyncOpenAI if is_async else openai.OpenAI
    route = OpenAIResponses(
        lambda: factory(
            base_url=server.openai_base_url,
            api_key="test",
            default_headers={"x-loopback-key": model},
        ),
        model=model,
    )
    with StreamEngine(routes=[route], timeouts=TIMEOUTS, hooks=[telemetry.hooks]) as engine:
        if is_async:

            async def consume() -> Any:
                async with engine.astream(messages=MESSAGES, max_tokens=50) as run:
                    async for _ in run:
                        pass
                return run

            run = asyncio.run(consume())
        else:
            with engine.stream(messages=MESSAGES, max_tokens=50) as run:
                for _ in run:
                    pass
    assert run.state == "completed"
    (span,) = telemetry.attempt_spans(telemetry.run_span(run.id))
    assert span.name == f"chat {model}"
    assert run.message is not None and run.message.usage is not None
    assert gen_ai(span) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.system": "openai",
        "gen_ai.request.model": model,
        "gen_ai.request.max_tokens": 50,
        "gen_ai.response.id": "resp_loopback_0001",
        "gen_ai.response.model": "gpt-4o-2024-08-06",
        # The provider's own word (the response's status), not the neutral "stop".
        "gen_ai.response.finish_reasons": ("completed",),
        "gen_ai.usage.input_tokens": run.message.usage.input_tokens,
        "gen_ai.usage.output_tokens": 10,
        "gen_ai.usage.cache_read.input_tokens": 0,
        "server.address": "127.0.0.1",
        "server.port": server.port,
    }


def test_gen_ai_usage_of_a_cached_anthropic_turn(server: Any, telemetry: Telemetry) -> None:
    """Cache counts are recorded beside input_tokens, which includes them (the
    conventions' rule), and the finish reason is Anthropic's own word."""
    import anthropic

    from lifecycle import StreamEngine
    from providers import AnthropicMessages

    model = unique_model("anthropic")
    server.script(model, [Healthy(recording="thinking_tool_use")])
    route = AnthropicMessages(
        lambda: anthropic.Anthropic(base_url=server.anthropic_base_url, api_key="test"),
        model=model,
    )
    with (
        StreamEngine(routes=[route], timeouts=TIMEOUTS, hooks=[telemetry.hooks]) as engine,
        engine.stream(messages=MESSAGES, max_tokens=50) as run,
    ):
        for _ in run:
            pass
    assert run.state == "completed"
    (span,) = telemetry.attempt_spans(telemetry.run_span(run.id))
    attributes = gen_ai(span)
    assert attributes["gen_ai.response.finish_reasons"] == ("tool_use",)
    assert attributes["gen_ai.usage.input_tokens"] == 24 + 3500 + 1200
    assert attributes["gen_ai.usage.cache_read.input_tokens"] == 3500
    assert attributes["gen_ai.usage.cache_creation.input_tokens"] == 1200
