"""No API key, Authorization or x-api-key value, nor any key-shaped string from the
environment, ever appears in a log line, a diagnostics record, an exception message or a
diagram, even when the provider echoes the key back in its error body."""

from __future__ import annotations

import json
import logging
import os
import secrets
from typing import Any

import anthropic
import openai
import pytest
from kept_texts import exception_texts

from lifecycle import Interrupted, RetryPolicy, StreamEngine, StreamFailed, Timeouts
from providers import AnthropicMessages, OpenAIChatCompletions
from providers.loopback import (
    DropAfterEvents,
    HttpError,
    LoopbackServer,
    MalformedEvent,
    StallAfterEvents,
)

ANTHROPIC_KEY = "sk-ant-api03-" + secrets.token_urlsafe(32)
OPENAI_KEY = "sk-proj-" + secrets.token_urlsafe(32)
OTHER_SECRET = secrets.token_hex(24)  # key-shaped, under a *_TOKEN name


@pytest.fixture(scope="module")
def server() -> Any:
    with LoopbackServer() as srv:
        yield srv


@pytest.fixture
def keys(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.setenv("ANTHROPIC_API_KEY", ANTHROPIC_KEY)
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
    monkeypatch.setenv("SOME_SERVICE_TOKEN", OTHER_SECRET)
    shaped = [
        value
        for name, value in os.environ.items()
        if len(value) >= 20 and any(m in name.upper() for m in ("KEY", "TOKEN", "SECRET"))
    ]
    return [ANTHROPIC_KEY, OPENAI_KEY, OTHER_SECRET, *shaped]


def _echo(key: str, status: int) -> HttpError:
    body = {
        "type": "error",
        "error": {
            "type": "authentication_error",
            "message": f"Incorrect API key provided: {key}. Authorization: Bearer {key}; "
            f"x-api-key: {key}; forwarded x-api-key: {OTHER_SECRET}",
        },
    }
    return HttpError(status=status, body=json.dumps(body))


PIECE = 8
"""No substring of a secret this long may survive (``lifecycle._core.secrets.MIN_PIECE``, pinned
here so that raising it is a failing test, not a quiet weakening)."""


def pieces(secret: str) -> list[str]:
    return [secret[i : i + PIECE] for i in range(len(secret) - PIECE + 1)]


def _texts(run: Any, error: BaseException | None, caplog: pytest.LogCaptureFixture) -> list[str]:
    texts = [record.getMessage() for record in caplog.records]
    # Log records carry their fields as attributes: every one of them counts.
    texts += [json.dumps(vars(record), default=str) for record in caplog.records]
    texts += [json.dumps(a.as_dict(), default=str) for a in run.attempts]
    texts += [repr(a) for a in run.attempts]
    texts.append(run.diagram())
    kept = [a.exception for a in run.attempts]
    if error is not None:
        texts += [str(error), repr(error), repr(getattr(error, "fault", None))]
        for attempt in getattr(error, "attempts", ()):
            texts.append(json.dumps(attempt.as_dict(), default=str))
            kept.append(attempt.exception)
        kept.append(error.__cause__)
    for exc in kept:
        texts += exception_texts(exc)
    return texts


@pytest.mark.parametrize(
    "faults",
    [
        [_echo(ANTHROPIC_KEY, 401), _echo(ANTHROPIC_KEY, 401)],
        [_echo(ANTHROPIC_KEY, 400)],
        [StallAfterEvents(n=1), DropAfterEvents(n=1), MalformedEvent(after_events=0)],
    ],
    ids=["401-echo-then-fallback", "400-echo", "stall-drop-malformed"],
)
def test_no_secret_leaks_anywhere(
    server: LoopbackServer, keys: list[str], faults: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    key = f"secrets-{len(faults)}-{id(faults)}"
    server.script(key, faults)
    server.script(f"{key}-openai", [_echo(OPENAI_KEY, 401)])
    routes = [
        AnthropicMessages(
            lambda: anthropic.Anthropic(
                base_url=server.anthropic_base_url, default_headers={"x-loopback-key": key}
            ),
            model="claude-secret",
        ),
        OpenAIChatCompletions(
            lambda: openai.OpenAI(
                base_url=server.openai_base_url, default_headers={"x-loopback-key": f"{key}-openai"}
            ),
            model="gpt-secret",
        ),
    ]
    engine = StreamEngine(
        routes=routes,
        timeouts=Timeouts(first_token=0.5, stale=0.5, total=15),
        retry=RetryPolicy(max_attempts=3, initial_backoff=0.0),
    )
    error: BaseException | None = None
    with engine:
        run = engine.stream(messages=[{"role": "user", "content": "Hi"}], max_tokens=16)
        try:
            with run:
                for _ in run:
                    pass
        except (StreamFailed, Interrupted) as exc:
            error = exc
    assert run.attempts, "the scenario sent no request"
    assert all(a.exception is not None for a in run.attempts if a.outcome != "completed")
    texts = _texts(run, error, caplog)
    for text in texts:
        for secret in keys:
            assert secret not in text, f"a secret leaked into: {text[:300]}"
        assert "Bearer sk-" not in text
        # Nor any piece of one long enough to matter: a redaction that kept all but the
        # last characters would pass the whole-secret check above.
        for secret in (ANTHROPIC_KEY, OPENAI_KEY, OTHER_SECRET):
            for piece in pieces(secret):
                assert piece not in text, f"{piece!r} of a secret survives in: {text[:300]}"
