"""The loopback provider server, exercised with the real Anthropic and OpenAI SDKs.

Runs under both SDK stacks (anthropic 2.x / openai 3.x on httpx2, anthropic 0.x /
openai 2.x on httpx), so nothing here passes HTTP-library objects to the SDKs.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest
from bounds import PROMPT

from providers.loopback import (
    DropAfterEvents,
    Healthy,
    HttpError,
    LoopbackServer,
    MalformedEvent,
    PingsOnly,
    StallAfterEvents,
    StallAfterHeaders,
    StallBeforeHeaders,
    TruncateAfterBlocks,
    recordings,
)

try:  # the SDKs' HTTP library: httpx2 for anthropic 2.x / openai 3.x, httpx before
    import httpx2 as httpx  # type: ignore[import-not-found]
except ImportError:
    import httpx  # type: ignore[no-redef]

pytestmark = pytest.mark.timeout(20)

# Streaming read errors surface raw from some SDK versions and wrapped from others.
TIMEOUT_ERRORS = (httpx.TimeoutException, anthropic.APITimeoutError, openai.APITimeoutError)
CONNECTION_ERRORS = (httpx.TransportError, anthropic.APIConnectionError, openai.APIConnectionError)
STALL_TIMEOUT = 0.5
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    with LoopbackServer() as srv:
        yield srv


@pytest.fixture
def aclient(server: LoopbackServer) -> Iterator[anthropic.Anthropic]:
    client = anthropic.Anthropic(
        base_url=server.anthropic_base_url, api_key="test", max_retries=0, timeout=5.0
    )
    yield client
    client.close()


@pytest.fixture
def oclient(server: LoopbackServer) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(
        base_url=server.openai_base_url, api_key="test", max_retries=0, timeout=5.0
    )
    yield client
    client.close()


def a_stream(client: anthropic.Anthropic, key: str, **kwargs: Any) -> Any:
    return client.messages.create(
        model="claude-loopback",
        max_tokens=64,
        messages=MESSAGES,  # type: ignore[arg-type]
        stream=True,
        extra_headers={"x-loopback-key": key},
        **kwargs,
    )


def o_stream(client: openai.OpenAI, key: str, **kwargs: Any) -> Any:
    return client.chat.completions.create(
        model="gpt-loopback",
        messages=MESSAGES,  # type: ignore[arg-type]
        stream=True,
        extra_headers={"x-loopback-key": key},
        **kwargs,
    )


def a_meaningful(event: Any) -> bool:
    return event.type in ("content_block_delta", "message_stop")


def o_meaningful(chunk: Any) -> bool:
    return any(
        c.finish_reason is not None or c.delta.content or c.delta.refusal or c.delta.tool_calls
        for c in chunk.choices
    )


def raw_request(path: str, body: object, headers: dict[str, str] | None = None) -> bytes:
    data = json.dumps(body).encode()
    lines = [
        f"POST {path} HTTP/1.1",
        "host: 127.0.0.1",
        "content-type: application/json",
        f"content-length: {len(data)}",
        *(f"{k}: {v}" for k, v in (headers or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


def valid_body(path: str, **fields: object) -> dict[str, object]:
    """The smallest body the path's API accepts (the server validates bodies), plus ``fields``."""
    if path == "/v1/messages":
        body: dict[str, object] = {"model": "m", "max_tokens": 16}
        body["messages"] = [{"role": "user", "content": "Hi"}]
    else:
        body = {"model": "m", "messages": [{"role": "user", "content": "Hi"}]}
    return {**body, **fields}


def read_response(reader: Any) -> tuple[int, dict[str, str], bytes]:
    """Read one Content-Length response from a socket file."""
    status = int(reader.readline().split()[1])
    headers: dict[str, str] = {}
    while (line := reader.readline().decode().strip()) != "":
        name, _, value = line.partition(":")
        headers[name.lower()] = value.strip()
    return status, headers, reader.read(int(headers["content-length"]))


def connect(server: LoopbackServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=5.0)


# --------------------------------------------------------------------------- recordings


