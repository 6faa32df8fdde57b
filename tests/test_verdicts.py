"""What each fault class tells the route's breaker, and what the run does next: one table.

``VERDICTS`` is the spec, a row per fault class, after README's "What each failure
means" (statuses, transports, clocks, the stream's shape, the caller's own acts):

- ``outcome``: the attempt record's outcome;
- ``counts``: what ``verdict_of`` tells the route's breaker: ``failure`` (a stale or
  dropped verdict: it counts towards ``failures_to_open``), ``success`` (resets the
  count) or ``nothing`` (neutral: the route is not judged);
- ``then``: what the run does after the attempt's cleanup: ``retry`` on the route,
  ``fallback`` to the next route, ``fail`` fast, ``cancelled`` (or ``completed``).

Two tests read it. One feeds the pure ``RunCore`` the fault as the classifiers make it
(``providers._sdk.classify``, the adapters' ``classify``, ``lifecycle._shared``) and checks
the decision and the verdict. The other runs each row for real, with both providers and
both drivers, on a two-route engine whose breakers open at the first failure: a row that
counts must leave the next run skipping route 0, one that does not must leave it on
route 0. A caller's error charged to a route would refuse the next run its first route.
"""

from __future__ import annotations

import json
import random
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

import anthropic
import openai
import pytest
from conftest import ProviderKit
from test_route_faults import keyless_factory

from lifecycle import BreakerPolicy, Interrupted, MissingCredentials, RetryPolicy, Timeouts
from lifecycle._core.errors import client_build_fault, truncated_fault
from lifecycle._core.events import (
    AttemptFailed,
    AttemptStarted,
    CleanupFinished,
    FirstEventReceived,
    InterruptRequested,
    LifecycleEvent,
    StallDetected,
    StreamFinished,
)
from lifecycle._core.machine import RouteInfo, RunCore
from lifecycle._health.route_health import verdict_of
from lifecycle.adapters import Route
from providers import AnthropicMessages, OpenAIChatCompletions
from providers._sdk.classify import status_fault
from providers.loopback import (
    DropAfterEvents,
    Healthy,
    HttpError,
    MalformedEvent,
    RawResponse,
    StallAfterEvents,
    StallAfterHeaders,
    recordings,
)

try:  # the SDKs' HTTP library: httpx2 for anthropic 2.x / openai 3.x, httpx before
    import httpx2 as httpx  # type: ignore[import-not-found]
except ImportError:
    import httpx  # type: ignore[no-redef]

pytestmark = pytest.mark.timeout(60)

Counts = Literal["failure", "success", "nothing"]
Then = Literal["retry", "fallback", "fail", "cancelled", "completed"]
Outcome = Literal["completed", "stale", "dropped", "error", "interrupted", "deadline"]

# Causes that are not one loopback fault script: what the test does instead.
REFUSED: Final = "connect to a closed port"
TRUNCATED: Final = "a 200 stream that ends cleanly after one text event, without a stop"
HOLD_PAST_TOTAL: Final = "the caller holds the first event past Timeouts.total"
INTERRUPT: Final = "run.interrupt() from another thread while the provider is silent"
KEYLESS: Final = "a client factory without an API key, none in the environment"

Cause = HttpError | DropAfterEvents | StallAfterHeaders | StallAfterEvents | MalformedEvent
Cause = Cause | Healthy | str

QUICK: Final = Timeouts(connect=5, first_token=5, stale=5, total=30)
STALL: Final = Timeouts(connect=5, first_token=0.4, stale=0.4, total=30)
SHORT_TOTAL: Final = Timeouts(connect=1, first_token=1, stale=1, total=1)
HOLD: Final = 1.6
"""How long the caller holds the first event in the ``HOLD_PAST_TOTAL`` row."""
RETRY_AFTER: Final = 0.2


@dataclass(frozen=True, kw_only=True, slots=True)
class Verdict:
    name: str
    cause: Cause
    outcome: Outcome
    counts: Counts
    then: Then
    timeouts: Timeouts = QUICK


