"""Delivery at every cut: a tool call whose stop never arrived is never a tool call.

Every recorded stream that carries tool calls is cut after each of its SSE blocks
(``TruncateAfterBlocks``: every block counts, so the cuts fall between a call's last
argument delta, whose JSON is already whole, and its stop), the body ending either
cleanly or with a TCP reset, and replayed through the real engine, real SDKs and both
drivers. Whatever the caller is handed (``run.message``, ``StreamFailed.partial_message``)
holds in ``tool_calls`` only calls whose stop arrived: ``content_block_stop`` (Anthropic),
a ``finish_reason`` (Chat Completions), ``function_call_arguments.done`` or
``output_item.done`` (Responses). Every other call that started is in
``incomplete_tool_calls``, with a reason.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import anthropic
import openai
import pytest
from conftest import EngineFactory, ProviderKit

from lifecycle import Message, RetryPolicy, StreamFailed, Timeouts
from providers import OpenAIResponses
from providers.loopback import LoopbackServer, TruncateAfterBlocks, recordings
from providers.loopback._recordings import Provider, SseBlock

pytestmark = pytest.mark.timeout(30)

TOOL_CALL_RECORDINGS: tuple[tuple[Provider, str], ...] = (
    ("anthropic", "tool_use"),
    ("openai", "tool_calls_a"),
    ("openai", "tool_calls_b"),
    ("openai", "tool_calls_c"),
    ("openai", "tool_calls_parallel"),
    ("openai_responses", "tool_call"),
)
ENDS = ("complete", "cut")
# No cut here ever stalls: a clock that fires would mean the body did not end.
TIMEOUTS = Timeouts(first_token=10, stale=10, total=20)


@dataclass(frozen=True)
class CallsOnWire:
    """What the first blocks of a recording say about its tool calls, by call id."""

    started: tuple[str, ...]
    """Calls whose first piece (id and name) was sent, in order."""
    stopped: frozenset[str]
    """Calls whose own stop was sent."""
    message_stopped: bool
    """The provider's stop for the whole answer was sent."""
    arguments: dict[str, str]
    """The argument text sent so far, per call."""


def _payloads(blocks: tuple[SseBlock, ...]) -> Iterator[dict[str, Any]]:
    for block in blocks:
        if block.data and not block.data.startswith("[DONE]"):
            payload = block.json()
            if isinstance(payload, dict):
                yield payload


def calls_on_wire(provider: Provider, blocks: tuple[SseBlock, ...]) -> CallsOnWire:
    """Read from the wire itself, independently of the adapters under test."""
    by_index: dict[int, str] = {}
    stopped: set[str] = set()
    arguments: dict[int, str] = {}
    message_stopped = False
    for payload in _payloads(blocks):
        kind = payload.get("type")
        if provider == "anthropic":
            delta = payload.get("delta") or {}
            if kind == "content_block_start" and payload["content_block"]["type"] == "tool_use":
                by_index[payload["index"]] = payload["content_block"]["id"]
            elif kind == "content_block_delta" and delta.get("type") == "input_json_delta":
                index = payload["index"]
                arguments[index] = arguments.get(index, "") + delta["partial_json"]
            elif kind == "content_block_stop" and payload["index"] in by_index:
                stopped.add(by_index[payload["index"]])
            elif kind == "message_stop":
                message_stopped = True
        elif provider == "openai":
            for choice in payload.get("choices") or ():
                for call in choice["delta"].get("tool_calls") or ():
                    if call.get("id"):
                        by_index[call["index"]] = call["id"]
                    piece = (call.get("function") or {}).get("arguments") or ""
                    arguments[call["index"]] = arguments.get(call["index"], "") + piece
                if choice.get("finish_reason") is not None:
                    # One finish_reason ends every call of the choice.
                    stopped.update(by_index.values())
                    message_stopped = True
        else:
            item = payload.get("item") or {}
            if kind == "response.output_item.added" and item.get("type") == "function_call":
                by_index[payload["output_index"]] = item["call_id"]
            elif kind == "response.function_call_arguments.delta":
                index = payload["output_index"]
                arguments[index] = arguments.get(index, "") + payload["delta"]
            elif (
                kind
                in (
                    "response.function_call_arguments.done",
                    "response.output_item.done",
                )
                and payload["output_index"] in by_index
            ):
                stopped.add(by_index[payload["output_index"]])
            elif kind in ("response.completed", "response.incomplete"):
                message_stopped = True
    return CallsOnWire(
        started=tuple(by_index[i] for i in sorted(by_index)),
        stopped=frozenset(stopped),
        message_stopped=message_stopped,
        arguments={call_id: arguments.get(i, "") for i, call_id in by_index.items()},
    )


CUTS = [
    pytest.param(provider, name, n, id=f"{name}-{n}")
    for provider, name in TOOL_CALL_RECORDINGS
    for n in range(len(recordings.load(provider, name).blocks) + 1)
]


