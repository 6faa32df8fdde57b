"""Shared fixtures: one loopback server per module, a provider kit per test, leak checks.

Every test gets unique model names (``claude-<hex>``, ``gpt-<hex>``): the loopback
server keys its fault scripts by the request's model, so tests never see each other's
faults, and the server's request and connection logs can be filtered per test.

The ``provider`` kit runs each scenario with both drivers (the ``driver`` fixture):
``sync`` iterates ``engine.stream(...)`` on the test's thread, ``async`` iterates
``engine.astream(...)`` with ``async for`` in a task named ``CONSUMER_TASK`` on an event
loop of the test's own, on the same thread. Test bodies are the same for both; what
differs between the drivers (client flavour, the names cleanup records) is here. A test
for one driver only overrides the fixture: ``@pytest.mark.parametrize("driver", ["async"])``.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anthropic
import openai
import pytest

from lifecycle import (
    AsyncRun,
    LifecycleError,
    RetryPolicy,
    Run,
    StreamEngine,
    StreamEvent,
    Timeouts,
)
from lifecycle._drivers.client_slots import BUILDER_THREAD
from lifecycle._drivers.route_clients import RouteClients
from lifecycle.adapters import Route
from providers import AnthropicMessages, OpenAIChatCompletions
from providers.loopback import ConnectionRecord, LoopbackServer, RequestRecord, recordings

PROVIDERS = ("anthropic", "openai")
DRIVERS = ("sync", "async")
WATCHDOG_THREAD = "lifecycle-watchdog"
SERVER_THREAD = "loopback-server"
ALLOWED_NEW_THREADS = frozenset({WATCHDOG_THREAD, SERVER_THREAD})
MESSAGES = [{"role": "user", "content": "Hi"}]
REQUEST: dict[str, Any] = {"messages": MESSAGES, "max_tokens": 64}
CONSUMER_TASK = "caller"
"""Name of the task that iterates an async run (cleanup records "<thread>/<task>")."""
BREAK = "break"
"""What an ``on_event`` callback returns to leave the caller's loop (``break``)."""