def _status(status: int, counts: Counts, then: Then, **headers: str) -> Verdict:
    suffix = "".join(f" with {name}" for name in headers)
    return Verdict(
        name=f"HTTP {status}{suffix}",
        cause=HttpError(status=status, headers=tuple(headers.items())),
        outcome="error",
        counts=counts,
        then=then,
    )


VERDICTS: Final[tuple[Verdict, ...]] = (
    # the request itself is wrong: fail fast, and the route is not to blame
    _status(400, "nothing", "fail"),
    _status(413, "nothing", "fail"),
    _status(422, "nothing", "fail"),
    # this provider's credentials, account or model name: the next route, at once
    _status(401, "failure", "fallback"),
    _status(402, "failure", "fallback"),
    _status(403, "failure", "fallback"),
    _status(404, "failure", "fallback"),
    # transient on this provider: retried on the route
    _status(408, "failure", "retry"),
    _status(409, "failure", "retry"),
    _status(429, "failure", "retry"),
    _status(429, "failure", "retry", **{"retry-after": str(RETRY_AFTER)}),
    _status(500, "failure", "retry"),
    _status(502, "failure", "retry"),
    _status(503, "failure", "retry"),
    _status(504, "failure", "retry"),
    _status(529, "failure", "retry"),
    # the connection, not the request
    Verdict(
        name="connection refused", cause=REFUSED, outcome="dropped", counts="failure", then="retry"
    ),
    Verdict(
        name="connection reset mid-stream",
        cause=DropAfterEvents(n=1),
        outcome="dropped",
        counts="failure",
        then="retry",
    ),
    # the clocks on the provider: a stall is the provider's, and a retry would cost a whole
    # budget again, so the next route runs at once (retried here only on the last route)
    Verdict(
        name="no first token within Timeouts.first_token",
        cause=StallAfterHeaders(),
        outcome="stale",
        counts="failure",
        then="fallback",
        timeouts=STALL,
    ),
    Verdict(
        name="no next event within Timeouts.stale",
        cause=StallAfterEvents(n=1),
        outcome="stale",
        counts="failure",
        then="fallback",
        timeouts=STALL,
    ),
    # the stream's shape
    Verdict(
        name="truncated stream", cause=TRUNCATED, outcome="dropped", counts="failure", then="retry"
    ),
    Verdict(
        name="malformed event",
        cause=MalformedEvent(after_events=1),
        outcome="dropped",
        counts="failure",
        then="retry",
    ),
    # the caller's own budget and acts judge no route
    Verdict(
        name="Timeouts.total deadline",
        cause=HOLD_PAST_TOTAL,
        outcome="deadline",
        counts="nothing",
        then="fail",
        timeouts=SHORT_TOTAL,
    ),
    Verdict(
        name="interrupt", cause=INTERRUPT, outcome="interrupted", counts="nothing", then="cancelled"
    ),
    # this route cannot run at all
    Verdict(
        name="a route without credentials (MissingCredentials)",
        cause=KEYLESS,
        outcome="dropped",
        counts="failure",
        then="fallback",
    ),
    Verdict(
        name="completed", cause=Healthy(), outcome="completed", counts="success", then="completed"
    ),
)

RETRY: Final = RetryPolicy(max_attempts=2, initial_backoff=0.0, max_backoff=0.0, jitter=0.0)
BREAKER: Final = BreakerPolicy(failures_to_open=1, cooldown=60)
COUNTS_OF: Final[dict[str, Counts]] = {
    "success": "success",
    "stale": "failure",
    "dropped": "failure",
    "neutral": "nothing",
}
THEN_OF: Final[dict[str, Then]] = {
    "retrying": "retry",
    "falling_back": "fallback",
    "failed": "fail",
    "cancelled": "cancelled",
}


def _ids(rows: tuple[Verdict, ...]) -> list[str]:
    return [row.name for row in rows]