def test_recordings_flag_meaningful_events() -> None:
    assert "text_basic" in recordings.available("anthropic")
    assert "text_long" in recordings.available("openai")

    anthropic_basic = recordings.load("anthropic", "text_basic")
    assert [(b.event, b.meaningful) for b in anthropic_basic.blocks] == [
        ("message_start", False),
        ("content_block_start", False),
        ("ping", False),
        ("content_block_delta", True),
        ("content_block_delta", True),
        ("content_block_delta", True),
        ("content_block_stop", False),
        ("message_delta", False),
        ("message_stop", True),
    ]
    assert anthropic_basic.text() == "Hello there!"
    assert all(
        b.raw.endswith(b"\n\n") and not b.raw.endswith(b"\n\n\n") for b in anthropic_basic.blocks
    )
    # n=0 is the preamble; n=1 ends with the first meaningful event.
    assert [b.event for b in anthropic_basic.prefix(0)] == [
        "message_start",
        "content_block_start",
        "ping",
    ]
    assert anthropic_basic.prefix(1)[-1].index == 3
    assert anthropic_basic.prefix(99) == anthropic_basic.blocks

    openai_basic = recordings.load("openai", "text_basic")
    flags = [b.meaningful for b in openai_basic.blocks]
    assert flags[0] is False  # role-only chunk
    assert flags[-2:] == [False, False]  # usage-only chunk, [DONE]
    assert all(flags[1:-2])
    assert openai_basic.blocks[-1].data == "[DONE]"
    assert recordings.load("openai", "tool_calls_a").meaningful_indexes[0] == 0


# --------------------------------------------------------------------------- healthy


@pytest.mark.parametrize(
    "name", ["text_basic", "tool_use", "stream_a_refusal", "stream_b_fallback", "compaction"]
)
def test_anthropic_healthy_replay(
    server: LoopbackServer, aclient: anthropic.Anthropic, name: str
) -> None:
    server.script("k", [Healthy(recording=name)])
    recording = recordings.load("anthropic", name)
    stream = a_stream(aclient, "k")
    events = list(stream)
    text = "".join(
        e.delta.text
        for e in events
        if e.type == "content_block_delta" and e.delta.type == "text_delta"
    )
    assert text == recording.text()
    assert sum(map(a_meaningful, events)) == recording.meaningful_count
    assert stream.response.headers["request-id"] == "req_loopback_0"
    assert stream.response.headers["content-type"].startswith("text/event-stream")
    [record] = server.requests
    assert (record.key, record.fault, record.status, record.stream) == (
        "k",
        Healthy(recording=name),
        200,
        True,
    )
    assert (record.provider, record.path, record.model) == (
        "anthropic",
        "/v1/messages",
        "claude-loopback",
    )


@pytest.mark.parametrize(
    "name", ["text_basic", "text_long", "text_n2_choices", "tool_calls_parallel", "refusal"]
)
def test_openai_healthy_replay(server: LoopbackServer, oclient: openai.OpenAI, name: str) -> None:
    server.script("k", [Healthy(recording=name)])
    recording = recordings.load("openai", name)
    stream = o_stream(oclient, "k")
    chunks = list(stream)
    text = "".join(c.delta.content or "" for chunk in chunks for c in chunk.choices if c.index == 0)
    assert text == recording.text()
    assert sum(map(o_meaningful, chunks)) == recording.meaningful_count
    # Tool-call arguments reassemble to what the non-streaming body carries.
    expected_calls = recording.completion()["choices"][0]["message"].get("tool_calls", [])
    arguments: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            for call in (choice.delta.tool_calls or []) if choice.index == 0 else []:
                arguments[call.index] = arguments.get(call.index, "") + (
                    call.function.arguments or ""
                )
    assert [arguments[i] for i in sorted(arguments)] == [
        c["function"]["arguments"] for c in expected_calls
    ]
    assert stream.response.headers["x-request-id"] == "req_loopback_0"


def test_non_stream_requests_get_assembled_completions(
    aclient: anthropic.Anthropic, oclient: openai.OpenAI
) -> None:
    message = aclient.messages.create(model="m", max_tokens=64, messages=MESSAGES)  # type: ignore[arg-type]
    assert message.content[0].text == "Hello there!"  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    completion = oclient.chat.completions.create(model="m", messages=MESSAGES)  # type: ignore[arg-type]
    assert completion.choices[0].message.content == recordings.load("openai", "text_basic").text()
    assert completion.choices[0].finish_reason == "stop"


