"""A route's actual secrets, whatever their shape, never appear in what the engine writes.

OpenAI-compatible providers' keys are not key-shaped (``gsk_...``, ``AIza...``, opaque
tokens), so the engine learns the actual key and auth headers of each client its routes
build. Here each route kind gets a fresh random key, which the loopback server echoes
back (whole, cut, and after ``Authorization: Bearer``) in a 401 body and in an in-stream
error event; no piece of it 8 characters long may survive in the error's text, repr or
traceback, the attempts and their diagnostics and kept exceptions, the recorder's JSON,
the OpenTelemetry spans, the engine's log lines or (with ``lifecycle.SecretsFilter``)
the SDKs' own DEBUG logs. Both drivers. Also: a redirect to another origin is not
followed with the credentials (both stacks), and a callable ``api_key`` works.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import secrets
import threading
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anthropic
import openai
import pytest
from kept_texts import exception_texts

import lifecycle
from lifecycle import RetryPolicy, StreamEngine, StreamFailed, Timeouts
from lifecycle.adapters import HEADER_ALLOWLIST, Route, redact
from lifecycle.record import TransitionRecorder
from providers import AnthropicMessages, OpenAIChatCompletions, OpenAIResponses
from providers.loopback import Healthy, HttpError, LoopbackServer, RawResponse

pytestmark = pytest.mark.timeout(60)

ROUTE_KINDS = ("anthropic_messages", "chat_completions", "responses")
DRIVERS = ("sync", "async")
TIMEOUTS = Timeouts(connect=5, first_token=5, stale=5, total=30)
PIECE = 8
SSE = (("content-type", "text/event-stream"),)


def fresh_key(kind: str) -> str:
    """A new random key, in a shape no pattern knows, per route kind."""
    if kind == "chat_completions":
        return "gsk_" + secrets.token_urlsafe(36)
    if kind == "responses":
        return "AIza" + secrets.token_urlsafe(30)
    return secrets.token_hex(24)


FOREIGN_KEY = secrets.token_hex(20)
"""A key no route's client holds (a gateway's upstream key, say), so the engine never
learns it: only the redaction of header-shaped values (``x-api-key: ...``,
``Authorization: Bearer ...``) stands between it and the records."""


def echo_text(key: str) -> str:
    return (
        f"Incorrect API key provided: {key}. Authorization: Bearer {key}; "
        f"you sent ...{key[4:-4]}... (upstream x-api-key: {FOREIGN_KEY}; "
        f"upstream authorization: Bearer {FOREIGN_KEY}; api-key={FOREIGN_KEY})"
    )


def auth_error(kind: str, key: str) -> HttpError:
    message = echo_text(key)
    if kind == "anthropic_messages":
        body: dict[str, Any] = {
            "type": "error",
            "error": {"type": "authentication_error", "message": message},
        }
    else:
        body = {"error": {"message": message, "type": "invalid_request_error", "code": None}}
    headers = (
        ("request-id", f"req-{key}"),
        ("x-request-id", f"req-{key}"),
        ("set-cookie", f"session={key}"),
        ("x-echo-key", key),
    )
    return HttpError(status=401, body=json.dumps(body), headers=headers)


def stream_error(kind: str, key: str) -> RawResponse:
    """A 200 stream whose only event is the provider's error event, echoing the key."""
    message = echo_text(key)
    if kind == "anthropic_messages":
        data = {"type": "error", "error": {"type": "overloaded_error", "message": message}}
        block = f"event: error\ndata: {json.dumps(data)}\n\n"
    elif kind == "chat_completions":
        block = f"data: {json.dumps({'error': {'message': message, 'type': 'server_error'}})}\n\n"
    else:
        # Without an ``event:`` line: openai 1.78 hands an ``event: error`` block to the
        # adapter as an unknown event (the stream then ends truncated, the key unseen).
        data = {
            "type": "error",
            "code": "server_error",
            "message": message,
            "param": None,
            "sequence_number": 0,
        }
        block = f"data: {json.dumps(data)}\n\n"
    return RawResponse(headers=SSE, body=block.encode())


