"""What a provider adapter must provide: the contract between ``lifecycle`` and ``providers``.

A route is one entry of the engine's fallback chain: an adapter for one wire API
(``api_mode``), a client factory and a model. ``lifecycle`` calls only the methods
below and never looks at ``api_mode`` to decide anything; the value is carried into
records, logs and diagrams. ``providers`` implements one ``Route`` per wire API.

A route is configuration and keeps no state: the clients it builds and what the engine
learns about its server live in each engine's ``RouteClients`` (``route_clients``), so
one route object may serve several engines. What an adapter learns from a fault (its
server refuses an option the adapter adds) it returns as ``Fault.learned``; the engine
remembers it for that route and passes every fact learned so far to ``open``,
``aopen`` and ``classify`` as ``learned``.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any, ClassVar

from .._core.config import Timeouts
from .._core.errors import Fault, MissingCredentials
from .._core.message import StreamEvent
from .._core.request import Request
from .client_slots import STREAMS_PER_CLIENT
from .connection import Shutdownable

__all__ = ["AsyncAttemptStream", "AttemptStream", "Route"]


class AttemptStream(ABC):
    """An opened sync stream (response headers received), yielding meaningful events only.

    ``unknown_events`` counts wire events of a type the adapter does not know: ignored,
    and reported in the attempt's diagnostics."""

    unknown_events: int = 0
    http_status: int | None = None
    headers: Mapping[str, str] = {}
    socket: Shutdownable | None = None
    response_id: str | None = None
    """The provider's id of the response, once its stream said it (read after close)."""
    response_model: str | None = None
    """The model that answered, as the stream names it (read after close)."""

    @abstractmethod
    def events(self) -> Iterator[StreamEvent]: ...

    @abstractmethod
    def close(self) -> None:
        """Release the response: the connection goes back to the pool or is closed."""


class AsyncAttemptStream(ABC):
    unknown_events: int = 0
    http_status: int | None = None
    headers: Mapping[str, str] = {}
    socket: Shutdownable | None = None
    response_id: str | None = None
    response_model: str | None = None

    @abstractmethod
    def events(self) -> AsyncIterator[StreamEvent]: ...

    @abstractmethod
    async def aclose(self) -> None: ...