def test_the_table_has_a_row_per_fault_class() -> None:
    statuses = sorted({row.cause.status for row in VERDICTS if isinstance(row.cause, HttpError)})
    assert statuses == [400, 401, 402, 403, 404, 408, 409, 413, 422, 429, 500, 502, 503, 504, 529]
    assert len({row.name for row in VERDICTS}) == len(VERDICTS)


# -- (a) the pure machine and policy --------------------------------------------------------


def _route(provider: str) -> Route:
    cls = AnthropicMessages if provider == "anthropic" else OpenAIChatCompletions
    return cls(lambda: None, model=f"{provider}-verdicts")


def core_events(row: Verdict, route: Route, at: float) -> list[LifecycleEvent]:
    """What a driver feeds the core for ``row``'s attempt, its fault classified by the
    same code the drivers call (the adapter's ``classify``, ``_classify``, ``_shared``)."""
    started: list[LifecycleEvent] = [AttemptStarted(at=at, route_index=0)]
    progressed = [*started, FirstEventReceived(at=at + 0.01)]
    cause, end = row.cause, at + 0.1
    if isinstance(cause, HttpError):
        fault = status_fault(
            cause.status,
            api_mode=route.api_mode,
            message="from the table",
            headers=dict(cause.headers),
        )
        return [*started, AttemptFailed(at=end, fault=fault)]
    if cause == REFUSED:
        refused = httpx.ConnectError("[Errno 111] Connection refused")
        return [*started, AttemptFailed(at=end, fault=route.classify(refused))]
    if isinstance(cause, DropAfterEvents):
        reset = httpx.ReadError("[Errno 104] Connection reset by peer")
        return [*progressed, AttemptFailed(at=end, fault=route.classify(reset))]
    if isinstance(cause, StallAfterHeaders):
        return [*started, StallDetected(at=end, clock="first_token", deadline=end)]
    if isinstance(cause, StallAfterEvents):
        return [*progressed, StallDetected(at=end, clock="stale", deadline=end)]
    if cause == TRUNCATED:
        return [*progressed, AttemptFailed(at=end, fault=truncated_fault(route))]
    if isinstance(cause, MalformedEvent):
        try:
            json.loads("{not json")
        except json.JSONDecodeError as exc:
            return [*progressed, AttemptFailed(at=end, fault=route.classify(exc))]
    if cause == HOLD_PAST_TOTAL:
        return [*progressed, StallDetected(at=end, clock="total", deadline=end)]
    if cause == INTERRUPT:
        return [*started, InterruptRequested(at=end)]
    if cause == KEYLESS:
        missing = MissingCredentials(f"{route.name}: set the API key")
        return [*started, AttemptFailed(at=end, fault=client_build_fault(route, missing))]
    assert isinstance(cause, Healthy), cause
    return [*progressed, StreamFinished(at=end)]


@pytest.mark.parametrize("api", ["anthropic", "openai"])
@pytest.mark.parametrize("row", VERDICTS, ids=_ids(VERDICTS))
def test_the_policy_decides_and_judges_each_fault_class(row: Verdict, api: str) -> None:
    route = _route(api)
    routes = [RouteInfo(api_mode=route.api_mode, model=route.model, target=route)] * 2
    started_at = 1000.0
    core = RunCore(
        routes=routes,
        timeouts=row.timeouts,
        retry=RETRY,
        started_at=started_at,
        rng=random.Random(0),
    )
    for event in core_events(row, route, started_at):
        core.feed(event)
    attempt = core.active_attempt
    assert attempt.outcome == row.outcome, attempt.reason
    if not core.is_final:
        core.feed(CleanupFinished(at=started_at + 0.2))
        assert core.decision is not None
        then = THEN_OF[core.state]
        expected_route = 1 if row.then == "fallback" else 0
        assert (then, core.decision.route_index) == (row.then, expected_route), core.decision
        if row.then == "retry":
            retry_after = (
                dict(row.cause.headers).get("retry-after")
                if isinstance(row.cause, HttpError)
                else None
            )
            # zero backoff: any delay is the provider's Retry-After
            assert core.decision.delay == (float(retry_after) if retry_after else 0.0)
    else:
        assert core.state == row.then
    fault = None if attempt.outcome == "completed" else core.last_fault
    verdict = verdict_of(attempt.outcome or "interrupted", fault)
    assert COUNTS_OF[verdict] == row.counts, (verdict, fault)


