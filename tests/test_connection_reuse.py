"""A completed stream leaves its connection in the client's pool, for the next run.

The openai SDK stops reading a stream at ``data: [DONE]`` and closes the response
before the body's last chunk (the chunked-encoding terminator, sent right after it) has
been read; httpcore then cannot tell that the body ended and drops the connection. Every
OpenAI run would open a new connection (a new TLS handshake against the real API). Here
consecutive runs on one engine must share one connection, on every wire API and driver,
and a stalled stream's connection must still be dropped (its body never ended).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import openai
import pytest

from lifecycle import RetryPolicy, StreamEngine, Timeouts
from lifecycle.adapters import Route
from providers import AnthropicMessages, OpenAIChatCompletions, OpenAIResponses
from providers.loopback import Healthy, LoopbackServer, StallAfterEvents

pytestmark = pytest.mark.timeout(60)

MESSAGES = [{"role": "user", "content": "Hi"}]
RUNS = 4

WIRE_APIS: dict[str, Callable[[LoopbackServer, str, bool], Route]] = {
    "anthropic": lambda server, model, is_async: AnthropicMessages(
        lambda: (anthropic.AsyncAnthropic if is_async else anthropic.Anthropic)(
            base_url=server.anthropic_base_url, api_key="test"
        ),
        model=model,
    ),
    "chat": lambda server, model, is_async: OpenAIChatCompletions(
        lambda: (openai.AsyncOpenAI if is_async else openai.OpenAI)(
            base_url=server.openai_base_url, api_key="test"
        ),
        model=model,
    ),
    "responses": lambda server, model, is_async: OpenAIResponses(
        lambda: (openai.AsyncOpenAI if is_async else openai.OpenAI)(
            base_url=server.openai_base_url, api_key="test"
        ),
        model=model,
    ),
}


@pytest.fixture(scope="module")
def server() -> Iterator[LoopbackServer]:
    with LoopbackServer() as srv:
        yield srv


def _engine(
    server: LoopbackServer, wire: str, model: str, *, is_async: bool, stale: float = 10
) -> StreamEngine:
    # A generous stale clock where nothing stalls: a first run's SDK parses its first
    # events slowly (its models are built on first use), and a stall detected while the
    # body's end is being drained drops the connection, as it should.
    return StreamEngine(
        routes=[WIRE_APIS[wire](server, model, is_async)],
        timeouts=Timeouts(first_token=10, stale=stale, total=30),
        retry=RetryPolicy(max_attempts=2, initial_backoff=0, max_backoff=0),
    )


def _drive(engine: StreamEngine, *, is_async: bool, runs: int) -> list[str]:
    states: list[str] = []
    if is_async:

        async def main() -> None:
            for _ in range(runs):
                async with engine.astream(messages=MESSAGES, max_tokens=64) as run:
                    async for _event in run:
                        pass
                states.append(run.state)
            await engine.aclose()

        asyncio.run(main())
    else:
        for _ in range(runs):
            with engine.stream(messages=MESSAGES, max_tokens=64) as run:
                for _event in run:
                    pass
            states.append(run.state)
        engine.close()
    return states


def _connections_of(server: LoopbackServer, model: str) -> list[int]:
    return [r.connection_id for r in server.requests if r.model == model]


@pytest.mark.parametrize("driver", ["sync", "async"])
@pytest.mark.parametrize("wire", sorted(WIRE_APIS))
def test_consecutive_runs_share_one_connection(
    server: LoopbackServer, wire: str, driver: str
) -> None:
    model = f"reuse-{wire}-{driver}"
    server.script(model, [Healthy()] * RUNS)
    engine = _engine(server, wire, model, is_async=driver == "async")
    assert _drive(engine, is_async=driver == "async", runs=RUNS) == ["completed"] * RUNS
    connections = _connections_of(server, model)
    assert len(connections) == RUNS
    assert len(set(connections)) == 1, f"a new connection per run: {connections}"


@pytest.mark.parametrize("driver", ["sync", "async"])
@pytest.mark.parametrize("wire", sorted(WIRE_APIS))
def test_a_stalled_streams_connection_is_not_reused(
    server: LoopbackServer, wire: str, driver: str
) -> None:
    """The stalled attempt's socket was shut down: the retry must go out on another
    connection, and the run still completes."""
    model = f"stall-{wire}-{driver}"
    server.script(model, [StallAfterEvents(n=1), Healthy()])
    engine = _engine(server, wire, model, is_async=driver == "async", stale=0.3)
    assert _drive(engine, is_async=driver == "async", runs=1) == ["completed"]
    connections = _connections_of(server, model)
    assert len(connections) == 2 and connections[0] != connections[1], connections


def test_closing_a_response_early_never_waits_for_the_rest(server: LoopbackServer) -> None:
    """Closing a stream whose body is still coming (the caller stopped reading) must not
    wait for the body: the connection is dropped at once, as before."""
    import time

    model = "early-close"
    server.script(model, [Healthy(drip=0.5)])
    client: Any = openai.OpenAI(base_url=server.openai_base_url, api_key="test", max_retries=0)
    route = OpenAIChatCompletions(lambda: client, model=model)
    prepared = route.prepare_client(client)
    stream = prepared.chat.completions.create(
        model=model, messages=MESSAGES, max_tokens=64, stream=True
    )
    next(iter(stream))
    started = time.monotonic()
    stream.close()
    assert time.monotonic() - started < 0.4
    prepared.close()