class Route(ABC):
    """One provider adapter bound to a client factory and a model."""

    api_mode: ClassVar[str]
    cleanup_description: ClassVar[tuple[str, ...]] = (
        "shut down the attempt's socket",
        "close the attempt's client",
        "rebuild the client from the factory",
    )

    def __init__(
        self,
        client_factory: Callable[[], Any],
        *,
        model: str,
        name: str | None = None,
        streams_per_client: int = STREAMS_PER_CLIENT,
        **options: Any,
    ) -> None:
        """``name`` identifies the route in errors, records and breakers (default: the
        class and model). ``streams_per_client``: concurrent streams one client carries
        before the route builds another. Other keyword arguments pass to every SDK call."""
        if (
            isinstance(streams_per_client, bool)
            or not isinstance(streams_per_client, int)
            or streams_per_client < 1
        ):
            raise ValueError(
                f"{type(self).__name__}: streams_per_client must be a positive int, "
                f"got {streams_per_client!r}"
            )
        if not callable(client_factory):
            raise TypeError(
                f"{type(self).__name__}: client_factory must be a callable returning a client, "
                f"got {type(client_factory).__name__}"
            )
        if not isinstance(model, str) or not model:
            raise ValueError(f"{type(self).__name__}: model must be a non-empty string")
        accepted = self.client_classes()
        if (
            inspect.isclass(client_factory)
            and accepted
            and not issubclass(client_factory, accepted)
        ):
            # A class passed as the factory can be checked now, before any request;
            # a function can only be checked when it first builds (lazily, by design).
            raise TypeError(
                f"{type(self).__name__}: client_factory {client_factory.__name__} builds "
                f"neither of {', '.join(c.__name__ for c in accepted)}"
            )
        self.client_factory = client_factory
        self.model = model
        self.name = name or f"{type(self).__name__}({model})"
        self.options: dict[str, Any] = dict(options)
        self.streams_per_client = streams_per_client

    def __repr__(self) -> str:
        return self.name

    # -- client construction (lifecycle calls these through the slots) -----------------
    def _call_factory(self) -> Any:
        try:
            return self.client_factory()
        except Exception as exc:
            missing = self.missing_credentials_in(exc)
            if missing is not None:
                raise missing from exc
            raise

    def _build_sync_client(self) -> Any:
        client = self._call_factory()
        if inspect.isawaitable(client) or self.is_async_client(client):
            _discard(client)
            raise TypeError(
                f"route {self.name}: its factory returned an async client "
                f"({type(client).__name__}) but the run is sync (engine.stream); "
                "give this route a sync factory or use engine.astream"
            )
        return self.prepare_client(client)

    def _build_async_client(self) -> Any:
        client = self._call_factory()
        if not self.is_async_client(client):
            raise TypeError(
                f"route {self.name}: its factory returned a sync client "
                f"({type(client).__name__}) but the run is async (engine.astream); "
                "give this route an async factory or use engine.stream"
            )
        return self.prepare_client(client)

    # -- the adapter contract ---------------------------------------------------------
    def check_request(self, request: Request) -> None:
        """Raise ``ValueError`` if this route could never send ``request`` (a history or
        a keyword its wire API refuses). The engine calls it for every route of the
        chain at ``stream()``/``astream()``, before any request, so a fallback route
        never fails on what was known from the start."""
        return None

    def omitted_options(self, request: Request) -> tuple[str, ...]:
        """The caller's per-call options this route leaves out of ``request`` (its wire
        API has no such parameter); the attempt's diagnostics list them."""
        return ()

    def client_classes(self) -> tuple[type, ...]:
        """The SDK client classes this route accepts (sync and async); () accepts any."""
        return ()

    def missing_credentials_in(self, exc: Exception) -> MissingCredentials | None:
        """If the factory's ``exc`` says the client has no credentials, the error to raise
        instead: naming the route and what to set (the adapter knows its SDK's words)."""
        return None

    @abstractmethod
    def is_async_client(self, client: Any) -> bool: ...

    def server_url(self, client: Any) -> str | None:
        """The base URL ``client`` sends to, for telemetry (``server.address``); None if
        the adapter cannot tell."""
        return None

    @abstractmethod
    def prepare_client(self, client: Any) -> Any:
        """Check the client type, turn the SDK's own retries off (the engine is the only
        retry loop) and let the engine see the sockets it opens."""

    @abstractmethod
    def open(
        self,
        client: Any,
        request: Request,
        timeouts: Timeouts,
        *,
        learned: frozenset[str] = frozenset(),
    ) -> AttemptStream:
        """Send the request; return once response headers are in (raise on error status).
        ``learned``: what earlier faults of this route taught (``Fault.learned``)."""

    @abstractmethod
    async def aopen(
        self,
        client: Any,
        request: Request,
        timeouts: Timeouts,
        *,
        learned: frozenset[str] = frozenset(),
    ) -> AsyncAttemptStream: ...

    @abstractmethod
    def close_client(self, client: Any) -> None: ...

    @abstractmethod
    async def aclose_client(self, client: Any) -> None: ...

    @abstractmethod
    def classify(self, exc: BaseException, *, learned: frozenset[str] = frozenset()) -> Fault:
        """Turn any exception of this adapter's SDK (or transport) into a Fault. A fault
        that reveals something about the server for later attempts says it in
        ``Fault.learned`` (``learned`` holds what is known already)."""


def _discard(client: Any) -> None:
    close = getattr(client, "close", None)
    if inspect.iscoroutine(client):
        client.close()
    elif callable(close) and not inspect.iscoroutinefunction(close):
        close()