def test_each_recording_has_a_cut_between_whole_arguments_and_their_stop() -> None:
    """The property below is only worth its runs if a cut leaves a call whose JSON is
    already whole but whose stop has not come: each recording has such a cut."""
    for provider, name in TOOL_CALL_RECORDINGS:
        blocks = recordings.load(provider, name).blocks
        cuts = [calls_on_wire(provider, blocks[:n]) for n in range(len(blocks) + 1)]
        assert any(
            call_id not in wire.stopped and _is_json(wire.arguments[call_id])
            for wire in cuts
            for call_id in wire.started
        ), f"{name}: no cut falls between whole arguments and their stop"


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


_TLS: list[ssl.SSLContext] = []


def _client_factory(sdk: str, server: LoopbackServer, *, is_async: bool) -> Callable[[], Any]:
    """The SDK's client on its default HTTP client class, all sharing one TLS context:
    each cut rebuilds its client, and loading the CA bundle for every build would cost
    ~0.1 s of CPU a run, for a server that speaks plain HTTP."""
    if not _TLS:
        _TLS.append(ssl.create_default_context())
    module: Any = anthropic if sdk == "anthropic" else openai
    client_cls = module.AsyncAnthropic if sdk == "anthropic" else module.AsyncOpenAI
    if not is_async:
        client_cls = module.Anthropic if sdk == "anthropic" else module.OpenAI
    http_cls = module.DefaultAsyncHttpxClient if is_async else module.DefaultHttpxClient
    base = server.anthropic_base_url if sdk == "anthropic" else server.openai_base_url
    return lambda: client_cls(base_url=base, api_key="test", http_client=http_cls(verify=_TLS[0]))


def check_delivery(
    message: Message | None, wire: CallsOnWire, *, where: str, whole_stream: bool
) -> None:
    if message is None:
        assert not wire.started, f"{where}: calls {wire.started} started but no message"
        return
    complete = [call.id for call in message.tool_calls]
    incomplete = {call.id: call for call in message.incomplete_tool_calls}
    for call_id in complete:
        assert call_id in wire.stopped, (
            f"{where}: tool call {call_id} is in tool_calls, but its stop never arrived"
        )
    for call in message.tool_calls:
        assert _is_json(call.arguments), f"{where}: {call.id} has arguments {call.arguments!r}"
    for call_id in wire.started:
        if call_id not in wire.stopped:
            assert call_id in incomplete, (
                f"{where}: tool call {call_id} was cut before its stop, "
                "yet is not in incomplete_tool_calls"
            )
            assert incomplete[call_id].reason, f"{where}: {call_id} is incomplete without reason"
    assert sorted([*complete, *incomplete]) == sorted(wire.started), (
        f"{where}: calls on the wire {wire.started}, delivered {complete} + {list(incomplete)}"
    )
    if whole_stream:
        assert complete == list(wire.started), f"{where}: a whole stream's calls are complete"


@pytest.mark.parametrize("end", ENDS)
@pytest.mark.parametrize(("provider", "recording", "n"), CUTS)
def test_a_call_cut_before_its_stop_is_never_a_tool_call(
    server: LoopbackServer,
    make_engine: EngineFactory,
    driver: str,
    provider: Provider,
    recording: str,
    n: int,
    end: str,
) -> None:
    kit = ProviderKit(
        name="anthropic" if provider == "anthropic" else "openai",
        server=server,
        make_engine=make_engine,
        driver=driver,
    )
    route = kit.route(
        factory=_client_factory(kit.name, server, is_async=kit.is_async),
        route_class=OpenAIResponses if provider == "openai_responses" else None,
    )
    engine = make_engine(
        [route],
        timeouts=TIMEOUTS,
        # One attempt, and a cut after delivered output raises with the partial message:
        # the caller gets what this attempt assembled, not a retry's.
        retry=RetryPolicy(max_attempts=1, on_partial="fail"),
    )
    kit.script([TruncateAfterBlocks(n=n, recording=recording, end=end)])
    run, seen = kit.run_to_end(engine)

    blocks = recordings.load(provider, recording).blocks
    wire = calls_on_wire(provider, blocks[:n])
    whole_stream = n == len(blocks) and end == "complete"
    where = f"{recording} cut after {n} of {len(blocks)} blocks (end={end}, {driver})"
    check_delivery(run.message, wire, where=where, whole_stream=whole_stream)
    if isinstance(seen.error, StreamFailed):
        check_delivery(
            seen.error.partial_message, wire, where=f"{where}, partial_message", whole_stream=False
        )
    if end == "complete":
        # A clean end is a completed run exactly when the answer's stop came.
        assert (run.state == "completed") == wire.message_stopped, (
            f"{where}: state {run.state}, error {seen.error!r}"
        )
