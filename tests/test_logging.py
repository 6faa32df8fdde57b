"""The ``lifecycle`` logger's records, end to end over the loopback server with both
providers and both drivers: fields travel as attributes of the ``LogRecord`` (``extra``),
never as JSON inside the message; a failed attempt the run recovered from is INFO, a run
that failed is WARNING, and nothing a provider echoes of a key reaches a field."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from lifecycle import RetryPolicy, StreamFailed, Timeouts
from providers.loopback import Healthy, HttpError, StallAfterEvents

pytestmark = pytest.mark.timeout(60)

TIMEOUTS = Timeouts(connect=5, first_token=0.5, stale=0.5, total=30)
ONE_EACH = RetryPolicy(max_attempts=1, initial_backoff=0, max_backoff=0)
QUICK = RetryPolicy(max_attempts=2, initial_backoff=0.01, max_backoff=0.02)
STANDARD = set(vars(logging.makeLogRecord({})))
"""Attributes every LogRecord has: what is left are the record's own fields."""


def lifecycle_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "lifecycle"]


def fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in STANDARD and k != "message"}


def test_a_recovered_attempt_logs_at_info_with_its_fields(
    provider: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="lifecycle")
    provider.script([StallAfterEvents(n=1)])
    provider.script([Healthy()], model=provider.other_model)
    engine = provider.engine(timeouts=TIMEOUTS, retry=ONE_EACH)
    run, seen = provider.run_to_end(engine)
    assert seen.error is None and run.state == "completed"
    (record,) = lifecycle_records(caplog)
    assert record.levelno == logging.INFO
    stale = run.attempts[0]
    assert fields(record) == {
        "run_id": run.id,
        "route": run.route_names[0],
        **stale.as_dict(),
    }
    assert record.outcome == "stale"  # type: ignore[attr-defined]
    assert record.attempt == 1  # type: ignore[attr-defined]
    assert record.api_mode == provider.api_mode  # type: ignore[attr-defined]
    assert "Timeouts.stale" in record.reason  # type: ignore[attr-defined]
    message = record.getMessage()
    assert "{" not in message and "stale" in message and run.route_names[0] in message
    assert "falls back" in message or "retries" in message, message


def test_a_failed_run_logs_at_warning_once(provider: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="lifecycle")
    provider.script([HttpError(status=529), HttpError(status=529)])
    engine = provider.engine(timeouts=TIMEOUTS, retry=QUICK, with_other=False)
    run, seen = provider.run_to_end(engine)
    assert isinstance(seen.error, StreamFailed), repr(seen.error)
    records = lifecycle_records(caplog)
    assert [r.levelno for r in records] == [logging.INFO, logging.WARNING]
    retried, failed = records
    first, last = run.attempts
    # The retried attempt: INFO, its own record's fields.
    assert fields(retried) == {"run_id": run.id, "route": run.route_names[0], **first.as_dict()}
    assert retried.http_status == 529  # type: ignore[attr-defined]
    assert {step[0] for step in retried.cleanup} >= {"close", "rebuild"}  # type: ignore[attr-defined]
    # The run: WARNING, the run's fields and its last attempt's.
    assert fields(failed) == {
        **last.as_dict(),
        "run_id": run.id,
        "route": run.route_names[0],
        "state": "failed",
        "attempts": 2,
        "reason": str(seen.error),
    }
    assert failed.outcome == "error" and failed.attempt == 2  # type: ignore[attr-defined]
    for record in records:
        assert "{" not in record.getMessage(), record.getMessage()
    assert "failed" in failed.getMessage() and run.id in failed.getMessage()


def test_a_completed_run_without_faults_logs_nothing(
    provider: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="lifecycle")
    provider.script([Healthy()])
    run, seen = provider.run_to_end(provider.engine(timeouts=TIMEOUTS))
    assert seen.error is None and run.state == "completed"
    assert lifecycle_records(caplog) == []


def test_secrets_echoed_by_the_provider_stay_out_of_the_fields(
    provider: Any, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "sk-ant-api03-Zq8XwV3nK7pL2mR9tY4uB6cD1eF5gH0j"
    caplog.set_level(logging.DEBUG, logger="lifecycle")
    provider.route(api_key=secret)
    engine = provider.make_engine(
        [provider.route()], timeouts=TIMEOUTS, retry=RetryPolicy(max_attempts=1)
    )
    body = json.dumps(
        {
            "type": "error",
            "error": {
                "type": "authentication_error",
                "message": f"Incorrect API key provided: {secret}. Authorization: Bearer {secret}"
                f"; x-api-key: {secret}",
            },
        }
    )
    provider.script([HttpError(status=401, body=body)])
    _, seen = provider.run_to_end(engine)
    assert isinstance(seen.error, StreamFailed)
    (record,) = lifecycle_records(caplog)
    assert record.levelno == logging.WARNING
    assert record.http_status == 401  # type: ignore[attr-defined]
    assert "[redacted]" in record.reason  # type: ignore[attr-defined]
    every_field = json.dumps(fields(record), default=str) + record.getMessage()
    assert secret not in every_field
    assert secret[:20] not in every_field
    assert "Bearer sk-" not in every_field
