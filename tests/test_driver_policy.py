"""Retry, fallback and fail-fast decisions end to end, diagnostics and the log line, with
both drivers."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from lifecycle import RetryPolicy, StreamFailed, Timeouts
from providers.loopback import Healthy, HttpError

pytestmark = pytest.mark.timeout(30)

TIMEOUTS = Timeouts(connect=5, first_token=5, stale=5, total=30)
QUICK = RetryPolicy(max_attempts=2, initial_backoff=0.01, max_backoff=0.02)
STANDARD = set(vars(logging.makeLogRecord({})))


def attempt_end(attempt: Any) -> float:
    assert attempt.diagnostics.elapsed is not None
    return float(attempt.started_at + attempt.diagnostics.elapsed)


def test_overloaded_twice_falls_back_to_the_next_route(provider: Any) -> None:
    engine = provider.engine(timeouts=TIMEOUTS, retry=QUICK)
    provider.script([HttpError(status=529), HttpError(status=529)])
    run, seen = provider.run_to_end(engine)
    assert seen.error is None, repr(seen.error)
    assert run.state == "completed"
    assert [(a.route_index, a.outcome) for a in run.attempts] == [
        (0, "error"),
        (0, "error"),
        (1, "completed"),
    ]
    assert [a.diagnostics.http_status for a in run.attempts] == [529, 529, 200]
    assert run.attempts[2].api_mode == provider.other_api_mode
    assert run.message is not None
    assert run.message.api_mode == provider.other_api_mode
    assert run.message.text == provider.text_of_other()
    assert "restart" not in seen.types  # nothing was delivered before the fallback
    assert len(provider.requests()) == 2
    assert len(provider.requests(provider.other_model)) == 1
    path = [t.dest for t in run.history]
    assert path.count("retrying") == 1 and path.count("falling_back") == 1


def test_request_error_fails_fast(provider: Any) -> None:
    engine = provider.engine(timeouts=TIMEOUTS, retry=RetryPolicy(max_attempts=3))
    provider.script([HttpError(status=400), Healthy()])
    run, seen = provider.run_to_end(engine)
    error = seen.error
    assert isinstance(error, StreamFailed), repr(error)
    assert run.state == "failed"
    assert len(run.attempts) == 1
    assert len(provider.requests()) == 1
    assert provider.requests(provider.other_model) == []
    assert provider.clients(provider.other_route()).built_count == 0
    assert error.http_status == 400
    assert error.retryable is False and error.fallback_eligible is False
    assert error.api_mode == provider.api_mode
    assert error.request_id == f"req_loopback_{provider.requests()[0].index}"
    assert "400" in str(error)
    assert error.partial_message is None


def test_retry_after_is_honoured_above_max_backoff(provider: Any) -> None:
    retry = RetryPolicy(max_attempts=2, initial_backoff=0.01, max_backoff=0.05, jitter=0.0)
    engine = provider.engine(timeouts=TIMEOUTS, retry=retry)
    provider.script([HttpError(status=429, headers=(("retry-after", "1"),)), Healthy()])
    run, seen = provider.run_to_end(engine)
    assert seen.error is None, repr(seen.error)
    first, second = run.attempts
    assert (first.route_index, second.route_index) == (0, 0)
    assert first.diagnostics.http_status == 429
    assert second.started_at - attempt_end(first) >= 1.0
    sent = provider.requests()
    assert len(sent) == 2
    assert sent[1].received_at - sent[0].received_at >= 1.0


@pytest.mark.parametrize("status", [401, 403, 404])
def test_route_error_moves_to_the_next_route_at_once(provider: Any, status: int) -> None:
    # A retry on the same route would have to wait 2 s first.
    retry = RetryPolicy(max_attempts=3, initial_backoff=2.0, max_backoff=2.0, jitter=0.0)
    engine = provider.engine(timeouts=TIMEOUTS, retry=retry)
    provider.script([HttpError(status=status), Healthy()])
    run, seen = provider.run_to_end(engine)
    assert seen.error is None, repr(seen.error)
    assert [(a.route_index, a.outcome) for a in run.attempts] == [(0, "error"), (1, "completed")]
    assert run.attempts[0].diagnostics.http_status == status
    assert run.attempts[1].started_at - attempt_end(run.attempts[0]) < 1.0
    assert len(provider.requests()) == 1
    assert [t.dest for t in run.history].count("retrying") == 0


def test_diagnostics_of_a_completed_attempt(provider: Any) -> None:
    engine = provider.engine(timeouts=TIMEOUTS, retry=QUICK)
    run, seen = provider.run_to_end(engine)
    assert seen.error is None
    (attempt,) = run.attempts
    diag = attempt.diagnostics
    (request,) = provider.requests()
    assert diag.http_status == 200
    assert diag.ttfb is not None and diag.ttft is not None
    assert 0 < diag.ttfb <= diag.ttft < 5
    assert diag.bytes > 0
    assert diag.chunks == len(seen.events)
    assert diag.elapsed is not None and diag.ttft <= diag.elapsed < 5
    assert diag.headers.get(provider.request_id_header) == f"req_loopback_{request.index}"
    assert diag.cleanup == []
    assert attempt.model == provider.model and attempt.api_mode == provider.api_mode
    assert run.message is not None
    assert run.message.stop_reason is not None
    assert run.message.usage is not None


def test_diagnostics_of_a_failed_attempt(provider: Any) -> None:
    engine = provider.engine(timeouts=TIMEOUTS, retry=QUICK)
    provider.script([HttpError(status=529), Healthy()])
    run, _ = provider.run_to_end(engine)
    failed = run.attempts[0]
    diag = failed.diagnostics
    assert failed.outcome == "error"
    assert diag.http_status == 529
    assert diag.ttfb is not None and diag.ttfb > 0
    assert diag.ttft is None
    assert diag.bytes > 0
    assert diag.chunks == 0
    assert diag.elapsed is not None and diag.elapsed > 0
    assert diag.error_type
    assert diag.cause_chain and "529" in diag.cause_chain[0]
    assert {s.step for s in diag.cleanup} >= {"abort", "close", "rebuild"}
    assert all(s.thread == provider.owner for s in diag.cleanup), diag.cleanup


def test_failed_attempt_keeps_the_request_id(provider: Any) -> None:
    """The request id of an error response is what the provider's support asks for; it is
    kept under the provider's own header name, as for a completed attempt."""
    engine = provider.engine(timeouts=TIMEOUTS, retry=QUICK)
    provider.script([HttpError(status=529), Healthy()])
    run, _ = provider.run_to_end(engine)
    request_record = provider.requests()[0]
    headers = run.attempts[0].diagnostics.headers
    expected = f"req_loopback_{request_record.index}"
    assert headers.get(provider.request_id_header) == expected, headers


