"""What only the asyncio driver has: a timeout around the caller's ``async for``, an
interrupt from the loop itself, a cancellation that lands in the middle of a cleanup,
and the check for a sync client factory.

Every scenario the two drivers share (faults, interrupts, policy, diagnostics) is in the
``test_driver_*`` modules, which run each one with both; so is the caller's cancellation
of its task (``test_driver_interrupt``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anthropic
import openai
import pytest
from bounds import PROMPT

from lifecycle import Interrupted, RetryPolicy, StreamEvent, StreamFailed, Timeouts
from lifecycle.adapters import AsyncAttemptStream, Route
from providers import AnthropicMessages, OpenAIChatCompletions
from providers.loopback import Healthy, HttpError, LoopbackServer, StallAfterEvents

pytestmark = pytest.mark.timeout(30)
async_only = pytest.mark.parametrize("driver", ["async"])

BOUND = PROMPT
MESSAGES = [{"role": "user", "content": "Hi"}]
TIMEOUTS = Timeouts(connect=5, first_token=10, stale=10, total=30)
RETRY = RetryPolicy(max_attempts=3, initial_backoff=0.0, max_backoff=0.0)


@async_only
def test_a_timeout_around_the_loop_cancels_the_run(provider: Any, driver: str) -> None:
    """``asyncio.timeout`` cancels the task inside: the run ends ``cancelled``, its
    connection is closed, and the caller gets its ``TimeoutError``."""
    engine = provider.engine(timeouts=TIMEOUTS, retry=RETRY)
    provider.script([StallAfterEvents(n=1)])

    async def main() -> tuple[Any, list[str], float]:
        kinds: list[str] = []
        run = engine.astream(messages=MESSAGES, max_tokens=64)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3), run:
                async for event in run:
                    kinds.append(event.type)
        return run, kinds, time.monotonic()

    started = time.monotonic()
    run, kinds, raised_at = provider.run_coroutine(main())
    assert raised_at - started < 0.3 + 0.2
    assert kinds == ["text"]
    assert run.state == "cancelled"
    assert [a.outcome for a in run.attempts] == ["interrupted"]
    (request,) = provider.requests()
    assert provider.server.wait_for_request_closed(request.index, timeout=2.0)
    assert all(s.thread == provider.owner for s in run.attempts[0].diagnostics.cleanup)


@async_only
def test_interrupt_from_the_loop_itself(provider: Any, driver: str) -> None:
    """``run.interrupt()`` called on the run's own loop (a callback, another task) stops
    a backoff as promptly as one from another thread."""
    retry = RetryPolicy(max_attempts=3, initial_backoff=5.0, max_backoff=5.0, jitter=0.0)
    engine = provider.engine(timeouts=TIMEOUTS, retry=retry)
    provider.script([HttpError(status=529), Healthy()])

    async def main() -> tuple[Any, float]:
        run = engine.astream(messages=MESSAGES, max_tokens=64)
        called: list[float] = []

        def interrupt() -> None:
            called.append(time.monotonic())
            run.interrupt()

        asyncio.get_running_loop().call_later(0.3, interrupt)
        with pytest.raises(Interrupted):
            async with run:
                async for _ in run:
                    pytest.fail("no event before the interrupt")
        return run, time.monotonic() - called[0]

    run, latency = provider.run_coroutine(main())
    assert latency <= BOUND, f"Interrupted raised {1000 * latency:.1f} ms after interrupt()"
    assert run.state == "cancelled"
    assert run.history[-2].dest == "retrying"
    time.sleep(0.2)
    assert len(provider.requests()) == 1


@pytest.mark.parametrize("name", ["anthropic", "openai"])
def test_a_sync_factory_with_astream_names_the_route(
    make_engine: Any, server: Any, name: str
) -> None:
    if name == "anthropic":
        route: Any = AnthropicMessages(
            lambda: anthropic.Anthropic(base_url=server.anthropic_base_url, api_key="test"),
            model="claude-sync-factory",
        )
    else:
        route = OpenAIChatCompletions(
            lambda: openai.OpenAI(base_url=server.openai_base_url, api_key="test"),
            model="gpt-sync-factory",
        )
    engine = make_engine([route], timeouts=TIMEOUTS, retry=RETRY)

    async def main() -> None:
        async for _ in engine.astream(messages=MESSAGES, max_tokens=64):
            pytest.fail("no event can come from a client of the wrong flavour")

    with pytest.raises(StreamFailed, match=route.model) as failed:
        make_engine.loop.run_until_complete(main())
    assert "TypeError" in str(failed.value) and "async" in str(failed.value)
    assert not [r for r in server.requests if r.model == route.model]


class SlowCloseAsyncAnthropic(anthropic.AsyncAnthropic):
    """An SDK client whose close takes a moment (as closing pooled connections does): a
    cancellation can land while cleanup awaits it. ``with_options`` keeps the subclass."""

    async def close(self) -> None:
        await asyncio.sleep(0.02)
        await super().close()


class SlowCloseAsyncOpenAI(openai.AsyncOpenAI):
    async def close(self) -> None:
        await asyncio.sleep(0.02)
        await super().close()


def slow_close_factory(name: str, server: LoopbackServer) -> Any:
    if name == "anthropic":
        return lambda: SlowCloseAsyncAnthropic(base_url=server.anthropic_base_url, api_key="k")
    return lambda: SlowCloseAsyncOpenAI(base_url=server.openai_base_url, api_key="k")


@async_only
@pytest.mark.parametrize(
    "fault", [HttpError(status=529), StallAfterEvents(n=1)], ids=["529", "stale"]
)
def test_a_cancel_while_cleanup_closes_the_client_still_ends_cancelled(
    provider: Any, driver: str, fault: Any
) -> None:
    """The caller's task is cancelled while the engine, cleaning up after a fault, awaits
    the retired client's close. The run must still end ``cancelled``, with its cleanup
    recorded, no retry sent, and ``CancelledError`` re-raised."""
    provider.route(factory=slow_close_factory(provider.name, provider.server))
    provider.script([fault, Healthy()])
    consumer: list[asyncio.Task[None]] = []
    cancelled: list[str] = []

    def on_transition(transition: Any) -> None:
        # Called on the run's own task, at the start of the first cleanup: the cancel is
        # delivered at the task's next suspension, inside the retired client's close.
        if transition.dest == "cleanup" and not cancelled:
            cancelled.append(transition.source)
            asyncio.get_running_loop().call_soon(consumer[0].cancel)

    timeouts = Timeouts(connect=5, first_token=0.3, stale=0.3, total=30)
    engine = provider.make_engine(
        [provider.route()], timeouts=timeouts, retry=RETRY, on_transition=on_transition
    )

    async def main() -> Any:
        run = engine.astream(messages=MESSAGES, max_tokens=64)

        async def consume() -> None:
            async with run:
                async for _ in run:
                    pass

        consumer.append(asyncio.create_task(consume()))
        with pytest.raises(asyncio.CancelledError):
            await consumer[0]
        return run

    run = provider.run_coroutine(main())
    assert cancelled == ["dropped" if isinstance(fault, HttpError) else "stale"]
    assert run.state == "cancelled", [t.dest for t in run.history]
    steps = [s.step for s in run.attempts[0].diagnostics.cleanup]
    assert "close" in steps, run.attempts[0].diagnostics.cleanup
    time.sleep(0.2)
    assert len(provider.requests()) == 1, "a retry was sent after the cancel"
    assert_only_the_spare_is_open(provider)


def assert_only_the_spare_is_open(provider: Any) -> None:
    """The attempt's client is closed; the spare (built once its request was out, never
    used) is left for the next run, and closed by the engine's close."""
    provider.settle()
    assert [client.is_closed() for client in provider.built[provider.model]] == [True, False]
    assert provider.clients().current_client is None and provider.clients().has_spare