def base_url(server: LoopbackServer, kind: str) -> str:
    return server.anthropic_base_url if kind == "anthropic_messages" else server.openai_base_url


def make_route(
    kind: str,
    server: LoopbackServer,
    *,
    api_key: Any,
    script: str,
    is_async: bool,
    url: str | None = None,
) -> Route:
    headers = {"x-loopback-key": script}
    base = url or base_url(server, kind)
    if kind == "anthropic_messages":
        anthropic_cls: Any = anthropic.AsyncAnthropic if is_async else anthropic.Anthropic
        return AnthropicMessages(
            lambda: anthropic_cls(base_url=base, api_key=api_key, default_headers=headers),
            model=f"claude-{script}",
        )
    openai_cls: Any = openai.AsyncOpenAI if is_async else openai.OpenAI
    route_cls: Any = OpenAIChatCompletions if kind == "chat_completions" else OpenAIResponses
    return route_cls(  # type: ignore[no-any-return]
        lambda: openai_cls(base_url=base, api_key=api_key, default_headers=headers),
        model=f"gpt-{script}",
    )


@dataclass
class Outputs:
    """Everything the engine wrote about one run."""

    run: Any
    error: BaseException | None
    recorder: io.StringIO
    spans: Any

    def texts(self, caplog: pytest.LogCaptureFixture) -> list[str]:
        run, error = self.run, self.error
        texts = [self.recorder.getvalue(), run.diagram()]
        texts += [span.to_json() for span in self.spans.get_finished_spans()]
        texts += [
            str(getattr(span.status, "description", "")) for span in self.spans.get_finished_spans()
        ]
        for record in caplog.records:
            texts += [record.getMessage(), json.dumps(vars(record), default=str)]
        kept: list[BaseException | None] = []
        for attempt in run.attempts:
            texts += [json.dumps(attempt.as_dict(), default=str), repr(attempt)]
            texts.append(repr(attempt.diagnostics))
            kept.append(attempt.exception)
        if error is not None:
            texts += [str(error), repr(error), repr(getattr(error, "fault", None))]
            texts.append("".join(traceback.format_exception(error)))
            kept.append(error)
        for exc in kept:
            texts += tracked_texts(exc)
        return texts


def tracked_texts(exc: BaseException | None) -> list[str]:
    """What an error tracker shows of a kept exception: the traceback, and the texts of
    it and its causes."""
    if exc is None:
        return []
    return ["".join(traceback.format_exception(exc)), *exception_texts(exc)]


def pieces(key: str) -> list[str]:
    return [key[i : i + PIECE] for i in range(len(key) - PIECE + 1)]


def assert_no_piece(texts: list[str], key: str) -> None:
    for text in texts:
        for piece in pieces(key):
            at = text.find(piece)
            around = text[max(0, at - 200) : at + 200]
            assert at < 0, f"{piece!r} of the key survives in: ...{around}..."


