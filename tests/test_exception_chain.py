"""``StreamFailed`` keeps what went wrong as objects, not only as strings: it is chained
(``__cause__``) to the last attempt's exception, and every attempt record keeps its own
(``AttemptRecord.exception``), with the same redaction as the records' text."""

from __future__ import annotations

import traceback
from typing import Any

import anthropic
import openai
import pytest
from conftest import ProviderKit

from lifecycle import MissingCredentials, RetryPolicy, StreamFailed, Timeouts
from providers.loopback import Healthy, HttpError, StallAfterEvents

TIMEOUTS = Timeouts(first_token=1.0, stale=1.0, total=30)
RETRY = RetryPolicy(max_attempts=3, initial_backoff=0.0, max_backoff=0.0)
SDK_ERRORS: dict[str, Any] = {
    "anthropic": (anthropic.APIStatusError, anthropic.BadRequestError),
    "openai": (openai.APIStatusError, openai.BadRequestError),
}


def test_stream_failed_is_chained_to_the_last_attempts_exception(provider: ProviderKit) -> None:
    engine = provider.engine(timeouts=TIMEOUTS, retry=RETRY, with_other=False)
    provider.script([HttpError(status=400)])
    run, seen = provider.run_to_end(engine)
    error = seen.error
    assert isinstance(error, StreamFailed), repr(error)
    _, bad_request = SDK_ERRORS[provider.name]
    (attempt,) = run.attempts
    assert isinstance(attempt.exception, bad_request), repr(attempt.exception)
    assert error.__cause__ is attempt.exception
    assert error.__suppress_context__
    assert error.attempts[0].exception is attempt.exception
    shown = "".join(traceback.format_exception(error))
    assert "The above exception was the direct cause" in shown
    assert type(attempt.exception).__name__ in shown


def test_each_attempt_keeps_its_own_exception(provider: ProviderKit) -> None:
    engine = provider.engine(timeouts=TIMEOUTS, retry=RETRY, with_other=False)
    provider.script([HttpError(status=500), HttpError(status=503), HttpError(status=500)])
    run, seen = provider.run_to_end(engine)
    assert isinstance(seen.error, StreamFailed), repr(seen.error)
    status_error, _ = SDK_ERRORS[provider.name]
    kept = [a.exception for a in run.attempts]
    assert len(kept) == 3 and len({id(e) for e in kept}) == 3, kept
    assert all(isinstance(e, status_error) for e in kept), kept
    assert [e.status_code for e in kept] == [500, 503, 500]  # type: ignore[union-attr]
    assert seen.error.__cause__ is kept[-1]


def test_a_recovered_run_keeps_the_failed_attempts_exception(provider: ProviderKit) -> None:
    engine = provider.engine(timeouts=TIMEOUTS, retry=RETRY, with_other=False)
    provider.script([StallAfterEvents(n=1), Healthy()])
    run, seen = provider.run_to_end(engine)
    assert seen.error is None, repr(seen.error)
    stale, completed = run.attempts
    assert stale.outcome == "stale" and isinstance(stale.exception, Exception)
    assert completed.outcome == "completed" and completed.exception is None


def test_a_client_that_could_not_be_built_keeps_why(
    provider: ProviderKit, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "ANTHROPIC_AUTH_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    route = provider.route(api_key=None)  # type: ignore[arg-type]
    engine = provider.make_engine([route], timeouts=TIMEOUTS, retry=RETRY)
    run, seen = provider.run_to_end(engine)
    assert isinstance(seen.error, StreamFailed), repr(seen.error)
    (attempt,) = run.attempts
    assert isinstance(attempt.exception, MissingCredentials), repr(attempt.exception)
    # Why the SDK refused: its own error (anthropic's at the dry run, openai's from
    # the factory) is the cause.
    sdk_error = TypeError if provider.name == "anthropic" else openai.OpenAIError
    assert isinstance(attempt.exception.__cause__, sdk_error), repr(attempt.exception.__cause__)
    assert seen.error.__cause__ is attempt.exception