# -- (b) end to end: real SDKs over the loopback server, both drivers --------------------


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def refused_factory(kit: ProviderKit) -> Callable[[], Any]:
    base = f"http://127.0.0.1:{_closed_port()}"
    if kit.name == "anthropic":
        anthropic_cls: Any = anthropic.AsyncAnthropic if kit.is_async else anthropic.Anthropic
        return lambda: anthropic_cls(base_url=base, api_key="test")
    openai_cls: Any = openai.AsyncOpenAI if kit.is_async else openai.OpenAI
    return lambda: openai_cls(base_url=f"{base}/v1", api_key="test")


def truncated_response(provider: str) -> RawResponse:
    blocks = recordings.load(provider, "text_basic").prefix(1)  # type: ignore[arg-type]
    return RawResponse(
        headers=(("content-type", "text/event-stream"),),
        body=b"".join(block.raw for block in blocks),
        end="complete",
    )


@pytest.mark.parametrize("row", VERDICTS, ids=_ids(VERDICTS))
def test_each_fault_class_end_to_end_and_the_next_run(
    row: Verdict, provider: ProviderKit, monkeypatch: pytest.MonkeyPatch
) -> None:
    cause = row.cause
    if cause == KEYLESS:
        for name in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "ANTHROPIC_AUTH_TOKEN"):
            monkeypatch.delenv(name, raising=False)
        first = provider.route(factory=keyless_factory(provider.name, provider))
    elif cause == REFUSED:
        first = provider.route(factory=refused_factory(provider))
    else:
        first = provider.route()
    engine = provider.make_engine(
        [first, provider.other_route()], timeouts=row.timeouts, retry=RETRY, breaker=BREAKER
    )
    if cause == TRUNCATED:
        provider.script([truncated_response(provider.name)])
    elif not isinstance(cause, str):
        provider.script([cause])
    elif cause == INTERRUPT:
        provider.script([StallAfterHeaders()])
    elif cause == HOLD_PAST_TOTAL:
        # A healthy stream, paced so that its end is still on the wire when the hold ends.
        provider.script([Healthy(drip=0.6)])
    # else: the route cannot reach the server

    held: list[bool] = []

    def hold_first_event(event: Any) -> float | None:
        if cause != HOLD_PAST_TOTAL or held:
            return None
        held.append(True)
        return HOLD

    run, seen = provider.run_to_end(
        engine, hold_first_event, interrupt_after=0.3 if cause == INTERRUPT else None
    )
    first_attempt = run.attempts[0]
    assert (first_attempt.route_index, first_attempt.outcome) == (0, row.outcome), (
        first_attempt.reason
    )
    after_cleanup = [t.dest for t in run.history if t.source == "cleanup"]
    if row.then == "completed":
        assert run.state == "completed" and after_cleanup == []
    else:
        assert THEN_OF[after_cleanup[0]] == row.then, [str(t) for t in run.history]
    if row.then == "cancelled":
        assert isinstance(seen.error, Interrupted), repr(seen.error)

    status = engine.breakers()[first.name]
    counted = row.counts == "failure"
    assert (status.state, status.failures) == (("open", 1) if counted else ("closed", 0)), status

    # The next run: route 0 refused by its open breaker exactly when the row counted.
    next_run, next_seen = provider.run_to_end(engine)
    assert next_seen.error is None, repr(next_seen.error)
    assert next_run.state == "completed"
    assert next_run.attempts[0].route_index == (1 if counted else 0), next_run.attempts
    skipped = [t for t in next_run.history if t.trigger == "skip_route"]
    assert len(skipped) == (1 if counted else 0), [str(t) for t in next_run.history]
