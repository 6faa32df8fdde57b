"""What the three adapters share: one SDK's client classes, made ready for the engine.

An adapter names its SDK's sync and async client classes and its ``Timeout`` class; this
base checks what a factory returns, turns the SDK's own retries off, installs the
connection tagging the abort needs, closes clients, and builds the per-request timeout.
The wire API (request shape, event translation, classification) stays in the adapter.
"""

from __future__ import annotations

import functools
import inspect
from abc import abstractmethod
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any, ClassVar

from lifecycle import Fault, MissingCredentials, Timeouts
from lifecycle.adapters import AsyncAttemptStream, AttemptStream, Request, Route, redact

from .._history import NEUTRAL_OPTIONS, WireOptions, check_tool_choice, normalize
from .credentials import guard_credentials, register_client_secrets
from .sockets import install_connection_tagging
from .stream import AsyncSDKStream, SDKStream, StreamTranslator

NO_CREDENTIALS = "Could not resolve authentication method"
"""How both SDKs word it when a client without credentials is asked to send (a
TypeError, raised before any I/O)."""

__all__ = ["SdkRoute"]


class SdkRoute(Route):
    sync_client_class: ClassVar[type]
    async_client_class: ClassVar[type]
    timeout_class: ClassVar[type]
    request_options_class: ClassVar[type]
    """The SDK's ``FinalRequestOptions``: what its header building takes."""
    credentials_hint: ClassVar[str]
    """What the user sets so this SDK's client can authenticate."""
    credentials_env: ClassVar[str]
    """The environment variable of the SDK's API key, which its own errors name."""
    create_method: ClassVar[Callable[..., Any]]
    """The SDK resource method a request goes to: its signature says which keywords
    the installed SDK accepts (the SDK versions this project supports differ)."""

    @classmethod
    def wire_options(cls, neutral: Mapping[str, Any], *, has_tools: bool) -> WireOptions:
        """The neutral per-call options as this wire API's keywords."""
        raise NotImplementedError

    # -- the wire API: what each adapter says ------------------------------------------
    @abstractmethod
    def request_kwargs(
        self, request: Request, timeouts: Timeouts, *, learned: frozenset[str] = frozenset()
    ) -> dict[str, Any]:
        """The keywords of the SDK call that sends ``request``."""

    @abstractmethod
    def resource(self, client: Any) -> Any:
        """The client's resource whose ``create`` opens this wire API's stream."""

    @abstractmethod
    def new_translator(self, stream: Any) -> Callable[[], StreamTranslator]:
        """What makes the translator of ``stream`` (the SDK's stream object)."""

    def wire_events(self, stream: Any) -> Iterator[Any] | None:
        """What the translator reads from the SDK's sync stream, if not the SDK's own
        event objects (None): e.g. the events' JSON (``sse_json``)."""
        return None

    def wire_events_async(self, stream: Any) -> AsyncIterator[Any] | None:
        """As ``wire_events``, from the SDK's async stream."""
        return None

    @abstractmethod
    def classify_sdk_error(self, exc: BaseException) -> Fault:
        """The fault of an exception of this adapter's SDK (or its transport)."""

    # -- one attempt ----------------------------------------------------------------------
    def open(
        self,
        client: Any,
        request: Request,
        timeouts: Timeouts,
        *,
        learned: frozenset[str] = frozenset(),
    ) -> AttemptStream:
        kwargs = self.request_kwargs(request, timeouts, learned=learned)
        stream = self.resource(client).create(**kwargs)
        return SDKStream(stream, self.new_translator(stream), self.wire_events(stream))

    async def aopen(
        self,
        client: Any,
        request: Request,
        timeouts: Timeouts,
        *,
        learned: frozenset[str] = frozenset(),
    ) -> AsyncAttemptStream:
        kwargs = self.request_kwargs(request, timeouts, learned=learned)
        stream = await self.resource(client).create(**kwargs)
        return AsyncSDKStream(stream, self.new_translator(stream), self.wire_events_async(stream))

    def classify(self, exc: BaseException, *, learned: frozenset[str] = frozenset()) -> Fault:
        return self.credentials_fault(exc) or self.classify_sdk_error(exc)

    # -- per-call options ---------------------------------------------------------------
    @classmethod
    def create_parameters(cls) -> frozenset[str]:
        return _parameters_of(cls.create_method)

    def _where(self) -> str:
        method = self.create_method
        sdk = method.__module__.split(".")[0]
        version = getattr(__import__(sdk), "__version__", "?")
        return f"{sdk} {version} {method.__qualname__}()"

    def _wire_options(self, request: Request) -> tuple[WireOptions, list[str]]:
        """The neutral options this route sends, and the neutral ones it omits."""
        neutral = {
            name: request.options[name] for name in NEUTRAL_OPTIONS if name in request.options
        }
        wire = self.wire_options(neutral, has_tools=bool(request.tools))
        omitted = list(wire.omitted)
        accepted = self.create_parameters()
        for keyword in [k for k in wire.kwargs if k not in accepted]:
            del wire.kwargs[keyword]
            omitted.extend(wire.sources[keyword])
        return wire, [name for name in NEUTRAL_OPTIONS if name in omitted]

    def check_request(self, request: Request) -> None:
        normalize(request.messages)
        if "tool_choice" in request.options:
            check_tool_choice(request.options["tool_choice"])
        accepted = self.create_parameters()
        for keyword in request.options:
            if keyword not in NEUTRAL_OPTIONS and keyword not in accepted:
                raise ValueError(
                    f"keyword {keyword!r} is not accepted by route {self.name} "
                    f"({self._where()} has no such parameter): pass it for one wire API "
                    f"as provider_options={{{self.api_mode!r}: {{{keyword!r}: ...}}}}"
                )
        for keyword in request.provider_options.get(self.api_mode, {}):
            if keyword not in accepted:
                raise ValueError(
                    f"provider_options[{self.api_mode!r}] keyword {keyword!r} is not "
                    f"accepted by route {self.name} ({self._where()} has no such parameter)"
                )

    def omitted_options(self, request: Request) -> tuple[str, ...]:
        return tuple(self._wire_options(request)[1])

    def apply_options(self, kwargs: dict[str, Any], request: Request) -> dict[str, Any]:
        """Add the options to a request's keywords: the neutral ones translated, then the
        route's, then this api_mode's ``provider_options`` (its ``tools``, the provider's
        native tools, join the function tools), then the other per-call keywords."""
        wire, _ = self._wire_options(request)
        kwargs.update(wire.kwargs)
        kwargs.update(self.options)
        own = dict(request.provider_options.get(self.api_mode, {}))
        native_tools = own.pop("tools", None)
        if native_tools:
            kwargs["tools"] = [*kwargs.get("tools", ()), *native_tools]
        kwargs.update(own)
        kwargs.update(
            (keyword, value)
            for keyword, value in request.options.items()
            if keyword not in NEUTRAL_OPTIONS
        )
        return kwargs

    def client_classes(self) -> tuple[type, ...]:
        return (self.sync_client_class, self.async_client_class)

    def is_async_client(self, client: Any) -> bool:
        return isinstance(client, self.async_client_class)

    def server_url(self, client: Any) -> str | None:
        # Both SDKs keep the resolved base URL (an httpx.URL) on the client.
        base_url = getattr(client, "base_url", None)
        return None if base_url is None else str(base_url)

    def prepare_client(self, client: Any) -> Any:
        if not isinstance(client, self.client_classes()):
            sync, async_ = (_dotted(cls) for cls in self.client_classes())
            raise TypeError(
                f"route {self.name}: the factory must return {sync} or {async_}, "
                f"got {type(client).__module__}.{type(client).__name__}"
            )
        # The engine is the only retry loop: an SDK retry would hide a stall behind its
        # own backoff and re-send from a foreign code path.
        sdk_client: Any = client  # (isinstance against a tuple of types narrows to object)
        prepared = sdk_client.with_options(max_retries=0)
        # Known before the first request, so that even a refusal to build names no key.
        register_client_secrets(prepared)
        self.check_credentials(prepared)
        install_connection_tagging(prepared)
        guard_credentials(prepared, is_async=self.is_async_client(prepared))
        return prepared

    def check_credentials(self, client: Any) -> None:
        """Raise ``MissingCredentials`` if the SDK would refuse every request for want of
        credentials. The SDK itself decides, by building (never sending) a request's
        headers, so every auth method it knows (keys, tokens, credential providers,
        an omitted header) passes exactly as it would at the first request."""
        build_headers = getattr(client, "_build_headers", None)
        if build_headers is None:
            return  # an SDK without it: credentials_fault still catches it per request
        if getattr(client, "_api_key_provider", None) is not None:
            # A callable api_key is asked for the key per request, after this dry run
            # would build headers: its answer is the first request's to judge.
            return
        try:
            build_headers(self.request_options_class(method="post", url="/"))
        except TypeError as exc:
            if NO_CREDENTIALS in str(exc):
                raise self.missing_credentials(exc) from exc
        except Exception:
            # Only credentials are judged here; anything else the dry run trips on is
            # the first request's to report, classified like any other.
            pass

    def missing_credentials_in(self, exc: Exception) -> MissingCredentials | None:
        # An SDK error raised while building a client that names the key's variable is
        # the SDK refusing to build without a key (openai.OpenAI() does).
        sdk = self.sync_client_class.__module__.split(".")[0]
        if type(exc).__module__.split(".")[0] == sdk and self.credentials_env in str(exc):
            return self.missing_credentials(exc)
        return None

    def missing_credentials(self, exc: BaseException) -> MissingCredentials:
        return MissingCredentials(
            redact(f"route {self.name} cannot authenticate: {self.credentials_hint} ({exc})")
        )

    def credentials_fault(self, exc: BaseException) -> Fault | None:
        """The SDK's refusal to send without credentials, if ``exc`` is it: this route's
        fault (another route may work), not the request's and not an engine bug."""
        if isinstance(exc, MissingCredentials):
            reason = str(exc)
        elif isinstance(exc, TypeError) and NO_CREDENTIALS in str(exc):
            reason = str(self.missing_credentials(exc))
        else:
            return None
        return Fault(
            outcome="dropped",
            retryable=False,
            fallback_eligible=True,
            reason=reason[:300],
            error_type=MissingCredentials.__name__,
            api_mode=self.api_mode,
        )

    def sdk_timeout(self, timeouts: Timeouts) -> Any:
        """The SDK's per-request timeout. The watchdog enforces first_token and stale; the
        SDK's read timeout is only a backstop for a watchdog that could not reach the
        socket, so it is the whole run's."""
        return _sdk_timeout(self.timeout_class, timeouts)

    def close_client(self, client: Any) -> None:
        client.close()

    async def aclose_client(self, client: Any) -> None:
        await client.close()


@functools.cache
def _parameters_of(method: Callable[..., Any]) -> frozenset[str]:
    return frozenset(inspect.signature(method).parameters) - {"self"}


@functools.lru_cache(maxsize=64)
def _sdk_timeout(timeout_class: type, timeouts: Timeouts) -> Any:
    # One per Timeouts value rather than one per attempt: the SDK only reads it (httpx
    # copies its fields into each request's extensions), and Timeouts is frozen.
    return timeout_class(
        connect=timeouts.connect,
        read=timeouts.total,
        write=timeouts.connect,
        pool=timeouts.connect,
    )


def _dotted(cls: type) -> str:
    """``anthropic.Anthropic``, not the private module it is defined in."""
    return f"{cls.__module__.split('.')[0]}.{cls.__name__}"
