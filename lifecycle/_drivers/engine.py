"""``StreamEngine``: the routes, the configuration, and the runs started from them."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import random
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Final

from .._core.config import BreakerPolicy, RetryPolicy, Timeouts
from .._core.errors import EngineClosed, MissingCredentials
from .._core.machine import RouteInfo, RunCore
from .._core.records import Transition
from .._core.redaction import redact
from .._core.request import Request, SupportsToDict
from .._health.route_health import BreakerStatus, HealthStore, RouteHealth
from .._observe.hooks import HookDispatcher, LifecycleHooks
from .async_run import AsyncRun
from .route import Route
from .route_clients import RouteClients
from .run_base import RunBase
from .sync_run import Run

__all__ = ["StreamEngine"]

_DEFAULT_BREAKER = BreakerPolicy()
CLOSE_ON_LOOP_BOUND: Final = 5.0
"""Seconds ``close()`` waits for async clients to close on their own loop, when that
loop runs on another thread."""


class StreamEngine:
    """Streams with a lifecycle: stale detection, cleanup of the right client, retry, fallback.

    ``routes`` is the fallback chain, in order. Clients are built lazily, one per route
    and flavour, shared by concurrent runs, and closed by ``close()``. They are this
    engine's: a route object given to two engines shares no client between them.
    ``max_event_bytes`` bounds what may arrive without a meaningful event (a runaway
    SSE line is refused, not buffered). ``check_factories=True`` builds every route's
    client at construction, so a missing key or a wrong client type fails here.
    ``on_transition`` is called with each ``Transition`` a run takes, on the thread or
    task that owns the run (keep it fast; it runs inside the lifecycle). ``hooks`` are
    ``LifecycleHooks`` (runs started and ended, attempts ended, breaker changes), e.g.
    ``lifecycle.otel.OpenTelemetryHooks`` or ``lifecycle.record.TransitionRecorder``.
    ``breaker`` is the circuit breaker policy of every route (``None``: no breakers);
    breakers live in ``health_store``: this engine's own ``LocalHealthStore`` by
    default, or a ``lifecycle._health.redis_store.RedisHealthStore`` shared by a fleet.
    Route names (``Route(name=...)``) are the breakers' keys.
    """

    def __init__(
        self,
        *,
        routes: Sequence[Route],
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
        rng: random.Random | None = None,
        on_transition: Callable[[Transition], None] | None = None,
        max_event_bytes: int = 16 * 1024 * 1024,
        check_factories: bool = False,
        hooks: Sequence[LifecycleHooks] = (),
        breaker: BreakerPolicy | None = _DEFAULT_BREAKER,
        health_store: HealthStore | None = None,
    ) -> None:
        if isinstance(routes, Route) or not isinstance(routes, Iterable):
            raise TypeError("StreamEngine(routes=...) must be a list of routes")
        routes = tuple(routes)
        if not routes:
            raise ValueError("StreamEngine(routes=...) must name at least one route")
        for index, route in enumerate(routes):
            if not isinstance(route, Route):
                raise TypeError(
                    f"StreamEngine(routes=...)[{index}] must be a provider route such as "
                    f"providers.AnthropicMessages, got {type(route).__name__}"
                )
        if timeouts is not None and not isinstance(timeouts, Timeouts):
            raise TypeError("StreamEngine(timeouts=...) must be a lifecycle.Timeouts")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise TypeError("StreamEngine(retry=...) must be a lifecycle.RetryPolicy")
        self.routes: tuple[Route, ...] = routes
        self.timeouts = timeouts or Timeouts()
        self.retry = retry or RetryPolicy()
        self._rng = rng or random.Random()
        self._route_infos = tuple(
            RouteInfo(api_mode=r.api_mode, model=r.model, target=r) for r in routes
        )
        if isinstance(max_event_bytes, bool) or not isinstance(max_event_bytes, int):
            raise TypeError("StreamEngine(max_event_bytes=...) must be an int")
        if max_event_bytes < 1024:
            raise ValueError("StreamEngine(max_event_bytes=...) must be at least 1024")
        self.max_event_bytes = max_event_bytes
        by_route: dict[int, RouteClients] = {}
        self._clients: tuple[RouteClients, ...] = tuple(
            by_route.setdefault(id(route), RouteClients(route)) for route in routes
        )
        """Each route's clients and learned facts, in chain order (a route given twice
        has one ``RouteClients``)."""
        self._distinct_clients = tuple(by_route.values())
        if check_factories:
            self._check_factories()
        self._closed = False
        self._closing = threading.Event()
        """Set first thing in close(): each run and its transport see it at once, before
        close() reaches that run (between the two, a run could otherwise write a request)."""
        self._runs: weakref.WeakSet[RunBase] = weakref.WeakSet()
        """Runs started from this engine that may still be in flight: close() ends them."""
        self._runs_lock = threading.Lock()
        self._closing_tasks: set[asyncio.Task[None]] = set()
        _ALL_ENGINES.add(self)
        self._listeners = (on_transition,) if on_transition is not None else ()
        if isinstance(hooks, LifecycleHooks) or not isinstance(hooks, Iterable):
            raise TypeError("StreamEngine(hooks=...) must be a list of LifecycleHooks")
        self.hooks = HookDispatcher(tuple(hooks))
        if breaker is not None and not isinstance(breaker, BreakerPolicy):
            raise TypeError("StreamEngine(breaker=...) must be a lifecycle.BreakerPolicy or None")
        if breaker is None and health_store is not None:
            raise ValueError("StreamEngine(health_store=...) needs a breaker policy")
        self.health: RouteHealth | None = None
        if breaker is not None:
            self.health = RouteHealth(
                policy=breaker, store=health_store, on_change=self.hooks.breaker_changed
            )

    def breakers(self) -> dict[str, BreakerStatus]:
        """Each route's breaker now (by route name); empty without a breaker policy."""
        if self.health is None:
            return {}
        return self.health.status(tuple(route.name for route in self.routes))

    def _route_clients(self, route: Route) -> RouteClients:
        """This engine's clients of ``route`` (for verification and the benchmarks)."""
        for clients in self._distinct_clients:
            if clients.route is route:
                return clients
        raise ValueError(f"{route.name} is not a route of this engine")

    def _check_factories(self) -> None:
        """Opt-in: build every route's client now, so a factory that raises (no API key),
        a client without credentials (``MissingCredentials``) or the wrong client type
        fails at construction, naming the route. The
        clients are kept for the first runs. Off by default: a route that is never used
        should never need its credentials."""
        for index, clients in enumerate(self._clients):
            route = clients.route
            where = f"StreamEngine(routes=...)[{index}] {route.name}"
            try:
                client = route.client_factory()
            except Exception as exc:
                missing = route.missing_credentials_in(exc)
                if missing is not None:
                    raise MissingCredentials(f"{where}: {missing}") from exc
                raise ValueError(
                    redact(f"{where}: client_factory raised {type(exc).__name__}: {exc}")
                ) from exc
            try:
                prepared = route.prepare_client(client)
            except TypeError as exc:
                raise TypeError(f"{where}: {exc}") from exc
            except MissingCredentials as exc:
                raise MissingCredentials(f"{where}: {exc}") from exc
            clients.slot_for(client).adopt(prepared)

    def _request(
        self,
        messages: Sequence[Mapping[str, Any] | SupportsToDict],
        max_tokens: int,
        system: str | None,
        tools: Sequence[Mapping[str, Any]] | None,
        options: dict[str, Any],
    ) -> Request:
        if self._closed:
            raise EngineClosed("this StreamEngine is closed")
        if not isinstance(messages, Sequence) or isinstance(messages, str) or not messages:
            raise ValueError("messages must be a non-empty list of {'role', 'content'} dicts")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValueError("max_tokens must be a positive int")
        provider_options = options.pop("provider_options", None) or {}
        if not isinstance(provider_options, Mapping) or not all(
            isinstance(per_api, Mapping) for per_api in provider_options.values()
        ):
            raise ValueError(
                "provider_options must map an api_mode to keyword arguments, e.g. "
                '{"anthropic_messages": {"thinking": {...}}}'
            )
        request = Request(
            messages=tuple(messages),
            max_tokens=max_tokens,
            system=system,
            tools=tuple(tools or ()),
            options=options,
            provider_options={api: dict(kw) for api, kw in provider_options.items()},
        )
        # Every route of the chain, before any request: a fallback route must not be the
        # first to find out that the history or a keyword cannot go to its API.
        for route in self.routes:
            route.check_request(request)
        return request

    def _core(self) -> RunCore:
        return RunCore(
            routes=self._route_infos,
            timeouts=self.timeouts,
            retry=self.retry,
            started_at=time.monotonic(),
            rng=self._rng,
            listeners=self._listeners,
        )

    def stream(
        self,
        *,
        messages: Sequence[Mapping[str, Any] | SupportsToDict],
        max_tokens: int,
        system: str | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        **options: Any,
    ) -> Run:
        """Start a sync run; iterate it (``for event in run``) on the calling thread.

        ``Timeouts.total`` counts from this call.
        """
        request = self._request(messages, max_tokens, system, tools, options)
        core = self._core()
        run = Run(
            core=core,
            routes=self.routes,
            clients=self._clients,
            request=request,
            max_event_bytes=self.max_event_bytes,
            health=self.health,
        )
        if self.hooks:
            core.listeners += (self.hooks.listener(run, core),)
        self._track(run)
        return run

    def _track(self, run: RunBase) -> None:
        run.bind_engine_closing(self._closing)
        with self._runs_lock:
            self._runs.add(run)
        if self._closed:  # close() ran on another thread while this run was made
            run.end_by_engine_close()

    def _end_runs(self) -> None:
        """Abort every run in flight, from this (the closing) thread: a socket shutdown
        only, as ``interrupt()`` does; each run's own thread or task cleans up, and the
        last run off a client closes it."""
        with self._runs_lock:
            runs = list(self._runs)
        for run in runs:
            if run.state not in ("completed", "failed", "cancelled"):
                run.end_by_engine_close()

    def astream(
        self,
        *,
        messages: Sequence[Mapping[str, Any] | SupportsToDict],
        max_tokens: int,
        system: str | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        **options: Any,
    ) -> AsyncRun:
        """Start an async run; ``async for event in run`` inside one task.

        Routes must have async client factories (``anthropic.AsyncAnthropic``,
        ``openai.AsyncOpenAI``); a sync factory fails the attempt with a ``TypeError``
        naming the route.
        """
        request = self._request(messages, max_tokens, system, tools, options)
        core = self._core()
        run = AsyncRun(
            core=core,
            routes=self.routes,
            clients=self._clients,
            request=request,
            max_event_bytes=self.max_event_bytes,
            health=self.health,
        )
        if self.hooks:
            core.listeners += (self.hooks.listener(run, core),)
        self._track(run)
        return run

    async def aclose(self) -> None:
        """``close()``, awaiting the close of this loop's async clients here."""
        self._closing.set()
        self._closed = True
        self._end_runs()
        loop = asyncio.get_running_loop()
        for route_clients in self._distinct_clients:
            route = route_clients.route
            # A spare's build in flight is awaited here, so that take_idle (and close()
            # below) never block the loop waiting for the builder thread.
            for slot in route_clients.slots():
                building = slot.building
                if building is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wrap_future(building)
            for slot in route_clients.async_slots():
                for spare in slot.take_spare():
                    await route.aclose_client(spare)
                clients = slot.take_idle()
                if clients and slot.loop in (None, loop):
                    for client in clients:
                        await route.aclose_client(client)
                elif clients:
                    await asyncio.to_thread(self._close_on_own_loop, route, slot.loop, clients)
        self.close()

    async def __aenter__(self) -> StreamEngine:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def close(self) -> None:
        """End the runs in flight with ``EngineClosed`` and close every client this
        engine built for its routes: at once if nobody streams on it, else by its last run.
        Async clients are closed on their own event loop (abandoned if it is closed).
        Each slot's spare is closed too, its build waited for if in flight, so no builder
        thread outlives close()."""
        self._closing.set()
        self._closed = True
        self._end_runs()
        for route_clients in self._distinct_clients:
            route = route_clients.route
            sync = route_clients.sync
            for client in (*sync.take_spare(), *sync.take_idle()):
                route.close_client(client)
            for slot in route_clients.async_slots():
                spares = slot.take_spare()
                if spares:  # never used: bound to no loop, closed like a client of none
                    self._close_on_own_loop(route, None, spares)
                clients = slot.take_idle()
                if clients:
                    self._close_on_own_loop(route, slot.loop, clients)

    def _close_on_own_loop(
        self, route: Route, loop: asyncio.AbstractEventLoop | None, clients: list[Any]
    ) -> None:
        """Close async ``clients`` on ``loop``, the one they belong to: their connections
        and locks are that loop's, and closing them on another one fails."""

        async def close_all() -> None:
            for client in clients:
                with contextlib.suppress(Exception):
                    await route.aclose_client(client)

        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if loop is None:  # never used on a loop: no connection yet
            loop = running
        if loop is None:
            asyncio.run(close_all())
        elif loop.is_closed():
            return  # its connections cannot be closed any more: abandoned
        elif loop is running:
            # close() called from a task of that loop: the closes run as a task of it.
            task = loop.create_task(close_all())
            self._closing_tasks.add(task)
            task.add_done_callback(self._closing_tasks.discard)
        elif loop.is_running():
            future = asyncio.run_coroutine_threadsafe(close_all(), loop)
            with contextlib.suppress(concurrent.futures.TimeoutError):
                future.result(timeout=CLOSE_ON_LOOP_BOUND)
        elif running is None:
            loop.run_until_complete(close_all())
        # else: that loop is idle but another one runs on this thread, so it cannot be
        # run from here; its clients are abandoned.

    def _forget_runs_after_fork(self) -> None:
        # The parent's runs are not this process's: closing the engine in the child
        # must never shut down their sockets.
        self._runs = weakref.WeakSet()
        self._runs_lock = threading.Lock()
        self._closing_tasks = set()
        # An Event's lock may have been held by a parent's thread at the fork.
        closing, self._closing = self._closing, threading.Event()
        if closing.is_set():
            self._closing.set()

    def __enter__(self) -> StreamEngine:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


_ALL_ENGINES: weakref.WeakSet[StreamEngine] = weakref.WeakSet()


def _forget_runs_in_child() -> None:
    for engine in list(_ALL_ENGINES):
        engine._forget_runs_after_fork()


os.register_at_fork(after_in_child=_forget_runs_in_child)