class SlowClosingStream(AsyncAttemptStream):
    """The adapter's own stream, whose close first calls ``on_close`` and then takes a
    moment (as a close that flushes and releases a pooled connection does)."""

    def __init__(self, inner: AsyncAttemptStream, on_close: Callable[[], None]) -> None:
        self._inner = inner
        self._on_close = on_close
        self.http_status = inner.http_status
        self.headers = inner.headers
        self.socket = inner.socket
        self.closes = 0

    def events(self) -> AsyncIterator[StreamEvent]:
        return self._inner.events()

    async def aclose(self) -> None:
        self.closes += 1
        self._on_close()
        await asyncio.sleep(0.02)
        await self._inner.aclose()
        self.unknown_events = self._inner.unknown_events


def slow_stream_close_route(provider: Any, on_close: Callable[[], None]) -> Route:
    """The provider's route, its streams replaced by ``SlowClosingStream``s."""
    base: Any = AnthropicMessages if provider.name == "anthropic" else OpenAIChatCompletions

    class SlowStreamClose(base):  # type: ignore[misc, valid-type]
        async def aopen(
            self, client: Any, request: Any, timeouts: Any, **kwargs: Any
        ) -> AsyncAttemptStream:
            opened = await super().aopen(client, request, timeouts, **kwargs)
            return SlowClosingStream(opened, on_close)

    route: Route = provider.route(route_class=SlowStreamClose)
    return route