def run_once(route_list: list[Route], driver: str, **engine_kwargs: Any) -> Outputs:
    """One run on its own engine, with a recorder and in-memory OpenTelemetry hooks."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from lifecycle.otel import OpenTelemetryHooks

    recorded = io.StringIO()
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    hooks = [TransitionRecorder(file=recorded), OpenTelemetryHooks(tracer_provider=tracer_provider)]
    retry = engine_kwargs.pop("retry", RetryPolicy(max_attempts=2, initial_backoff=0.0))
    options = {"routes": route_list, "timeouts": TIMEOUTS, "retry": retry, "hooks": hooks}
    request: dict[str, Any] = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 16}
    error: BaseException | None = None
    if driver == "sync":
        with StreamEngine(**options, **engine_kwargs) as engine:
            run = engine.stream(**request)
            try:
                with run:
                    for _ in run:
                        pass
            except StreamFailed as exc:
                error = exc
    else:

        async def main() -> tuple[Any, BaseException | None]:
            async with StreamEngine(**options, **engine_kwargs) as engine:
                run = engine.astream(**request)
                try:
                    async with run:
                        async for _ in run:
                            pass
                except StreamFailed as exc:
                    return run, exc
                return run, None

        run, error = asyncio.run(main())
    tracer_provider.shutdown()
    return Outputs(run=run, error=error, recorder=recorded, spans=spans)


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("kind", ROUTE_KINDS)
@pytest.mark.parametrize("where", ["401-body", "stream-error-event"])
def test_an_echoed_opaque_key_appears_nowhere(
    server: LoopbackServer,
    kind: str,
    driver: str,
    where: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    key = fresh_key(kind)
    script = secrets.token_hex(8)
    fault = auth_error(kind, key) if where == "401-body" else stream_error(kind, key)
    server.script(script, [fault, fault])
    route = make_route(kind, server, api_key=key, script=script, is_async=driver == "async")

    out = run_once([route], driver)

    assert isinstance(out.error, StreamFailed), out.run.state
    assert out.run.attempts and all(a.exception is not None for a in out.run.attempts)
    # The echo reached the engine (the test is not vacuous): its text says where a key was.
    assert "[redacted]" in (out.run.attempts[-1].reason or ""), out.run.attempts[-1].reason
    assert "Bearer [redacted]" in (out.run.attempts[-1].reason or "")
    assert any(r.levelno >= logging.WARNING for r in caplog.records)
    assert out.recorder.getvalue() and out.spans.get_finished_spans()
    texts = out.texts(caplog)
    assert_no_piece(texts, key)
    assert_no_piece(texts, FOREIGN_KEY)
    assert "upstream x-api-key: [redacted]" in (out.run.attempts[-1].reason or "")
    if where == "401-body":
        assert out.error.fault is not None and out.error.fault.headers is not None
        headers = dict(out.error.fault.headers)
        assert set(headers) <= HEADER_ALLOWLIST, headers
        assert "set-cookie" not in headers and "x-echo-key" not in headers
        # An allowed header keeps its place, its value redacted (the server adds its own id).
        assert "req-[redacted]" in headers.get("request-id", "") + headers.get("x-request-id", "")


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("kind", ["anthropic_messages", "chat_completions"])
def test_secrets_filter_redacts_the_sdks_debug_logs(
    server: LoopbackServer, kind: str, driver: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The SDKs log each response's headers at DEBUG; the filter, on the handler, takes
    the route's key out of those records (and of the HTTP libraries')."""
    caplog.set_level(logging.DEBUG)
    caplog.handler.addFilter(lifecycle.SecretsFilter())
    key = fresh_key(kind)
    script = secrets.token_hex(8)
    server.script(script, [auth_error(kind, key)])
    route = make_route(kind, server, api_key=key, script=script, is_async=driver == "async")

    out = run_once([route], driver, retry=RetryPolicy(max_attempts=1))

    assert isinstance(out.error, StreamFailed)
    sdk_records = [
        r for r in caplog.records if r.name.split(".")[0] in ("anthropic", "openai", "httpx")
    ]
    logged = "\n".join(r.getMessage() for r in sdk_records)
    assert sdk_records, "the SDKs logged nothing at DEBUG"
    # The SDKs log the response's request id (anthropic: every header) at DEBUG, except
    # anthropic 0.40's async client, which logs only the request line.
    if "req_loopback" in logged:
        assert "req-[redacted]" in logged, logged
    assert_no_piece([r.getMessage() for r in caplog.records], key)
    assert_no_piece([json.dumps(vars(r), default=str) for r in caplog.records], key)