def test_drip_spaces_out_blocks(server: LoopbackServer, aclient: anthropic.Anthropic) -> None:
    server.script("k", [Healthy(drip=0.02)])
    started = time.monotonic()
    events = list(a_stream(aclient, "k"))
    elapsed = time.monotonic() - started
    assert sum(map(a_meaningful, events)) == 4
    assert elapsed >= 0.02 * (len(recordings.load("anthropic", "text_basic").blocks) - 1) * 0.9


def test_head_delay_holds_back_the_status_line(
    server: LoopbackServer, aclient: anthropic.Anthropic
) -> None:
    """The status line comes ``head_delay`` after the request, then the whole recording
    at once: what a provider's time to first byte looks like on the wire."""
    server.script("k", [Healthy(head_delay=0.3)])
    started = time.monotonic()
    stream = a_stream(aclient, "k")  # returns once the response's headers arrived
    headers_after = time.monotonic() - started
    events = list(stream)
    done_after = time.monotonic() - started
    assert sum(map(a_meaningful, events)) == 4
    assert headers_after >= 0.3, "the status line came before head_delay"
    assert headers_after < 0.3 + 1.0  # 1 s: a starved server thread, not a hang
    assert done_after - headers_after < PROMPT, "the body is not held back as well"


# --------------------------------------------------------------------------- faults


@pytest.mark.parametrize("status", [529, 429])
def test_anthropic_http_errors(
    server: LoopbackServer, aclient: anthropic.Anthropic, status: int
) -> None:
    server.script("k", [HttpError(status=status, headers=(("retry-after", "1"),))])
    with pytest.raises(anthropic.APIStatusError) as info:
        a_stream(aclient, "k")
    err = info.value
    assert err.status_code == status
    assert err.response.headers["retry-after"] == "1"
    expected = {529: "overloaded_error", 429: "rate_limit_error"}[status]
    assert err.response.json() == {
        "type": "error",
        "error": {"type": expected, "message": err.response.json()["error"]["message"]},
    }
    if status == 429:
        assert isinstance(err, anthropic.RateLimitError)
    assert server.requests[0].status == status


@pytest.mark.parametrize("status", [529, 429])
def test_openai_http_errors(server: LoopbackServer, oclient: openai.OpenAI, status: int) -> None:
    server.script("k", [HttpError(status=status, headers=(("retry-after", "1"),))])
    with pytest.raises(openai.APIStatusError) as info:
        o_stream(oclient, "k")
    err = info.value
    assert err.status_code == status
    assert err.response.headers["retry-after"] == "1"
    assert set(err.response.json()["error"]) >= {"message", "type", "code"}
    assert isinstance(err, openai.RateLimitError if status == 429 else openai.InternalServerError)


@pytest.mark.parametrize("n", [1, 2])
def test_anthropic_stall_after_events(server: LoopbackServer, n: int) -> None:
    server.script("k", [StallAfterEvents(n=n)])
    client = anthropic.Anthropic(
        base_url=server.anthropic_base_url, api_key="test", max_retries=0, timeout=STALL_TIMEOUT
    )
    seen = 0
    started = time.monotonic()
    with pytest.raises(TIMEOUT_ERRORS):
        for event in a_stream(client, "k"):
            seen += a_meaningful(event)
    elapsed = time.monotonic() - started
    client.close()
    assert seen == n
    assert STALL_TIMEOUT * 0.9 <= elapsed < STALL_TIMEOUT + 1.0
    assert server.wait_idle(2.0)
    assert server.requests[0].connection_closed_by in ("fin", "rst")


@pytest.mark.parametrize("n", [1, 3])
def test_openai_stall_after_events(server: LoopbackServer, n: int) -> None:
    server.script("k", [StallAfterEvents(n=n, recording="text_medium")])
    client = openai.OpenAI(
        base_url=server.openai_base_url, api_key="test", max_retries=0, timeout=STALL_TIMEOUT
    )
    seen = 0
    started = time.monotonic()
    with pytest.raises(TIMEOUT_ERRORS):
        for chunk in o_stream(client, "k"):
            seen += o_meaningful(chunk)
    elapsed = time.monotonic() - started
    client.close()
    assert seen == n
    assert STALL_TIMEOUT * 0.9 <= elapsed < STALL_TIMEOUT + 1.0
    assert server.wait_idle(2.0)


