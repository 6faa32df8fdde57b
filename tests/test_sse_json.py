"""The Anthropic and Chat Completions adapters read each event's JSON, not the SDK's model.

``providers/_sdk/sse_json.py`` iterates the SDK stream's own server-sent-event decoder
(``Stream._iter_events``) and, for anthropic's ``event: error``, asks the client for
its status error (``_make_status_error``): private names, so this fails loudly when a
release moves them. Through the real SDKs over loopback, on both drivers: a run builds
no SDK model of any event (the SDK's ``_process_response_data`` is never called while
the run streams), and its answer is the recording's whole text. The readers' other
duties (``[DONE]``, error events, unknown events, keep-alive reuse) are pinned where
those behaviours are: test_hostile_wire, test_driver_policy, test_connection_reuse.
"""

from __future__ import annotations

import asyncio
from typing import Any

import anthropic
import anthropic._streaming
import openai
import openai._streaming
import pytest
from conftest import make_route, unique_model

from lifecycle import StreamEngine, Timeouts
from providers.loopback import Healthy, LoopbackServer, recordings


@pytest.mark.parametrize(
    "stream_class",
    [
        anthropic._streaming.Stream,
        anthropic._streaming.AsyncStream,
        openai._streaming.Stream,
        openai._streaming.AsyncStream,
    ],
    ids=["anthropic", "async-anthropic", "openai", "async-openai"],
)
def test_every_sdk_stream_has_its_own_event_decoder(stream_class: type) -> None:
    assert callable(getattr(stream_class, "_iter_events", None)), (
        f"{stream_class.__module__}.{stream_class.__qualname__} has no _iter_events: "
        "providers/_sdk/sse_json.py must follow the SDK's new event decoder"
    )


@pytest.mark.parametrize("client_class", [anthropic.Anthropic, anthropic.AsyncAnthropic])
def test_anthropic_clients_make_the_status_error_of_an_error_event(client_class: type) -> None:
    client = client_class(base_url="http://127.0.0.1:9", api_key="t")
    make = getattr(client, "_make_status_error", None)
    assert callable(make), "anthropic moved _make_status_error: see sse_json.anthropic_events"


@pytest.mark.parametrize("driver", ["sync", "async"])
@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_a_run_builds_no_sdk_model_of_any_event(
    server: LoopbackServer, provider: str, driver: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    is_async = driver == "async"
    client_module: Any = anthropic if provider == "anthropic" else openai
    client_class = (
        (client_module.AsyncAnthropic if is_async else client_module.Anthropic)
        if provider == "anthropic"
        else (client_module.AsyncOpenAI if is_async else client_module.OpenAI)
    )
    built: list[str] = []
    original = client_class._process_response_data

    def counted(self: Any, *, data: Any, cast_to: Any, response: Any) -> Any:
        built.append(getattr(cast_to, "__name__", repr(cast_to)))
        return original(self, data=data, cast_to=cast_to, response=response)

    monkeypatch.setattr(client_class, "_process_response_data", counted)
    model = unique_model(provider)
    recording = "text_basic"
    server.script(model, [Healthy(recording=recording)])
    route = make_route(provider, server, model, is_async=is_async)
    engine = StreamEngine(routes=[route], timeouts=Timeouts(first_token=10, stale=10, total=30))
    messages = [{"role": "user", "content": "Hi"}]
    if is_async:

        async def main() -> Any:
            async with engine.astream(messages=messages, max_tokens=64) as run:
                async for _event in run:
                    pass
            await engine.aclose()
            return run

        run = asyncio.run(main())
    else:
        with engine.stream(messages=messages, max_tokens=64) as run:
            for _event in run:
                pass
        engine.close()
    assert run.state == "completed"
    assert run.message.text == recordings.load(provider, recording).text()
    assert built == [], f"the SDK built a model of each event: {built[:3]}..."
