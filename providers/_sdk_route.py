"""What the three adapters share: one SDK's client classes, made ready for the engine.

An adapter names its SDK's sync and async client classes and its ``Timeout`` class; this
base checks what a factory returns, turns the SDK's own retries off, installs the
connection tagging the abort needs, closes clients, and builds the per-request timeout.
The wire API (request shape, event translation, classification) stays in the adapter.
"""

from __future__ import annotations

from typing import Any, ClassVar

from lifecycle import Route, Timeouts

from ._sockets import install_connection_tagging

__all__ = ["SdkRoute"]


class SdkRoute(Route):
    sync_client_class: ClassVar[type]
    async_client_class: ClassVar[type]
    timeout_class: ClassVar[type]

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
        install_connection_tagging(prepared)
        return prepared

    def sdk_timeout(self, timeouts: Timeouts) -> Any:
        """The SDK's per-request timeout. The watchdog enforces first_token and stale; the
        SDK's read timeout is only a backstop for a watchdog that could not reach the
        socket, so it is the whole run's."""
        return self.timeout_class(
            connect=timeouts.connect,
            read=timeouts.total,
            write=timeouts.connect,
            pool=timeouts.connect,
        )

    def close_client(self, client: Any) -> None:
        client.close()

    async def aclose_client(self, client: Any) -> None:
        await client.close()


def _dotted(cls: type) -> str:
    """``anthropic.Anthropic``, not the private module it is defined in."""
    return f"{cls.__module__.split('.')[0]}.{cls.__name__}"