@pytest.mark.parametrize("n", [1, 2])
def test_drop_after_events_resets_mid_body(
    server: LoopbackServer, aclient: anthropic.Anthropic, oclient: openai.OpenAI, n: int
) -> None:
    server.script("a", [DropAfterEvents(n=n)])
    server.script("o", [DropAfterEvents(n=n)])
    seen = 0
    with pytest.raises(CONNECTION_ERRORS):
        for event in a_stream(aclient, "a"):
            seen += a_meaningful(event)
    assert seen == n
    seen = 0
    with pytest.raises(CONNECTION_ERRORS):
        for chunk in o_stream(oclient, "o"):
            seen += o_meaningful(chunk)
    assert seen == n
    assert [r.connection_closed_by for r in server.requests] == ["server_close", "server_close"]


@pytest.mark.parametrize("end", ["complete", "cut"])
def test_truncate_after_blocks_sends_exactly_n_blocks_then_ends_the_body(
    server: LoopbackServer, end: str
) -> None:
    tool_use = recordings.load("anthropic", "tool_use")
    # Block 13 is the tool's content_block_stop, not a meaningful event: only a count of
    # raw blocks can cut between the last argument delta (12) and that stop.
    for n in (0, 12, 13, len(tool_use.blocks)):
        server.script("t", [TruncateAfterBlocks(n=n, recording="tool_use", end=end)])
        with connect(server) as sock:
            sock.sendall(
                raw_request(
                    "/v1/messages", valid_body("/v1/messages", stream=True), {"x-loopback-key": "t"}
                )
            )
            reader = sock.makefile("rb")
            assert int(reader.readline().split()[1]) == 200
            while reader.readline().strip():
                pass
            body = b""
            ended_cleanly = False
            try:
                while size := int(reader.readline().strip() or b"0", 16):
                    body += reader.read(size)
                    reader.read(2)
                ended_cleanly = reader.read(2) == b"\r\n"
            except ConnectionResetError:
                pass
            reader.close()
        assert body == b"".join(block.raw for block in tool_use.blocks[:n]), n
        assert ended_cleanly == (end == "complete"), n
    assert server.wait_idle(2.0)
    closed_by = "server_close" if end == "cut" else "fin"
    assert [r.connection_closed_by for r in server.requests] == [closed_by] * 4


def test_truncate_after_blocks_gives_a_plain_request_the_completion_so_far(
    server: LoopbackServer, aclient: anthropic.Anthropic
) -> None:
    server.script("t", [TruncateAfterBlocks(n=6, recording="tool_use")])
    message = aclient.messages.create(
        model="claude-loopback",
        max_tokens=64,
        messages=MESSAGES,  # type: ignore[arg-type]
        extra_headers={"x-loopback-key": "t"},
    )
    # Six blocks hold the text block but not the tool_use block that follows it.
    assert [block.type for block in message.content] == ["text"]
    assert message.stop_reason is None


@pytest.mark.parametrize("after", [0, 2])
def test_malformed_event_raises_json_error(
    server: LoopbackServer, aclient: anthropic.Anthropic, oclient: openai.OpenAI, after: int
) -> None:
    server.script("a", [MalformedEvent(after_events=after)])
    server.script("o", [MalformedEvent(after_events=after)])
    seen = 0
    with pytest.raises(json.JSONDecodeError):
        for event in a_stream(aclient, "a"):
            seen += a_meaningful(event)
    assert seen == after
    seen = 0
    with pytest.raises(json.JSONDecodeError):
        for chunk in o_stream(oclient, "o"):
            seen += o_meaningful(chunk)
    assert seen == after


def test_unknown_recording_is_a_clear_400(
    server: LoopbackServer, aclient: anthropic.Anthropic
) -> None:
    server.script("k", [Healthy(recording="text_long")])  # an OpenAI-only recording
    with pytest.raises(anthropic.BadRequestError, match="no recording 'text_long' for anthropic"):
        a_stream(aclient, "k")