API_MODE = {"anthropic": "anthropic_messages", "openai": "chat_completions"}
REQUEST_ID_HEADER = {"anthropic": "request-id", "openai": "x-request-id"}
API_KEY_ENV = {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY"}
MODEL_PREFIX = {"anthropic": "claude", "openai": "gpt"}

T = TypeVar("T")
OnEvent = Callable[[StreamEvent], "float | str | None"]
"""Called in the caller's loop body with each event. Returns None to go on, a number of
seconds to hold the event (the loop body takes that long: ``time.sleep`` on the sync
driver, ``await asyncio.sleep`` on the async one), or ``BREAK`` to leave the loop."""


def other(provider: str) -> str:
    return "openai" if provider == "anthropic" else "anthropic"


def unique_model(provider: str) -> str:
    # Hex digits only after the prefix: a model name can never contain "test" (the API
    # key), so log checks for the key are not fooled by the model name.
    return f"{MODEL_PREFIX[provider]}-{uuid.uuid4().hex[:16]}"


def make_route(
    provider: str,
    server: LoopbackServer,
    model: str,
    *,
    api_key: str = "test",
    factory: Callable[[], Any] | None = None,
    built: list[Any] | None = None,
    is_async: bool = False,
    route_class: Callable[..., Route] | None = None,
    **route_options: Any,
) -> Route:
    """The provider's route against the loopback server, with the SDK's sync client or
    (``is_async``) its async one; ``built`` collects every client the factory returns,
    in order, so a test can check which ones were closed. ``route_class`` replaces the
    adapter class (a test's subclass of it); ``route_options`` go to the route."""
    if factory is None:
        if provider == "anthropic":
            base = server.anthropic_base_url
            anthropic_cls: Any = anthropic.AsyncAnthropic if is_async else anthropic.Anthropic

            def factory() -> Any:
                return anthropic_cls(base_url=base, api_key=api_key)
        else:
            base = server.openai_base_url
            openai_cls: Any = openai.AsyncOpenAI if is_async else openai.OpenAI

            def factory() -> Any:
                return openai_cls(base_url=base, api_key=api_key)

    inner = factory

    def recording_factory() -> Any:
        client = inner()
        if built is not None:
            built.append(client)
        return client

    cls = route_class or (AnthropicMessages if provider == "anthropic" else OpenAIChatCompletions)
    return cls(recording_factory, model=model, **route_options)


@dataclass
class Timeline:
    """What the caller saw: each event with the time.monotonic() it was received at."""

    events: list[StreamEvent] = field(default_factory=list)
    received_at: list[float] = field(default_factory=list)
    error: BaseException | None = None
    ended_at: float = 0.0
    """When the caller's loop ended (normally, by ``BREAK`` or by an exception)."""
    state_after_loop: str | None = None
    """``run.state`` just after the loop, before the run's context manager exits."""
    interrupt_called_at: float | None = None
    interrupter: str | None = None
    """Name of the thread that called ``run.interrupt()`` (``interrupt_after``)."""

    @property
    def types(self) -> list[str]:
        return [e.type for e in self.events]

    def text(self) -> str:
        return "".join(e.text for e in self.events if e.type == "text")

    def received_before(self, at: float) -> list[tuple[float, StreamEvent]]:
        return [(t, e) for t, e in zip(self.received_at, self.events, strict=True) if t < at]

    def received(self, event: StreamEvent) -> None:
        self.received_at.append(time.monotonic())
        self.events.append(event)


class Interrupter:
    """Calls ``run.interrupt()`` from a timer thread after ``delay`` (if given), and notes
    when and from which thread it did."""

    def __init__(self, run: Any, delay: float | None, timeline: Timeline) -> None:
        self.run = run
        self.timeline = timeline
        self.timer: threading.Timer | None = None
        if delay is not None:
            self.timer = threading.Timer(delay, self._fire)
            self.timer.name = "test-interrupter"

    def _fire(self) -> None:
        self.timeline.interrupter = threading.current_thread().name
        self.timeline.interrupt_called_at = time.monotonic()
        self.run.interrupt()

    def __enter__(self) -> Interrupter:
        if self.timer is not None:
            self.timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer.join()


@pytest.fixture(scope="module")
def server() -> Iterator[LoopbackServer]:
    """One server per test module. (Not per session: tests of the server itself check
    that no "loopback-server" thread outlives a stopped server.)"""
    with LoopbackServer() as srv:
        _warm_up(srv)
        # Both SDKs leave ~200k long-lived objects behind at import; one full collection
        # of them takes 90-115 ms on a 2-core runner (the recovery itself takes a few ms),
        # and a full collection triggered on the recovery path was seen to cost exactly
        # that. Freezing them (as a latency-sensitive application would) keeps the
        # latency tests measuring the engine rather than the interpreter's collector.
        gc.collect()
        gc.freeze()
        try:
            yield srv
        finally:
            gc.unfreeze()


def _warm_up(srv: LoopbackServer) -> None:
    """One healthy run per provider and driver: the SDKs import parts of themselves on
    first use (a cold first request takes ~0.3 s; the async stack has its own share),
    which must not count against a test's clocks."""
    timeouts = Timeouts(first_token=10, stale=10, total=30)
    for provider in PROVIDERS:
        route = make_route(provider, srv, unique_model(provider))
        engine = StreamEngine(routes=[route], timeouts=timeouts)
        with engine.stream(messages=MESSAGES, max_tokens=16) as run:
            for _ in run:
                pass
        engine.close()

        async def warm_async(provider: str = provider) -> None:
            route = make_route(provider, srv, unique_model(provider), is_async=True)
            async with (
                StreamEngine(routes=[route], timeouts=timeouts) as engine,
                engine.astream(messages=MESSAGES, max_tokens=16) as run,
            ):
                async for _ in run:
                    pass

        asyncio.run(warm_async())
    srv.wait_idle(5)


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """No thread may outlive a test except the engine's watchdog and the server's own."""
    before = {t.ident for t in threading.enumerate()}
    yield
    deadline = time.monotonic() + 2.0
    while True:
        leaked = [
            t
            for t in threading.enumerate()
            if t.ident not in before and t.is_alive() and t.name not in ALLOWED_NEW_THREADS
        ]
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert not leaked, f"threads leaked by the test: {[t.name for t in leaked]}"
    watchdogs = [t for t in threading.enumerate() if t.name == WATCHDOG_THREAD]
    assert len(watchdogs) <= 1, f"{len(watchdogs)} watchdog threads"


@dataclass
class EngineFactory:
    """Builds engines for a test and closes them all at teardown, async clients included
    (on the test's event loop, if it made one)."""

    server: LoopbackServer
    engines: list[StreamEngine] = field(default_factory=list)
    models: set[str] = field(default_factory=set)
    _loop: asyncio.AbstractEventLoop | None = None

    def __call__(
        self,
        routes: Sequence[Route],
        *,
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
        **kwargs: Any,
    ) -> StreamEngine:
        engine = StreamEngine(routes=list(routes), timeouts=timeouts, retry=retry, **kwargs)
        self.engines.append(engine)
        self.models.update(route.model for route in routes)
        return engine

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The test's event loop (made on first use, closed at teardown): async clients
        are bound to the loop they first ran on, so every async run of a test and the
        final ``aclose()`` of its engines share this one."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop

    def route_clients(self, route: Route) -> list[RouteClients]:
        """``route``'s clients in each engine of this test that has it."""
        return [e._route_clients(route) for e in self.engines if route in e.routes]

    def close_all(self) -> None:
        for engine in self.engines:
            if self._loop is not None:
                self._loop.run_until_complete(engine.aclose())
            else:
                engine.close()

    def close_loop(self) -> None:
        loop, self._loop = self._loop, None
        if loop is None:
            return
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()

    def open_connections(self) -> list[ConnectionRecord]:
        """Connections of this test's models that the server still sees open."""
        return open_connections_of(self.server, self.models)


def open_connections_of(server: LoopbackServer, models: set[str]) -> list[ConnectionRecord]:
    """Connections still open that carried a request for one of ``models``."""
    mine = {r.index for r in server.requests if r.model in models}
    return [
        c
        for c in server.connection_log
        if c.closed_at is None and mine.intersection(c.request_indexes)
    ]


@pytest.fixture
def make_engine(server: LoopbackServer) -> Iterator[EngineFactory]:
    factory = EngineFactory(server)
    yield factory
    try:
        factory.close_all()
        # Every connection the test's runs opened is closed once its engines are.
        server.wait_until(lambda: not factory.open_connections(), timeout=3.0)
        assert not factory.open_connections(), "engine.close() left connections open"
    finally:
        factory.close_loop()


@dataclass
class ProviderKit:
    """One provider under test, with one driver: its routes against the loopback server
    (unique per test) and the caller's loop for that driver.

    ``route()`` is the provider's route (model ``self.model``, the script key);
    ``other_route()`` is a route of the other provider, for a second place in the chain.
    Both are built with the driver's client flavour (``anthropic.Anthropic`` or
    ``anthropic.AsyncAnthropic``, ``openai.OpenAI`` or ``openai.AsyncOpenAI``).
    """

    name: str
    server: LoopbackServer
    make_engine: EngineFactory
    driver: str = "sync"
    model: str = ""
    other_model: str = ""
    _routes: dict[str, Route] = field(default_factory=dict)
    built: dict[str, list[Any]] = field(default_factory=dict)
    """Clients each model's factory returned, in order."""

    def __post_init__(self) -> None:
        assert self.driver in DRIVERS, self.driver
        self.model = self.model or unique_model(self.name)
        self.other_model = self.other_model or unique_model(other(self.name))

    # -- the provider ----------------------------------------------------------------
    @property
    def api_mode(self) -> str:
        return API_MODE[self.name]

    @property
    def other_api_mode(self) -> str:
        return API_MODE[other(self.name)]

    @property
    def request_id_header(self) -> str:
        return REQUEST_ID_HEADER[self.name]

    @property
    def other_env_key(self) -> str:
        """The environment variable of the *other* provider's API key."""
        return API_KEY_ENV[other(self.name)]

    def text(self, recording: str = "text_basic") -> str:
        return recordings.load(self.name, recording).text()  # type: ignore[arg-type]

    def text_of_other(self, recording: str = "text_basic") -> str:
        return recordings.load(other(self.name), recording).text()  # type: ignore[arg-type]

    # -- the driver: what differs between sync and async runs -------------------------
    @property
    def is_async(self) -> bool:
        return self.driver == "async"

    @property
    def owner(self) -> str:
        """The name cleanup steps record for the run's owner: the caller's thread (sync),
        or "<thread>/<task>" of the task iterating the run (async)."""
        thread = threading.current_thread().name
        return f"{thread}/{CONSUMER_TASK}" if self.is_async else thread

    @property
    def watchdog(self) -> str:
        """Who aborts a stalled attempt: the watchdog thread (sync), or the loop's timer,
        which runs on the loop's thread outside any task (async)."""
        return threading.current_thread().name if self.is_async else WATCHDOG_THREAD

    @property
    def builder(self) -> str:
        """The thread that builds a slot's first client: the caller's (sync), the builder
        thread (async: never the loop). Every later client is the builder thread's."""
        return BUILDER_THREAD if self.is_async else threading.current_thread().name

    def settle(self) -> None:
        """Wait for every spare build of this kit's routes in flight (counts are exact
        after): a run's spare is built on the builder thread once its request is out."""
        for engine in self.make_engine.engines:
            for route_clients in engine._distinct_clients:
                for slot in route_clients.slots():
                    assert slot.wait_for_builder(10), f"{route_clients}: a spare's build hangs"

    def clients(self, route: Route | None = None, engine: StreamEngine | None = None) -> Any:
        """The ``ClientSlot`` of ``route`` (default: ``route()``) this driver uses, in
        ``engine`` (default: the one engine of the test that has the route)."""
        route = route or self.route()
        if engine is not None:
            route_clients = engine._route_clients(route)
        else:
            found = self.make_engine.route_clients(route)
            assert len(found) == 1, f"{route.name} is in {len(found)} engines: pass engine="
            route_clients = found[0]
        return route_clients.first_async if self.is_async else route_clients.sync

    # -- routes and engines -------------------------------------------------------------
    def route(self, *, model: str | None = None, **kwargs: Any) -> Route:
        """This provider's route (``make_route`` keywords build a new one)."""
        return self._route(self.name, model or self.model, kwargs)

    def other_route(self, *, model: str | None = None, **kwargs: Any) -> Route:
        """The other provider's route (``make_route`` keywords build a new one)."""
        return self._route(other(self.name), model or self.other_model, kwargs)

    def _route(self, provider: str, model: str, kwargs: dict[str, Any]) -> Route:
        if model not in self._routes or kwargs:
            built = self.built.setdefault(model, [])
            self._routes[model] = make_route(
                provider, self.server, model, built=built, is_async=self.is_async, **kwargs
            )
        return self._routes[model]

    def engine(
        self,
        *,
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
        with_other: bool = True,
        **kwargs: Any,
    ) -> StreamEngine:
        """An engine over [this provider's route, the other provider's route]."""
        routes = [self.route(), self.other_route()] if with_other else [self.route()]
        return self.make_engine(routes, timeouts=timeouts, retry=retry, **kwargs)

    # -- the caller -----------------------------------------------------------------------
    def run_to_end(
        self,
        engine: StreamEngine,
        on_event: OnEvent | None = None,
        *,
        interrupt_after: float | None = None,
        interrupt_first: bool = False,
        iterate: bool = True,
        catch: tuple[type[BaseException], ...] = (LifecycleError,),
        **request: Any,
    ) -> tuple[Any, Timeline]:
        """Start a run on ``engine`` and iterate it to its end, as a caller would:
        ``with engine.stream(...) as run: for event in run`` (sync) or, in a task named
        ``CONSUMER_TASK``, ``async with engine.astream(...) as run: async for event in run``
        (async). Returns the run and what the caller saw; an exception of ``catch`` that
        leaves the loop is kept in ``Timeline.error``, any other propagates.

        ``interrupt_after``: call ``run.interrupt()`` from another thread that many seconds
        after iterating began; ``interrupt_first``: call it before iterating; ``iterate``:
        False enters and leaves the run's context without iterating.
        """
        request = REQUEST | request
        options = (on_event, interrupt_after, interrupt_first, iterate, catch)
        if self.is_async:
            return self.run_coroutine(self._run_async(engine, request, *options))
        return self._run_sync(engine, request, *options)

    def run_coroutine(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` to its end in a task named ``CONSUMER_TASK`` on the test's loop."""
        loop = self.make_engine.loop
        return loop.run_until_complete(loop.create_task(coroutine, name=CONSUMER_TASK))

    def _run_sync(
        self,
        engine: StreamEngine,
        request: dict[str, Any],
        on_event: OnEvent | None = None,
        interrupt_after: float | None = None,
        interrupt_first: bool = False,
        iterate: bool = True,
        catch: tuple[type[BaseException], ...] = (LifecycleError,),
    ) -> tuple[Any, Timeline]:
        seen = Timeline()
        run = engine.stream(**request)
        assert isinstance(run, Run)
        if interrupt_first:
            run.interrupt()
        with run, Interrupter(run, interrupt_after, seen):
            try:
                if iterate:
                    for event in run:
                        seen.received(event)
                        action = on_event(event) if on_event is not None else None
                        if action == BREAK:
                            break
                        if action is not None:
                            assert isinstance(action, (int, float)), action
                            time.sleep(action)
            except catch as exc:
                seen.error = exc
            seen.ended_at = time.monotonic()
            seen.state_after_loop = run.state
        return run, seen

    async def _run_async(
        self,
        engine: StreamEngine,
        request: dict[str, Any],
        on_event: OnEvent | None = None,
        interrupt_after: float | None = None,
        interrupt_first: bool = False,
        iterate: bool = True,
        catch: tuple[type[BaseException], ...] = (LifecycleError,),
    ) -> tuple[Any, Timeline]:
        seen = Timeline()
        run = engine.astream(**request)
        assert isinstance(run, AsyncRun)
        if interrupt_first:
            run.interrupt()
        async with run:
            with Interrupter(run, interrupt_after, seen):
                try:
                    if iterate:
                        async for event in run:
                            seen.received(event)
                            action = on_event(event) if on_event is not None else None
                            if action == BREAK:
                                break
                            if action is not None:
                                assert isinstance(action, (int, float)), action
                                await asyncio.sleep(action)
                except catch as exc:
                    seen.error = exc
                seen.ended_at = time.monotonic()
                seen.state_after_loop = run.state
        return run, seen

    def run_at_once(self, engine: StreamEngine, count: int) -> list[Any]:
        """``count`` runs started together and iterated to their end, on threads (sync) or
        as tasks of one gather (async); returns the runs, in the order they started."""
        runs: list[Any] = []
        request = dict(REQUEST)
        if self.is_async:

            async def one() -> None:
                run = engine.astream(**request)
                runs.append(run)
                async with run:
                    async for _ in run:
                        pass

            async def every() -> None:
                await asyncio.gather(*(one() for _ in range(count)))

            self.run_coroutine(every())
            return runs
        lock = threading.Lock()

        def sync_one() -> None:
            with engine.stream(**request) as run:
                with lock:
                    runs.append(run)
                for _ in run:
                    pass

        threads = [threading.Thread(target=sync_one) for _ in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        return runs

    def run_in_own_engine(
        self, routes: Sequence[Route], **engine_kwargs: Any
    ) -> tuple[StreamEngine, Any, Timeline]:
        """One run inside the engine's own context manager (``with StreamEngine(...)``, or
        ``async with`` for the async driver), which has exited when this returns."""
        self.make_engine.models.update(route.model for route in routes)
        if self.is_async:

            async def main() -> tuple[StreamEngine, Any, Timeline]:
                async with StreamEngine(routes=list(routes), **engine_kwargs) as engine:
                    run, seen = await self._run_async(engine, dict(REQUEST))
                return engine, run, seen

            return self.run_coroutine(main())
        with StreamEngine(routes=list(routes), **engine_kwargs) as engine:
            run, seen = self._run_sync(engine, dict(REQUEST))
        return engine, run, seen

    # -- the server's view ----------------------------------------------------------------
    def script(self, faults: Sequence[Any], *, model: str | None = None) -> None:
        self.server.script(model or self.model, list(faults))

    def requests(self, model: str | None = None) -> list[RequestRecord]:
        wanted = model or self.model
        return [r for r in self.server.requests if r.model == wanted]

    def all_requests(self) -> list[RequestRecord]:
        """This test's requests to either provider."""
        mine = {self.model, self.other_model}
        return [r for r in self.server.requests if r.model in mine]

    def connection_of(self, request: RequestRecord) -> ConnectionRecord:
        for conn in self.server.connection_log:
            if conn.id == request.connection_id:
                return conn
        raise AssertionError(f"no connection {request.connection_id} in the server's log")


@pytest.fixture(params=DRIVERS)
def driver(request: pytest.FixtureRequest) -> str:
    """Which driver runs the scenario; override with ``@pytest.mark.parametrize``."""
    return str(request.param)


@pytest.fixture(params=PROVIDERS)
def provider(
    request: pytest.FixtureRequest, server: LoopbackServer, make_engine: EngineFactory, driver: str
) -> ProviderKit:
    return ProviderKit(name=request.param, server=server, make_engine=make_engine, driver=driver)
