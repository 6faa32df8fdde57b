"""Fuzz: byte mutations of the recorded provider streams, replayed through the loopback
server to the real SDKs. Whatever arrives, a run ends in a final state with a typed
outcome, within its time bound, with no leaked connection and no engine crash."""

from __future__ import annotations

import os
from typing import Any

import anthropic
import openai
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from lifecycle import RetryPolicy, StreamEngine, StreamFailed, Timeouts
from providers import AnthropicMessages, OpenAIChatCompletions
from providers.loopback import Healthy, LoopbackServer, RawResponse, recordings

MESSAGES = [{"role": "user", "content": "Hi"}]
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "200"))
COUNT = {"examples": 0, "completed": 0, "failed": 0}


@pytest.fixture(scope="module")
def server() -> Any:
    with LoopbackServer() as srv:
        yield srv


BODIES = {
    provider: [
        b"".join(block.raw for block in recordings.load(provider, name).blocks)
        for name in recordings.available(provider)
    ]
    for provider in ("anthropic", "openai")
}


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, bytes, str]:
    provider = draw(st.sampled_from(["anthropic", "openai"]))
    body = bytearray(draw(st.sampled_from(BODIES[provider])))
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "delete", "insert", "truncate", "duplicate"]))
        at = draw(st.integers(0, max(0, len(body) - 1)))
        if kind == "flip" and body:
            body[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "delete":
            del body[at : at + draw(st.integers(1, 64))]
        elif kind == "insert":
            body[at:at] = draw(st.binary(min_size=1, max_size=32))
        elif kind == "truncate":
            del body[at:]
        elif kind == "duplicate":
            body[at:at] = body[at : at + draw(st.integers(1, 200))]
    end = draw(st.sampled_from(["complete", "cut"]))
    return provider, bytes(body), end


@settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(case=mutated())
@pytest.mark.timeout(600)
def test_mutated_streams_end_typed_without_leaks(
    server: LoopbackServer, case: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    provider, body, end = case
    COUNT["examples"] += 1
    key = f"fuzz-{COUNT['examples']}"
    note(f"{provider}, {len(body)} bytes, end={end}")
    server.script(key, [RawResponse(body=body, end=end), Healthy()])
    headers = {"x-loopback-key": key}
    route: Any = (
        AnthropicMessages(
            lambda: anthropic.Anthropic(
                base_url=server.anthropic_base_url, api_key="t", default_headers=headers
            ),
            model="claude-fuzz",
        )
        if provider == "anthropic"
        else OpenAIChatCompletions(
            lambda: openai.OpenAI(
                base_url=server.openai_base_url, api_key="t", default_headers=headers
            ),
            model="gpt-fuzz",
        )
    )
    engine = StreamEngine(
        routes=[route],
        timeouts=Timeouts(connect=2, first_token=1.0, stale=1.0, total=10),
        retry=RetryPolicy(max_attempts=2, initial_backoff=0.0),
    )
    with engine:
        run = engine.stream(messages=MESSAGES, max_tokens=16)
        try:
            with run:
                for _ in run:
                    pass
        except StreamFailed as failed:
            note(f"failed: {failed}")
            assert failed.attempts
    note(" -> ".join(f"{t.source}>{t.dest}" for t in run.history))
    assert run.state in ("completed", "failed")
    assert run.history[-1].dest == run.state
    for attempt in run.attempts:
        assert attempt.outcome in ("completed", "dropped", "error", "stale")
        if attempt.outcome == "error":
            # "unexpected" means an exception nobody classified: an engine bug.
            assert not (attempt.reason or "").startswith("unexpected"), attempt.reason
    COUNT[run.state] += 1
    assert server.wait_idle(3.0), f"leaked connections: {server.open_connections}"
    if COUNT["examples"] == EXAMPLES:
        with capsys.disabled():
            print(
                f"\nfuzz: {COUNT['examples']} mutated streams replayed "
                f"({COUNT['completed']} completed after retry, {COUNT['failed']} failed typed)"
            )