def test_pings_only_sends_keep_alives(server: LoopbackServer) -> None:
    server.script("a", [PingsOnly(interval=0.02, after_events=1)])
    server.script("o", [PingsOnly(interval=0.02)])
    for path, key, ping in [
        ("/v1/messages", "a", b'event: ping\ndata: {"type": "ping"}\n\n'),
        ("/v1/chat/completions", "o", b": keep-alive\n\n"),
    ]:
        with connect(server) as sock:
            sock.sendall(raw_request(path, valid_body(path, stream=True), {"x-loopback-key": key}))
            received = b""
            deadline = time.monotonic() + 0.3
            while time.monotonic() < deadline:
                sock.settimeout(max(deadline - time.monotonic(), 0.001))
                try:
                    received += sock.recv(65536)
                except TimeoutError:
                    break
        assert received.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"transfer-encoding: chunked" in received
        provider = "anthropic" if key == "a" else "openai"
        prefix = recordings.load(provider, "text_basic").prefix(1 if key == "a" else 0)
        pings = received.count(ping) - sum(b.raw == ping for b in prefix)
        assert pings >= 5
        assert b"0\r\n\r\n" not in received  # the body never ends


# --------------------------------------------------------------------------- scripting


def test_faults_are_taken_per_key_then_model_then_default(
    server: LoopbackServer, oclient: openai.OpenAI
) -> None:
    server.script("k", [HttpError(status=401), StallBeforeHeaders()])
    server.script("by-model", [HttpError(status=403)])
    server.script(None, [HttpError(status=400)])
    assert server.pending("k") == (HttpError(status=401), StallBeforeHeaders())

    def status(model: str, key: str | None = None) -> int:
        headers = {"x-loopback-key": key} if key else {}
        try:
            oclient.chat.completions.create(model=model, messages=MESSAGES, extra_headers=headers)  # type: ignore[arg-type]
        except openai.APIStatusError as err:
            return err.status_code
        return 200

    assert status("by-model", key="k") == 401  # the header wins over the model
    assert status("by-model") == 403
    assert status("by-model") == 200  # its script is used up: Healthy
    assert status("other") == 400
    assert status("other") == 200
    assert status("other", key="never-scripted") == 200
    assert server.pending("k") == (StallBeforeHeaders(),)
    keys = [(r.key, r.fault, r.status) for r in server.requests]
    assert keys == [
        ("k", HttpError(status=401), 401),
        ("by-model", HttpError(status=403), 403),
        ("by-model", Healthy(), 200),
        (None, HttpError(status=400), 400),
        (None, Healthy(), 200),
        ("never-scripted", Healthy(), 200),
    ]


def test_keep_alive_serves_pipelined_requests_on_one_connection(server: LoopbackServer) -> None:
    server.script("k", [HttpError(status=429), Healthy()])
    with connect(server) as sock:
        request = raw_request("/v1/messages", valid_body("/v1/messages"), {"x-loopback-key": "k"})
        sock.sendall(request + request)  # both at once: the second waits in the buffer
        reader = sock.makefile("rb")
        first = read_response(reader)
        second = read_response(reader)
        reader.close()
    assert first[0] == 429 and first[1]["request-id"] == "req_loopback_0"
    assert json.loads(first[2])["error"]["type"] == "rate_limit_error"
    assert second[0] == 200 and json.loads(second[2])["content"][0]["text"] == "Hello there!"
    assert server.wait_idle(2.0)
    [conn] = server.connection_log
    assert conn.request_indexes == (0, 1) and conn.keys == ("k",)


def test_unknown_path_is_404_in_the_callers_shape(server: LoopbackServer) -> None:
    with connect(server) as sock:
        reader = sock.makefile("rb")
        sock.sendall(raw_request("/v1/nope", {}, {"anthropic-version": "2023-06-01"}))
        status, _, body = read_response(reader)
        assert status == 404 and json.loads(body)["error"]["type"] == "not_found_error"
        sock.sendall(raw_request("/v1/embeddings", {}, {"authorization": "Bearer x"}))
        status, _, body = read_response(reader)
        assert status == 404 and json.loads(body)["error"]["type"] == "invalid_request_error"
        reader.close()
    assert [r.fault for r in server.requests] == [None, None]


