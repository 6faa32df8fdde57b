"""``max_event_bytes`` holds on decoded bytes: a compressed body is judged by what it
inflates to, not by what crossed the wire.

A server may compress its stream whatever the request asked for; 64 MiB of one SSE line
gzip to about 64 KiB. The engine must refuse such a line as an oversized event (outcome
``dropped``, ``OversizedEvent``), before ``first_token`` fires, and without ever holding
the inflated line: the memory the run allocates stays a small multiple of the budget.
Both providers (and OpenAI Responses), both drivers, gzip and deflate, the real SDKs on
whichever HTTP stack the venv has (httpx 0.28 decodes a chunk whole, httpx2 in pieces).
"""

from __future__ import annotations

import gzip
import tracemalloc
from typing import Any

import pytest
from conftest import MESSAGES, ProviderKit, make_route, unique_model

from lifecycle import RetryPolicy, StreamEngine, StreamFailed, Timeouts
from providers import OpenAIResponses
from providers.loopback import (
    CompressedLine,
    Healthy,
    LoopbackServer,
    RawResponse,
    format_script,
    parse_script,
    recordings,
)

pytestmark = pytest.mark.timeout(120)

BUDGET = 1024 * 1024
LINE = 64 * 1024 * 1024
MEMORY_BOUND = 4 * BUDGET + 16 * 1024 * 1024
"""What a refused run may allocate at its peak: the budget's worth of line in the SDK's
buffer, copies of it while the SDK joins pieces, and the stack's own working set."""
TIMEOUTS = Timeouts(connect=5, first_token=20, stale=20, total=60)
"""Clocks far beyond the refusal, so an outcome of ``stale`` means the line was read (or
decoded) until a clock fired rather than refused."""
RETRY = RetryPolicy(max_attempts=2, initial_backoff=0.0)


def _refused(run: Any, error: BaseException | None, peak: int) -> None:
    assert isinstance(error, StreamFailed), repr(error)
    assert "oversized event" in str(error), str(error)
    (first,) = run.attempts  # an oversized event would come again: not retried
    assert first.outcome == "dropped", first.outcome
    assert first.diagnostics.error_type == "OversizedEvent", first.diagnostics.error_type
    assert peak < MEMORY_BOUND, f"peak {peak / 2**20:.1f} MiB for a {LINE // 2**20} MiB line"


def _traced(call: Any) -> tuple[Any, int]:
    tracemalloc.start()
    try:
        result = call()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_compressed_huge_line_is_refused_on_decoded_bytes(
    provider: ProviderKit, encoding: str
) -> None:
    provider.script([CompressedLine(size=LINE, encoding=encoding), Healthy()])
    engine = provider.engine(
        timeouts=TIMEOUTS, retry=RETRY, with_other=False, max_event_bytes=BUDGET
    )
    (run, seen), peak = _traced(lambda: provider.run_to_end(engine))
    _refused(run, seen.error, peak)
    (request,) = provider.requests()
    assert request.fault == CompressedLine(size=LINE, encoding=encoding)


def test_the_line_is_refused_after_meaningful_events_too(provider: ProviderKit) -> None:
    provider.script([CompressedLine(size=LINE, after_events=2), Healthy()])
    engine = provider.engine(
        timeouts=TIMEOUTS, retry=RETRY, with_other=False, max_event_bytes=BUDGET
    )
    (run, seen), peak = _traced(lambda: provider.run_to_end(engine))
    _refused(run, seen.error, peak)
    assert [event.type for event in seen.events][:1] == ["text"]


def test_the_default_budget_holds_on_decoded_bytes(provider: ProviderKit) -> None:
    provider.script([CompressedLine(size=LINE), Healthy()])
    engine = provider.engine(timeouts=TIMEOUTS, retry=RETRY, with_other=False)
    run, seen = provider.run_to_end(engine)
    assert isinstance(seen.error, StreamFailed) and "oversized event" in str(seen.error)
    assert run.attempts[0].diagnostics.error_type == "OversizedEvent"


@pytest.mark.parametrize("driver", ["sync", "async"])
def test_responses_refuses_a_compressed_huge_line(server: LoopbackServer, driver: str) -> None:
    import asyncio

    model = unique_model("openai")
    route = make_route(
        "openai", server, model, is_async=driver == "async", route_class=OpenAIResponses
    )
    server.script(model, [CompressedLine(size=LINE), Healthy()])
    engine = StreamEngine(routes=[route], timeouts=TIMEOUTS, retry=RETRY, max_event_bytes=BUDGET)

    def sync_run() -> tuple[Any, BaseException | None]:
        run = engine.stream(messages=MESSAGES, max_tokens=64)
        try:
            with run:
                for _ in run:
                    pass
        except StreamFailed as exc:
            return run, exc
        return run, None

    async def async_run() -> tuple[Any, BaseException | None]:
        run = engine.astream(messages=MESSAGES, max_tokens=64)
        try:
            async with run:
                async for _ in run:
                    pass
        except StreamFailed as exc:
            await engine.aclose()
            return run, exc
        await engine.aclose()
        return run, None

    try:
        if driver == "async":
            (run, error), peak = _traced(lambda: asyncio.run(async_run()))
        else:
            (run, error), peak = _traced(sync_run)
    finally:
        engine.close()
    _refused(run, error, peak)
    assert server.wait_idle(5.0)


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_compressed_healthy_stream_still_completes(provider: ProviderKit, encoding: str) -> None:
    """Many small events that inflate to more than the budget in all: each is progress,
    so the budget (per stretch without a meaningful event) is never reached."""
    recording = "text_long" if provider.name == "openai" else "thinking_tool_use"
    body = b"".join(
        block.raw
        for block in recordings.load(provider.name, recording).blocks  # type: ignore[arg-type]
    )
    budget = 4096
    assert len(body) > budget  # the whole answer is more than one budget
    compressed = gzip.compress(body) if encoding == "gzip" else _deflate(body)
    headers = (("content-type", "text/event-stream"), ("content-encoding", encoding))
    provider.script([RawResponse(headers=headers, body=compressed)])
    engine = provider.engine(
        timeouts=TIMEOUTS, retry=RETRY, with_other=False, max_event_bytes=budget
    )
    run, seen = provider.run_to_end(engine)
    assert seen.error is None, repr(seen.error)
    assert run.state == "completed"
    assert seen.text() == provider.text(recording)
    assert seen.types[-1] == "stop"


def _deflate(data: bytes) -> bytes:
    import zlib

    return zlib.compress(data)


def test_the_fault_is_a_script_step() -> None:
    faults = parse_script("compressed_line:1048576:encoding=deflate:after_events=2")
    assert faults == (CompressedLine(size=1048576, encoding="deflate", after_events=2),)
    assert parse_script(format_script(faults)) == faults
    with pytest.raises(ValueError, match="encoding"):
        CompressedLine(encoding="br")