def test_secrets_filter_leaves_other_loggers_alone() -> None:
    record = logging.LogRecord("app", logging.INFO, __file__, 1, "x-api-key: %s", ("abc",), None)
    assert lifecycle.SecretsFilter().filter(record) and record.getMessage() == "x-api-key: abc"
    everything = lifecycle.SecretsFilter(loggers=None)
    assert everything.filter(record) and record.getMessage() == "x-api-key: [redacted]"


@pytest.mark.parametrize(
    ("template", "kept"),
    [
        ("x-api-key: {}", "x-api-key: "),
        ("X-Api-Key={}", "X-Api-Key="),
        ("api-key: {}", "api-key: "),
        ("authorization: {}", "authorization: "),
        ("Authorization: Bearer {}", "Authorization: Bearer "),
        ("Authorization: Basic {}", "Authorization: Basic "),
        ("sent Bearer {} upstream", "sent Bearer "),
    ],
)
def test_an_unknown_header_value_is_redacted_whole(template: str, kept: str) -> None:
    """A value the engine never learned, behind an auth header's name or scheme: no
    piece of it survives, and what says where it was does."""
    value = secrets.token_hex(20)
    text = redact(f"error: {template.format(value)}; retry later")
    assert_no_piece([text], value)
    assert f"error: {kept}[redacted]" in text, text


def test_bearer_keeps_its_scheme() -> None:
    token = secrets.token_urlsafe(24)
    assert redact(f"Authorization: Bearer {token}") == "Authorization: Bearer [redacted]"
    assert redact(f"sent Bearer {token} twice") == "sent Bearer [redacted] twice"


@pytest.mark.skipif(
    "Callable" not in str(openai.OpenAI.__init__.__annotations__.get("api_key", "")),
    reason="this openai release takes no callable api_key",
)
@pytest.mark.parametrize("driver", DRIVERS)
def test_a_callable_api_key_works_and_is_redacted(
    server: LoopbackServer, driver: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    key = fresh_key("chat_completions")
    calls: list[int] = []

    def sync_key() -> str:
        calls.append(1)
        return key

    async def async_key() -> str:
        calls.append(1)
        return key

    api_key = async_key if driver == "async" else sync_key
    script = secrets.token_hex(8)
    server.script(script, [Healthy(), auth_error("chat_completions", key)])
    route = make_route(
        "chat_completions", server, api_key=api_key, script=script, is_async=driver == "async"
    )
    healthy = run_once([route], driver)
    assert healthy.run.state == "completed" and healthy.error is None
    assert calls, "the SDK never asked the callable for the key"

    failed = run_once([route], driver, retry=RetryPolicy(max_attempts=1))
    assert isinstance(failed.error, StreamFailed)
    assert "[redacted]" in (failed.run.attempts[-1].reason or "")
    assert_no_piece(failed.texts(caplog), key)


class _Elsewhere:
    """Another origin: a plain HTTP server on its own port that notes what reaches it."""

    def __init__(self) -> None:
        seen: list[dict[str, str]] = []
        self.seen = seen

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                seen.append({k.lower(): v for k, v in self.headers.items()})
                self.send_response(500)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="elsewhere")

    def __enter__(self) -> _Elsewhere:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def elsewhere() -> Iterator[_Elsewhere]:
    with _Elsewhere() as other:
        yield other


def redirect(location: str, status: int = 307) -> RawResponse:
    return RawResponse(
        status=status,
        headers=(("location", location), ("content-type", "text/plain")),
        body=b"moved",
        chunked=False,
    )


