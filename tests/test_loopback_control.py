"""The loopback server's script grammar and its HTTP control endpoints.

``providers.loopback.parse_script`` reads the small grammar ``lifecycle serve --script``
and ``POST /_loopback/script`` take; the control endpoints are driven over real HTTP.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest

from providers.loopback import (
    CompressedLine,
    DropAfterEvents,
    Healthy,
    HttpError,
    LoopbackServer,
    MalformedEvent,
    PingsOnly,
    ScriptError,
    ServerFault,
    StallAfterEvents,
    StallAfterHeaders,
    StallBeforeHeaders,
    TruncateAfterBlocks,
    format_fault,
    parse_script,
)

STEPS: list[tuple[str, ServerFault]] = [
    ("healthy", Healthy()),
    ("healthy:drip=0.05", Healthy(drip=0.05)),
    ("healthy:head_delay=0.2", Healthy(head_delay=0.2)),
    ("healthy:recording=tool_use", Healthy(recording="tool_use")),
    ("stall_before_headers", StallBeforeHeaders()),
    ("stall_after_headers", StallAfterHeaders()),
    ("stall_after", StallAfterEvents(n=1)),
    ("stall_after:3", StallAfterEvents(n=3)),
    ("pings", PingsOnly()),
    ("pings:0.25", PingsOnly(interval=0.25)),
    ("pings:0.25:after_events=2", PingsOnly(interval=0.25, after_events=2)),
    ("drop_after:2", DropAfterEvents(n=2)),
    ("http", HttpError(status=529)),
    ("http:429", HttpError(status=429)),
    ("malformed", MalformedEvent()),
    ("malformed:1", MalformedEvent(after_events=1)),
    ("truncate_after:12", TruncateAfterBlocks(n=12)),
    ("truncate_after:3:end=cut", TruncateAfterBlocks(n=3, end="cut")),
    ("compressed_line", CompressedLine()),
    (
        "compressed_line:1048576:encoding=deflate:after_events=1",
        CompressedLine(size=1048576, encoding="deflate", after_events=1),
    ),
]


@pytest.mark.parametrize(("step", "fault"), STEPS, ids=[step for step, _ in STEPS])
def test_each_step_names_its_fault_and_formats_back(step: str, fault: ServerFault) -> None:
    assert parse_script(step) == (fault,)
    assert parse_script(format_fault(fault)) == (fault,)


def test_a_script_is_steps_in_order_with_repeats() -> None:
    assert parse_script("stall_after:1,healthy") == (StallAfterEvents(n=1), Healthy())
    assert parse_script(" 2*http:529 , healthy ") == (
        HttpError(status=529),
        HttpError(status=529),
        Healthy(),
    )
    assert parse_script(["stall_after:1", "2*healthy"]) == (
        StallAfterEvents(n=1),
        Healthy(),
        Healthy(),
    )


@pytest.mark.parametrize(
    ("script", "says"),
    [
        ("", "empty"),
        ("healthy,,healthy", "empty step"),
        ("stal_after:1", "unknown fault 'stal_after'"),
        ("stall_after:x", "n must be an integer"),
        ("stall_after:1:2", "at most one"),
        ("http:99", "status must be in 200..599"),
        ("pings:0", "interval must be > 0"),
        ("healthy:colour=red", "no parameter 'colour'"),
        ("healthy:recording=nope", "no such recording"),
        ("0*healthy", "repeat count"),
        ("stall_before_headers:1", "takes no positional"),
    ],
)
def test_a_bad_script_is_a_clear_error(script: str, says: str) -> None:
    with pytest.raises(ScriptError) as caught:
        parse_script(script)
    assert says in str(caught.value)


# ----------------------------------------------------------------- control endpoints


@pytest.fixture
def own_server() -> Iterator[LoopbackServer]:
    # Its own server: the stats are whole-server counts.
    with LoopbackServer() as server:
        yield server


def _call(url: str, body: Any = None, *, raw: bytes | None = None) -> tuple[int, Any]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    request.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


def test_post_script_queues_faults_for_a_key_or_the_default(own_server: LoopbackServer) -> None:
    url = own_server.url + "/_loopback/script"
    status, reply = _call(url, {"key": "k1", "script": "http:529,stall_after:1"})
    assert status == 200
    assert reply == {"key": "k1", "pending": ["http:529", "stall_after:1"]}
    assert own_server.pending("k1") == (HttpError(status=529), StallAfterEvents(n=1))
    status, reply = _call(url, {"key": None, "script": ["2*drop_after:1"]})
    assert (status, reply["pending"]) == (200, ["drop_after:1", "drop_after:1"])
    assert own_server.pending(None) == (DropAfterEvents(n=1),) * 2
    status, reply = _call(url, {"script": "healthy"})
    assert (status, reply["key"]) == (200, None)


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b'{"key": "k", "script": "stal_after:1"}', "unknown fault 'stal_after'"),
        (b'{"key": "k"}', "script"),
        (b'{"key": 3, "script": "healthy"}', "key"),
        (b"not json", "JSON"),
    ],
)
def test_post_script_refuses_a_bad_body_with_a_400(
    own_server: LoopbackServer, body: bytes, says: str
) -> None:
    status, reply = _call(own_server.url + "/_loopback/script", raw=body)
    assert status == 400
    assert says in reply["error"]["message"]
    assert own_server.pending("k") == ()


def test_stats_count_the_provider_traffic_not_the_control_calls(
    own_server: LoopbackServer,
) -> None:
    status, stats = _call(own_server.url + "/_loopback/stats")
    assert (status, stats) == (200, {"opened": 0, "open": 0, "closed": 0, "requests": 0})
    _call(own_server.url + "/_loopback/script", {"key": "k2", "script": "http:529"})
    client = anthropic.Anthropic(base_url=own_server.anthropic_base_url, api_key="test")
    with client, pytest.raises(anthropic.APIStatusError) as caught:
        client.with_options(max_retries=0).messages.create(
            model="claude-x",
            max_tokens=8,
            messages=[{"role": "user", "content": "Hi"}],
            extra_headers={"x-loopback-key": "k2"},
        )
    assert caught.value.status_code == 529
    assert own_server.wait_idle()
    _, stats = _call(own_server.url + "/_loopback/stats")
    assert stats == {"opened": 1, "open": 0, "closed": 1, "requests": 1}
    assert own_server.requests_received == 1 and own_server.connections_opened == 1


def test_control_paths_answer_a_wrong_method_or_path_in_json(own_server: LoopbackServer) -> None:
    status, reply = _call(own_server.url + "/_loopback/script")
    assert status == 405 and "POST" in reply["error"]["message"]
    status, reply = _call(own_server.url + "/_loopback/nothing")
    assert status == 404 and "/_loopback/script" in reply["error"]["message"]
    assert own_server.requests_received == 0


def test_the_readme_grammar_table_parses() -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## The loopback provider server") : readme.index("## CLI")]
    documented = [
        step.split(" ")[0]
        for row in section.splitlines()
        if row.startswith("| `")
        for step in row.split("|")[1].strip().split(" / ")
    ]
    names = {step.split(":")[0].strip("`") for step in documented}
    assert names == {format_fault(fault).split(":")[0] for _, fault in STEPS}
    for name in names:  # every documented step parses with its defaults
        assert len(parse_script(name)) == 1