def log_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Each lifecycle log record as one text: its message and its fields (``extra``)."""
    return [
        json.dumps(
            {"message": r.getMessage(), **{k: v for k, v in vars(r).items() if k not in STANDARD}},
            default=str,
        )
        for r in caplog.records
        if r.name == "lifecycle"
    ]


def test_one_structured_log_record_per_failed_attempt(
    provider: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lifecycle")
    engine = provider.engine(timeouts=TIMEOUTS, retry=QUICK)
    provider.script([HttpError(status=529), HttpError(status=529)])
    _, seen = provider.run_to_end(engine)
    assert seen.error is None
    lines = log_lines(caplog)
    assert len(lines) == 2, lines
    assert {r.levelno for r in caplog.records if r.name == "lifecycle"} == {logging.INFO}
    for number, line in enumerate(lines, start=1):
        record = json.loads(line)
        assert record["attempt"] == number
        assert record["api_mode"] == provider.api_mode
        assert record["model"] == provider.model
        assert record["outcome"] == "error"
        assert record["http_status"] == 529
        assert record["reason"]
        assert {step[0] for step in record["cleanup"]} >= {"close", "rebuild"}
        lowered = line.lower()
        assert "test" not in lowered  # the API key of every client here
        assert "authorization" not in lowered
        assert "x-api-key" not in lowered
        assert "bearer" not in lowered


def test_secrets_echoed_by_the_provider_are_redacted(
    provider: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Providers echo (part of) a rejected key in their error message; it must not reach
    the log line, the attempt records or the exception."""
    secret = "sk-ant-api03-Zq8XwV3nK7pL2mR9tY4uB6cD1eF5gH0j"
    caplog.set_level(logging.WARNING, logger="lifecycle")
    provider.route(api_key=secret)
    engine = provider.make_engine(
        [provider.route()], timeouts=TIMEOUTS, retry=RetryPolicy(max_attempts=1)
    )
    body = json.dumps(
        {
            "type": "error",
            "error": {
                "type": "authentication_error",
                "message": f"Incorrect API key provided: {secret}. Authorization: Bearer {secret}",
            },
        }
    )
    provider.script([HttpError(status=401, body=body)])
    run, seen = provider.run_to_end(engine)
    assert isinstance(seen.error, StreamFailed)
    lines = log_lines(caplog)
    assert len(lines) == 1
    texts = [
        *lines,
        str(seen.error),
        json.dumps([a.as_dict() for a in run.attempts], default=str),
        repr(seen.error.fault),
    ]
    for text in texts:
        assert secret not in text
        assert secret[:20] not in text
