"""The one place that reads SDK/httpx private attributes must fail loudly when they move."""

from __future__ import annotations

import types

import anthropic
import openai
import pytest

from providers._sockets import ConnectionTaggingUnavailable, install_connection_tagging, is_tagged

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