@async_only
def test_a_cancel_while_the_finished_stream_closes_ends_cancelled(
    provider: Any, driver: str
) -> None:
    """The whole answer has arrived; the caller's task is cancelled while the engine closes
    the finished stream. The close is not cut short, the run ends ``cancelled`` (not
    ``completed``: the caller left) with the usual cleanup of its own client, the complete
    message is kept, and ``CancelledError`` reaches the caller."""
    consumer: list[asyncio.Task[Any]] = []
    route = slow_stream_close_route(provider, lambda: consumer[0].cancel())
    provider.script([Healthy()])
    engine = provider.make_engine([route], timeouts=TIMEOUTS, retry=RETRY)
    kinds: list[str] = []

    async def main() -> Any:
        run = engine.astream(messages=MESSAGES, max_tokens=64)

        async def consume() -> None:
            async with run:
                async for event in run:
                    kinds.append(event.type)

        consumer.append(asyncio.create_task(consume()))
        with pytest.raises(asyncio.CancelledError):
            await consumer[0]
        return run

    run = provider.run_coroutine(main())
    assert kinds and kinds[-1] == "stop", kinds
    assert run.state == "cancelled", [t.dest for t in run.history]
    assert [t.dest for t in run.history][-3:] == ["interrupted", "cleanup", "cancelled"]
    assert run.message is not None and run.message.text == provider.text()
    steps = [(s.step, s.detail) for s in run.attempts[0].diagnostics.cleanup]
    assert [name for name, _ in steps] == ["abort", "close_stream", "close", "rebuild"], steps
    assert "deferred" in steps[-1][1]
    (request,) = provider.requests()
    assert provider.server.wait_for_request_closed(request.index, timeout=2.0)
    assert_only_the_spare_is_open(provider)


@async_only
def test_a_second_cancel_during_the_bounded_cleanup_is_not_lost_and_does_not_cut_it(
    provider: Any, driver: str
) -> None:
    """Cancelled mid-stream, then cancelled again while cleanup closes the stream: the
    cleanup still finishes (stream and client closed), the run ends ``cancelled``, and
    the task sees exactly one ``CancelledError``."""
    consumer: list[asyncio.Task[Any]] = []
    route = slow_stream_close_route(provider, lambda: consumer[0].cancel())
    provider.script([StallAfterEvents(n=1)])
    engine = provider.make_engine([route], timeouts=TIMEOUTS, retry=RETRY)

    async def main() -> tuple[Any, float]:
        run = engine.astream(messages=MESSAGES, max_tokens=64)

        async def consume() -> None:
            async with run:
                async for _ in run:
                    consumer[0].cancel()  # lands in the stalled read

        consumer.append(asyncio.create_task(consume()))
        with pytest.raises(asyncio.CancelledError):
            await consumer[0]
        return run, time.monotonic()

    started = time.monotonic()
    run, ended = provider.run_coroutine(main())
    assert run.state == "cancelled", [t.dest for t in run.history]
    assert ended - started < 2.0
    steps = [s.step for s in run.attempts[0].diagnostics.cleanup]
    assert steps == ["abort", "close_stream", "close", "rebuild"], steps
    (request,) = provider.requests()
    assert provider.server.wait_for_request_closed(request.index, timeout=2.0)
    assert_only_the_spare_is_open(provider)
