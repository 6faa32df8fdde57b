"""A finished answer is finished: once the stop event has reached the caller, the run
completes, whatever the server does with the rest of the body.

A server (or a proxy in front of it) may send the whole answer, its stop included
(``message_stop``, the chat ``finish_reason`` with its usage chunk, ``response.completed``),
and then keep the body open: silent, or with keep-alives. The engine releases that body
(a short bounded drain, then the connection is shut and closed) and never retries: one
request, one attempt, no ``restart``. A body that does end promptly is still read to its
end, so its keep-alive connection serves the next run. Both providers, the Responses
API too, both drivers, real SDKs against the loopback server.
"""

from __future__ import annotations

from typing import Any

import pytest
from bounds import PROMPT
from conftest import BREAK

from lifecycle import Timeouts
from lifecycle._drivers.run_base import AFTER_STOP_DRAIN
from providers import OpenAIResponses
from providers.loopback import Healthy, PingsOnly, RawResponse, StallAfterEvents, recordings

pytestmark = pytest.mark.timeout(30)

STALE = 2.0
"""The stall clocks: without the fix the open body is taken for a stall after this."""
TIMEOUTS = Timeouts(connect=5, first_token=STALE, stale=STALE, total=30)
EVERYTHING = 10**6
"""A fault position beyond any recording's events: the whole recording is sent first."""

HELD_OPEN: list[Any] = [
    StallAfterEvents(n=EVERYTHING),
    PingsOnly(after_events=EVERYTHING, interval=0.05),
]
HELD_OPEN_IDS = ["silent", "pings"]


def check_finished(provider: Any, run: Any, seen: Any, text: str) -> None:
    assert seen.error is None, repr(seen.error)
    assert run.state == "completed", [a.as_dict() for a in run.attempts]
    assert "restart" not in seen.types
    assert seen.types.count("stop") == 1 and seen.types[-1] == "stop"
    assert seen.text() == text
    assert [a.outcome for a in run.attempts] == ["completed"]
    assert len(provider.requests()) == 1
    stop_at = seen.received_at[-1]
    # The caller's loop ends after the bounded drain, not after a stall clock.
    assert seen.ended_at - stop_at < AFTER_STOP_DRAIN + PROMPT
    (request,) = provider.requests()
    provider.server.wait_until(lambda: provider.connection_of(request).closed_at is not None)
    assert provider.connection_of(request).closed_at is not None, "the held body stayed open"


@pytest.mark.parametrize("fault", HELD_OPEN, ids=HELD_OPEN_IDS)
def test_body_held_open_after_the_stop(provider: Any, fault: Any) -> None:
    engine = provider.engine(timeouts=TIMEOUTS, with_other=False)
    provider.script([fault, Healthy()])
    run, seen = provider.run_to_end(engine)
    check_finished(provider, run, seen, provider.text())


@pytest.mark.parametrize("fault", HELD_OPEN, ids=HELD_OPEN_IDS)
def test_responses_body_held_open_after_completed(provider: Any, fault: Any) -> None:
    if provider.name != "openai":
        pytest.skip("the Responses API is OpenAI's")
    route = provider.route(route_class=OpenAIResponses)
    engine = provider.make_engine([route], timeouts=TIMEOUTS)
    provider.script([fault, Healthy()])
    run, seen = provider.run_to_end(engine)
    check_finished(provider, run, seen, recordings.load("openai_responses", "text_basic").text())


def test_chat_body_held_open_after_usage_without_done(provider: Any) -> None:
    """The chat stream's last chunk is its usage (asked for with ``include_usage``): a
    server that never sends ``[DONE]`` after it has still finished the answer."""
    if provider.name != "openai":
        pytest.skip("a chat completions stream")
    blocks = recordings.load("openai", "text_basic").blocks
    body = b"".join(b.raw for b in blocks if not b.data.startswith("[DONE]"))
    engine = provider.engine(timeouts=TIMEOUTS, with_other=False)
    provider.script([RawResponse(body=body, end="stall"), Healthy()])
    run, seen = provider.run_to_end(engine)
    check_finished(provider, run, seen, provider.text())
    assert run.message.usage is not None and run.message.usage.output_tokens == 14


def test_a_body_that_ends_is_read_to_its_end(provider: Any) -> None:
    """The drain reads what follows the stop: the keep-alive connection is reused. (The
    openai SDK closes its response at ``[DONE]`` without reading the body's end: the
    engine's close reads it, see ``tests/test_connection_reuse.py``.)"""
    engine = provider.engine(timeouts=TIMEOUTS, with_other=False)
    provider.script([Healthy(), Healthy()])
    for _ in range(2):
        run, seen = provider.run_to_end(engine)
        assert seen.error is None and run.state == "completed"
    first, second = provider.requests()
    assert first.connection_id == second.connection_id


@pytest.mark.parametrize("fault", [Healthy(), *HELD_OPEN], ids=["ended", *HELD_OPEN_IDS])
def test_leaving_the_loop_at_the_stop_completes_the_run(provider: Any, fault: Any) -> None:
    """``if event.type == "stop": break`` leaves a finished answer: the run completes
    (its client is kept), it is not cancelled."""
    engine = provider.engine(timeouts=TIMEOUTS, with_other=False)
    provider.script([fault, Healthy()])
    run, seen = provider.run_to_end(engine, lambda event: BREAK if event.type == "stop" else None)
    assert seen.error is None, repr(seen.error)
    assert seen.types[-1] == "stop" and "restart" not in seen.types
    assert run.state == "completed", [a.as_dict() for a in run.attempts]
    assert [a.outcome for a in run.attempts] == ["completed"]
    assert run.message is not None and run.message.text == provider.text()
    provider.settle()
    assert provider.clients().built_count == 2, "its client, kept, and that client's spare"
    assert provider.clients().current_client is not None and provider.clients().has_spare
    assert len(provider.requests()) == 1
