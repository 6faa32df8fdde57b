"""Shared fixtures: one loopback server per session, a provider kit per test, leak checks.

Every test gets unique model names (``claude-<hex>``, ``gpt-<hex>``): the loopback
server keys its fault scripts by the request's model, so tests never see each other's
faults, and the server's request and connection logs can be filtered per test.
"""

from __future__ import annotations

import gc
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import anthropic
import openai
import pytest

from lifecycle import LifecycleError, RetryPolicy, Route, StreamEngine, StreamEvent, Timeouts
from providers import AnthropicMessages, OpenAIChatCompletions
from providers.loopback import ConnectionRecord, LoopbackServer, RequestRecord, recordings

PROVIDERS = ("anthropic", "openai")
WATCHDOG_THREAD = "lifecycle-watchdog"
SERVER_THREAD = "loopback-server"
ALLOWED_NEW_THREADS = frozenset({WATCHDOG_THREAD, SERVER_THREAD})
MESSAGES = [{"role": "user", "content": "Hi"}]

API_MODE = {"anthropic": "anthropic_messages", "openai": "chat_completions"}
REQUEST_ID_HEADER = {"anthropic": "request-id", "openai": "x-request-id"}
API_KEY_ENV = {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY"}
MODEL_PREFIX = {"anthropic": "claude", "openai": "gpt"}


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
) -> Route:
    """The provider's route against the loopback server; ``built`` collects every client
    the factory returns, in order, so a test can check which ones were closed."""
    if factory is None:
        if provider == "anthropic":
            base = server.anthropic_base_url

            def factory() -> Any:
                return anthropic.Anthropic(base_url=base, api_key=api_key)
        else:
            base = server.openai_base_url

            def factory() -> Any:
                return openai.OpenAI(base_url=base, api_key=api_key)

    inner = factory

    def recording_factory() -> Any:
        client = inner()
        if built is not None:
            built.append(client)
        return client

    cls = AnthropicMessages if provider == "anthropic" else OpenAIChatCompletions
    return cls(recording_factory, model=model)


@dataclass
class Timeline:
    """What the caller saw: each event with the time.monotonic() it was received at."""

    events: list[StreamEvent] = field(default_factory=list)
    received_at: list[float] = field(default_factory=list)
    error: BaseException | None = None
    ended_at: float = 0.0

    @property
    def types(self) -> list[str]:
        return [e.type for e in self.events]

    def text(self) -> str:
        return "".join(e.text for e in self.events if e.type == "text")

    def received_before(self, at: float) -> list[tuple[float, StreamEvent]]:
        return [(t, e) for t, e in zip(self.received_at, self.events, strict=True) if t < at]


def consume(
    run: Any,
    on_event: Callable[[StreamEvent], None] | None = None,
    *,
    catch: tuple[type[BaseException], ...] = (LifecycleError,),
) -> Timeline:
    """Iterate ``run`` on this thread, timestamping every event as it arrives."""
    timeline = Timeline()
    try:
        for event in run:
            timeline.received_at.append(time.monotonic())
            timeline.events.append(event)
            if on_event is not None:
                on_event(event)
    except catch as exc:
        timeline.error = exc
    timeline.ended_at = time.monotonic()
    return timeline


@pytest.fixture(scope="module")
def server() -> Iterator[LoopbackServer]:
    """One server per test module. (Not per session: tests of the server itself check
    that no "loopback-server" thread outlives a stopped server.)"""
    with LoopbackServer() as srv:
        _warm_up(srv)
        # Both SDKs leave ~200k long-lived objects behind at import; one full collection
        # of them takes 90-115 ms on a 2-core runner, twice the 50 ms allowance,
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
    """One healthy run per provider: the SDKs import parts of themselves on first use
    (a cold first request takes ~0.3 s), which must not count against a test's clocks."""
    for provider in PROVIDERS:
        route = make_route(provider, srv, unique_model(provider))
        engine = StreamEngine(routes=[route], timeouts=Timeouts(first_token=10, stale=10, total=30))
        with engine.stream(messages=MESSAGES, max_tokens=16) as run:
            for _ in run:
                pass
        engine.close()
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
    """Builds engines for a test and closes them all at teardown."""

    server: LoopbackServer
    engines: list[StreamEngine] = field(default_factory=list)
    models: set[str] = field(default_factory=set)

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

    def close_all(self) -> None:
        for engine in self.engines:
            engine.close()

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
    factory.close_all()
    # Every connection the test's runs opened is closed once its engines are.
    server.wait_until(lambda: not factory.open_connections(), timeout=3.0)
    assert not factory.open_connections(), "engine.close() left connections open"


@dataclass
class ProviderKit:
    """One provider under test: its routes against the loopback server, unique per test.

    ``route()`` is the provider's route (model ``self.model``, the script key);
    ``other_route()`` is a route of the other provider, for a second place in the chain.
    """

    name: str
    server: LoopbackServer
    make_engine: EngineFactory
    model: str = ""
    other_model: str = ""
    _routes: dict[str, Route] = field(default_factory=dict)
    built: dict[str, list[Any]] = field(default_factory=dict)
    """Clients each model's factory returned, in order."""

    def __post_init__(self) -> None:
        self.model = self.model or unique_model(self.name)
        self.other_model = self.other_model or unique_model(other(self.name))

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

    def route(self, *, model: str | None = None, **kwargs: Any) -> Route:
        model = model or self.model
        if model not in self._routes or kwargs:
            built = self.built.setdefault(model, [])
            self._routes[model] = make_route(self.name, self.server, model, built=built, **kwargs)
        return self._routes[model]

    def other_route(self, *, model: str | None = None, **kwargs: Any) -> Route:
        model = model or self.other_model
        if model not in self._routes or kwargs:
            built = self.built.setdefault(model, [])
            self._routes[model] = make_route(
                other(self.name), self.server, model, built=built, **kwargs
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

    def stream(self, engine: StreamEngine, **kwargs: Any) -> Any:
        kwargs.setdefault("messages", MESSAGES)
        kwargs.setdefault("max_tokens", 64)
        return engine.stream(**kwargs)

    def consume(
        self, run: Any, on_event: Callable[[StreamEvent], None] | None = None, **kwargs: Any
    ) -> Timeline:
        return consume(run, on_event, **kwargs)

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


@pytest.fixture(params=PROVIDERS)
def provider(
    request: pytest.FixtureRequest, server: LoopbackServer, make_engine: EngineFactory
) -> ProviderKit:
    return ProviderKit(name=request.param, server=server, make_engine=make_engine)