# --------------------------------------------------------------------------- accounting


def test_connection_counts_return_to_zero_after_clients_close(server: LoopbackServer) -> None:
    aclient = anthropic.Anthropic(base_url=server.anthropic_base_url, api_key="t", max_retries=0)
    oclient = openai.OpenAI(base_url=server.openai_base_url, api_key="t", max_retries=0)
    for _ in range(3):
        list(a_stream(aclient, "x"))
        list(o_stream(oclient, "x"))
    assert server.open_connections >= 1  # pooled keep-alive connections stay open
    aclient.close()
    oclient.close()
    assert server.wait_idle(2.0)
    assert server.open_connections == 0
    assert server.connections_opened == server.connections_closed >= 2
    assert all(c.closed_by in ("fin", "rst") for c in server.connection_log)
    assert server.requests_received == 6


def test_client_closing_a_stalled_stream_is_noticed_fast(
    server: LoopbackServer, aclient: anthropic.Anthropic
) -> None:
    server.script("k", [StallAfterHeaders()])
    stream = a_stream(aclient, "k")  # returns once the headers are in
    assert server.requests[0].status == 200
    closed_at = time.monotonic()
    stream.close()
    assert server.wait_for_request_closed(0, timeout=1.0)
    [record] = server.requests
    assert record.connection_closed_by in ("fin", "rst")
    assert record.connection_closed_at is not None
    assert record.connection_closed_at - closed_at < 0.1


@pytest.mark.parametrize("how", ["fin", "rst"])
def test_raw_client_fin_and_rst_during_stall_before_headers(
    server: LoopbackServer, how: str
) -> None:
    server.script(None, [StallBeforeHeaders()])
    sock = connect(server)
    sock.sendall(raw_request("/v1/messages", valid_body("/v1/messages", stream=True)))
    assert server.wait_for_requests(1, timeout=2.0)
    assert server.requests[0].status is None
    if how == "rst":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    # Close from another thread, as a watchdog would.
    closer = threading.Thread(target=sock.close)
    closed_at = time.monotonic()
    closer.start()
    closer.join()
    assert server.wait_idle(1.0)
    [conn] = server.connection_log
    assert conn.closed_by == how
    assert conn.closed_at is not None and conn.closed_at - closed_at < 0.1


def test_stop_closes_connections_and_ends_the_thread() -> None:
    server = LoopbackServer().start()
    server.script(None, [StallBeforeHeaders()])
    with connect(server) as sock:
        sock.sendall(raw_request("/v1/chat/completions", valid_body("/v1/chat/completions")))
        assert server.wait_for_requests(1, timeout=2.0)
        server.stop()
        assert sock.recv(1) == b""  # closed by the server, nothing sent
    assert server.open_connections == 0
    assert server.connection_log[0].closed_by == "server_close"
    assert not any(t.name == "loopback-server" for t in threading.enumerate())
    server.stop()  # idempotent
    with pytest.raises(RuntimeError):
        server.start()


def test_faults_print_and_validate() -> None:
    assert repr(StallAfterEvents(n=2)) == "StallAfterEvents(n=2, recording='text_basic')"
    assert repr(StallBeforeHeaders()) == "StallBeforeHeaders()"
    error = HttpError(status=429, headers=[("retry-after", "1")])  # type: ignore[arg-type]
    assert error.headers == (("retry-after", "1"),)
    assert hash(error) == hash(HttpError(status=429, headers=(("retry-after", "1"),)))
    with pytest.raises(ValueError):
        StallAfterEvents(n=-1)
    with pytest.raises(ValueError):
        PingsOnly(interval=0)
    with pytest.raises(ValueError):
        TruncateAfterBlocks(n=1, end="stall")
    with pytest.raises(ValueError):
        HttpError(headers=(("x", "a\r\nb"),))
    with pytest.raises(TypeError):
        Healthy("text_basic")  # type: ignore[misc]
    with pytest.raises(TypeError):
        LoopbackServer().script(None, ["not a fault"])  # type: ignore[list-item]