@pytest.mark.parametrize("status", [307, 308])
@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("kind", ["anthropic_messages", "chat_completions"])
def test_a_redirect_to_another_origin_is_a_route_fault_and_sends_no_key(
    server: LoopbackServer, elsewhere: _Elsewhere, kind: str, driver: str, status: int
) -> None:
    key = fresh_key(kind)
    script = secrets.token_hex(8)
    path = "/v1/messages" if kind == "anthropic_messages" else "/v1/chat/completions"
    server.script(script, [redirect(f"http://127.0.0.1:{elsewhere.port}{path}", status)])
    server.script(f"{script}-next", [Healthy()])
    is_async = driver == "async"
    routes = [
        make_route(kind, server, api_key=key, script=script, is_async=is_async),
        make_route(kind, server, api_key=key, script=f"{script}-next", is_async=is_async),
    ]

    out = run_once(routes, driver, retry=RetryPolicy(max_attempts=3, initial_backoff=0.0))

    assert elsewhere.seen == [], "the request (and its credentials) went to another origin"
    assert out.run.state == "completed", [(a.outcome, a.reason) for a in out.run.attempts]
    first, second = out.run.attempts
    assert (first.outcome, first.diagnostics.http_status) == ("error", status)
    assert "to another origin" in (first.reason or "") and first.exception is not None
    assert f"127.0.0.1:{elsewhere.port}" in (first.reason or "")
    assert "CrossOriginRedirect" in "".join(traceback.format_exception(first.exception))
    assert (first.route_index, second.route_index, second.outcome) == (0, 1, "completed")


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_redirect_within_the_origin_is_still_followed(
    server: LoopbackServer, driver: str
) -> None:
    script = secrets.token_hex(8)
    url = f"{server.openai_base_url.rstrip('/')}/chat/completions"
    server.script(script, [redirect(url), Healthy()])
    is_async = driver == "async"
    key = fresh_key("chat_completions")
    route = make_route("chat_completions", server, api_key=key, script=script, is_async=is_async)
    out = run_once([route], driver, retry=RetryPolicy(max_attempts=1))
    assert out.run.state == "completed", [(a.outcome, a.reason) for a in out.run.attempts]
    assert len(out.run.attempts) == 1


def test_any_long_enough_piece_of_a_known_secret_is_redacted() -> None:
    from lifecycle.adapters import register_secrets

    key = "opaque" + secrets.token_hex(16)
    short = secrets.token_hex(3)  # 6 characters: not a secret worth mangling text for
    register_secrets([key, f"Bearer {key[::-1]}", short])
    assert redact(f"got {key}!") == "got [redacted]!"
    assert redact(f"cut ...{key[5:13]}... and {key[-9:]}") == "cut ...[redacted]... and [redacted]"
    assert redact(f"reversed {key[::-1]}") == "reversed [redacted]"
    assert redact(f"a 7-char piece {key[:7]} stays") == f"a 7-char piece {key[:7]} stays"
    assert redact(f"short {short}") == f"short {short}"


def test_a_key_shaped_value_that_starts_like_a_known_secret_is_redacted_whole() -> None:
    # Seen in CI order: a registered key shares its first 8 characters ("sk-ant-q") with
    # a key-shaped value; removing that piece first left the rest of the value, which
    # no longer had the shape the pattern knows.
    from lifecycle.adapters import register_secrets

    register_secrets(["sk-ant-q" + secrets.token_hex(12)])
    tail = secrets.token_hex(8)
    assert redact(f"req_1 sk-ant-q{tail}") == "req_1 [redacted]"
    assert redact(f"x-api-key: sk-ant-q{tail}") == "x-api-key: [redacted]"


def test_stream_failed_keeps_only_allowed_headers_of_its_fault() -> None:
    fault = lifecycle.Fault(
        outcome="error",
        retryable=False,
        fallback_eligible=True,
        reason="HTTP 401",
        headers={"Set-Cookie": "session=abc", "Request-Id": "req_1", "X-Echo": "x"},
        request_id="req_1 sk-ant-" + secrets.token_hex(8),
    )
    error = StreamFailed("failed", attempts=(), fault=fault)
    assert error.fault is not None and error.fault.headers == {"request-id": "req_1"}
    assert error.request_id == error.fault.request_id == "req_1 [redacted]"
