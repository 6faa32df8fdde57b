"""Hostile input from the wire: each ends in a typed error or a correct retry, never a
hang, an engine crash or a leaked connection. Both providers, the real SDKs."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import openai
import pytest

from lifecycle import RetryPolicy, StreamEngine, StreamFailed, Timeouts
from providers import AnthropicMessages, OpenAIChatCompletions
from providers.loopback import Healthy, LoopbackServer, RawResponse

MESSAGES = [{"role": "user", "content": "Hi"}]
SSE = (("content-type", "text/event-stream"),)


@pytest.fixture(scope="module")
def server() -> Any:
    with LoopbackServer() as srv:
        yield srv


def _sse(provider: str, events: list[tuple[str | None, Any]]) -> bytes:
    out = []
    for name, data in events:
        text = data if isinstance(data, str) else json.dumps(data)
        out.append((f"event: {name}\n" if name else "") + f"data: {text}\n\n")
    return "".join(out).encode()


def _anthropic_events(*middle: tuple[str | None, Any]) -> list[tuple[str | None, Any]]:
    start = {
        "type": "message_start",
        "message": {
            "id": "msg_x",
            "type": "message",
            "role": "assistant",
            "model": "m",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 1, "output_tokens": 0},
        },
    }
    return [("message_start", start), *middle]


def _text_delta(text: str) -> tuple[str, Any]:
    return (
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}},
    )


def _engine(server: LoopbackServer, provider: str, key: str) -> tuple[StreamEngine, Any]:
    if provider == "anthropic":
        route: Any = AnthropicMessages(
            lambda: anthropic.Anthropic(
                base_url=server.anthropic_base_url,
                api_key="t",
                default_headers={"x-loopback-key": key},
            ),
            model="claude-hostile",
        )
    else:
        route = OpenAIChatCompletions(
            lambda: openai.OpenAI(
                base_url=server.openai_base_url,
                api_key="t",
                default_headers={"x-loopback-key": key},
            ),
            model="gpt-hostile",
        )
    engine = StreamEngine(
        routes=[route],
        timeouts=Timeouts(connect=2, first_token=1.0, stale=1.0, total=15),
        retry=RetryPolicy(max_attempts=2, initial_backoff=0.0),
    )
    return engine, route


def _run(server: LoopbackServer, provider: str, key: str, fault: Any) -> tuple[Any, Any]:
    server.script(key, [fault, Healthy()])
    engine, _ = _engine(server, provider, key)
    error = None
    with engine:
        run = engine.stream(messages=MESSAGES, max_tokens=16)
        try:
            with run:
                for _ in run:
                    pass
        except StreamFailed as exc:
            error = exc
    assert server.wait_idle(3.0), f"leaked connections: {server.open_connections}"
    return run, error


HOSTILE: dict[str, RawResponse] = {
    "html-page-200": RawResponse(
        status=200,
        headers=(("content-type", "text/html"),),
        body=b"<html><body><h1>Bad gateway</h1></body></html>",
        chunked=False,
    ),
    "html-page-502": RawResponse(
        status=502,
        headers=(("content-type", "text/html"),),
        body=b"<html><body>502 Bad Gateway</body></html>",
        chunked=False,
    ),
    "json-instead-of-stream": RawResponse(
        status=200,
        headers=(("content-type", "application/json"),),
        body=b'{"unexpected": "not a stream"}',
        chunked=False,
    ),
    "invalid-json-in-data": RawResponse(
        headers=SSE, body=b"event: content_block_delta\ndata: {nope\n\n"
    ),
    "body-ends-mid-event": RawResponse(
        headers=SSE, body=b'event: content_block_delta\ndata: {"type": "content_bl', end="cut"
    ),
    "empty-200-stream": RawResponse(headers=SSE, body=b""),
    "invalid-utf8": RawResponse(headers=SSE, body=b'data: {"x": "\xff\xfe\xc3"}\n\n'),
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("provider", ["anthropic", "openai"])
@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_response_is_retried_or_typed(
    server: LoopbackServer, provider: str, case: str
) -> None:
    run, error = _run(server, provider, f"hostile-{provider}-{case}", HOSTILE[case])
    # Every case here is transient garbage from a proxy or a broken upstream: classified
    # (an error status, or a dropped/malformed/truncated stream) and retried.
    assert error is None, error
    assert run.state == "completed"
    first = run.attempts[0]
    expected = "error" if HOSTILE[case].status >= 400 else "dropped"
    assert first.outcome == expected, first.reason
    assert run.message is not None and run.message.text


@pytest.mark.timeout(30)
def test_unknown_and_out_of_order_events_never_crash_the_engine(server: LoopbackServer) -> None:
    body = _sse(
        "anthropic",
        _anthropic_events(
            ("mystery_event", {"type": "mystery_event", "x": 1}),
            _text_delta("delta before any content_block_start"),
            ("message_stop", {"type": "message_stop"}),
            ("message_stop", {"type": "message_stop"}),
        ),
    )
    run, error = _run(server, "anthropic", "hostile-order", RawResponse(headers=SSE, body=body))
    assert error is None and run.state == "completed"
    # The adapter reads each event's JSON itself (anthropic<1's own iteration dropped
    # event types it did not know): on every SDK version it ignores and counts them.
    assert run.attempts[0].diagnostics.unknown_events == 1


@pytest.mark.timeout(30)
@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_a_server_that_never_answers_is_stale_not_a_hang(
    server: LoopbackServer, provider: str
) -> None:
    run, _ = _run(
        server,
        provider,
        f"hostile-silent-{provider}",
        RawResponse(headers=SSE, body=b": hello\n\n", end="stall"),
    )
    assert run.state == "completed"
    assert run.attempts[0].outcome == "stale"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_a_64_mib_sse_line_is_refused_without_buffering_it(
    server: LoopbackServer, provider: str
) -> None:
    line = b'data: {"x": "' + b"a" * (64 * 1024 * 1024) + b'"}\n\n'
    key = f"hostile-huge-{provider}"
    server.script(key, [RawResponse(headers=SSE, body=line)])
    engine, route = _engine(server, provider, key)
    engine = StreamEngine(
        routes=[route],
        timeouts=Timeouts(connect=2, first_token=20, stale=20, total=30),
        retry=RetryPolicy(max_attempts=2, initial_backoff=0.0),
    )
    with engine, pytest.raises(StreamFailed, match="oversized event"):
        run = engine.stream(messages=MESSAGES, max_tokens=16)
        with run:
            for _ in run:
                pass
    (first,) = run.attempts  # not retried on the same route: it would come again
    assert first.outcome == "dropped" and first.diagnostics.error_type == "OversizedEvent"
    # The engine stopped reading just past the budget (16 MiB by default), far short of
    # the 64 MiB line: it never held the whole line, let alone twice.
    assert first.diagnostics.bytes < 20 * 1024 * 1024, first.diagnostics.bytes
    assert server.wait_idle(3.0)


@pytest.mark.timeout(30)
def test_a_server_that_accepts_and_never_reads_the_request(server: LoopbackServer) -> None:
    """A TCP peer that accepts and then ignores us: stale at first_token, then fallback."""
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept_and_ignore() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            accepted.append(conn)  # never read from, never written to

    thread = threading.Thread(target=accept_and_ignore, daemon=True)
    thread.start()
    port = listener.getsockname()[1]
    server.script("hostile-blackhole-fallback", [Healthy()])
    routes: list[Any] = [
        AnthropicMessages(
            lambda: anthropic.Anthropic(base_url=f"http://127.0.0.1:{port}", api_key="t"),
            model="claude-blackhole",
        ),
        OpenAIChatCompletions(
            lambda: openai.OpenAI(base_url=server.openai_base_url, api_key="t"),
            model="hostile-blackhole-fallback",
        ),
    ]
    engine = StreamEngine(
        routes=routes,
        timeouts=Timeouts(connect=2, first_token=0.5, stale=0.5, total=10),
        retry=RetryPolicy(max_attempts=1, initial_backoff=0.0),
    )
    try:
        with engine, engine.stream(messages=MESSAGES, max_tokens=16) as run:
            for _ in run:
                pass
    finally:
        stop.set()
        thread.join()
        for conn in accepted:
            conn.close()
        listener.close()
    assert [(a.api_mode, a.outcome) for a in run.attempts] == [
        ("anthropic_messages", "stale"),
        ("chat_completions", "completed"),
    ]
    assert run.attempts[0].diagnostics.stall_clock == "first_token"


def _openai_chunk(**choice: Any) -> dict[str, Any]:
    return {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": {}, "finish_reason": None, **choice}],
    }


ERROR_EVENTS: dict[str, tuple[str, bytes, int]] = {
    "anthropic-overloaded-error-event": (
        "anthropic",
        _sse(
            "anthropic",
            _anthropic_events(
                (
                    "error",
                    {
                        "type": "error",
                        "error": {"type": "overloaded_error", "message": "Overloaded"},
                    },
                )
            ),
        ),
        529,
    ),
    "openai-error-chunk": (
        "openai",
        _sse(
            "openai",
            [
                (
                    None,
                    {
                        "error": {
                            "message": "rate limited",
                            "type": "rate_limit_error",
                            "code": "rate_limit_error",
                        }
                    },
                )
            ],
        ),
        429,
    ),
    "openai-finish-reason-error": (
        "openai",
        _sse(
            "openai",
            [
                (None, _openai_chunk(delta={"content": "Hel"})),
                (None, _openai_chunk(finish_reason="error")),
            ],
        ),
        500,
    ),
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("case", sorted(ERROR_EVENTS))
def test_an_error_inside_a_200_stream_counts_as_its_status(
    server: LoopbackServer, case: str
) -> None:
    provider, body, status = ERROR_EVENTS[case]
    run, error = _run(server, provider, f"hostile-{case}", RawResponse(headers=SSE, body=body))
    assert error is None and run.state == "completed"
    first = run.attempts[0]
    assert (first.outcome, first.diagnostics.http_status) == ("error", status), first.reason
