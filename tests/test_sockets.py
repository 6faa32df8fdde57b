"""The one place that reads SDK/httpx private attributes must fail loudly when they move."""

from __future__ import annotations

import gc
import types
import weakref
from typing import Any

import anthropic
import openai
import pytest

from providers import AnthropicMessages, OpenAIChatCompletions
from providers._sdk.sockets import (
    ConnectionTaggingUnavailable,
    _pools_of,
    install_connection_tagging,
    is_tagged,
)

FACTORIES = [
    lambda: anthropic.Anthropic(base_url="http://127.0.0.1:9", api_key="t"),
    lambda: anthropic.AsyncAnthropic(base_url="http://127.0.0.1:9", api_key="t"),
    lambda: openai.OpenAI(base_url="http://127.0.0.1:9", api_key="t"),
    lambda: openai.AsyncOpenAI(base_url="http://127.0.0.1:9", api_key="t"),
]


@pytest.mark.parametrize(
    "factory", FACTORIES, ids=["anthropic", "async-anthropic", "openai", "async-openai"]
)
def test_tagging_installs_on_every_sdk_client(factory: object) -> None:
    client = factory()  # type: ignore[operator]
    assert not is_tagged(client)
    install_connection_tagging(client)
    assert is_tagged(client), "the pool's network backend was not wrapped: did httpx move it?"
    install_connection_tagging(client)  # idempotent
    assert is_tagged(client)


@pytest.mark.parametrize(
    "factory", FACTORIES, ids=["anthropic", "async-anthropic", "openai", "async-openai"]
)
def test_a_prepared_client_is_freed_where_it_is_dropped(factory: Any) -> None:
    """What the engine installs must not tie a client's pool into a reference cycle:
    the pool, and the TLS context with its CA store it holds, would then be freed only
    by a later cyclic collection (1-2.5 ms with the GIL held), on whichever thread
    allocates then: an event loop's, or the builder thread's while the loop waits."""
    probe = factory()
    route_cls: Any = (
        AnthropicMessages
        if isinstance(probe, anthropic.Anthropic | anthropic.AsyncAnthropic)
        else OpenAIChatCompletions
    )
    route = route_cls(factory, model="m")
    del probe
    if _sdk_keeps_its_pool_in_a_cycle(factory):
        pytest.skip("this SDK release ties its own client's pool into a reference cycle")
    gc.collect()
    gc.disable()
    try:
        client = route.prepare_client(factory())
        pools = [weakref.ref(pool) for pool in _pools_of(client._client)]
        assert pools and is_tagged(client)
        del client
        alive = [ref for ref in pools if ref() is not None]
    finally:
        gc.enable()
    assert not alive, f"{len(alive)} pool(s) outlived the client: held in a reference cycle"


def _sdk_keeps_its_pool_in_a_cycle(factory: Any) -> bool:
    """The bare SDK client, untouched by the engine, outlives its last reference
    (anthropic 0.40, the lowest version allowed, does): nothing the engine adds can be
    judged on that release."""
    gc.collect()
    gc.disable()
    try:
        client = factory()
        pools = [weakref.ref(pool) for pool in _pools_of(client._client)]
        del client
        return any(ref() is not None for ref in pools)
    finally:
        gc.enable()


def test_a_client_without_an_http_client_fails_loudly() -> None:
    with pytest.raises(ConnectionTaggingUnavailable, match="_client"):
        install_connection_tagging(types.SimpleNamespace())


def test_an_httpx_transport_without_a_pool_fails_loudly() -> None:
    class HTTPTransport:  # named like httpx's own, shaped like a future one without _pool
        pass

    fake = types.SimpleNamespace(
        _client=types.SimpleNamespace(_transport=HTTPTransport(), _mounts={})
    )
    with pytest.raises(ConnectionTaggingUnavailable, match="_pool"):
        install_connection_tagging(fake)
