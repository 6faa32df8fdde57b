"""An attempt whose connection is still being made can be aborted like any other.

Two ways a connect hangs in real deployments: the server's listen backlog is full (its
kernel drops the SYN, the client retries it for as long as ``Timeouts.connect``), and a
TLS handshake the server never answers. In both, ``interrupt()`` and ``Timeouts.total``
must end the run within ``bounds.PROMPT``, not at ``Timeouts.connect``: the socket being
connected is known to the attempt from the connect's start, so abort can shut it down.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from bounds import PROMPT

from lifecycle import Interrupted, RetryPolicy, StreamFailed, Timeouts
from lifecycle.adapters import AttemptConnection

pytestmark = pytest.mark.timeout(60)

SLOW_CONNECT = 10.0
"""Timeouts.connect of these tests: without the abort, the run would end only there."""
TIMEOUTS = Timeouts(connect=SLOW_CONNECT, first_token=20, stale=20, total=40)
RETRY = RetryPolicy(max_attempts=1, initial_backoff=0.0, max_backoff=0.0)
INTERRUPT_AFTER = 0.3


def _listener(backlog: int) -> socket.socket:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(backlog)
    return listener


@pytest.fixture
def full_backlog() -> Iterator[str]:
    """A listener that never accepts and whose accept queue is full: Linux drops every
    further SYN, so a client's connect() stays in SYN_SENT."""
    listener = _listener(0)
    address = listener.getsockname()
    filler = socket.create_connection(address, timeout=5)
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    probe.setblocking(False)
    probe.connect_ex(address)
    # A connect the kernel accepts completes at once on loopback; one that is still
    # pending after PROMPT had its SYN dropped (the first retry is a second away).
    _, writable, _ = select.select([], [probe], [], PROMPT)
    probe.close()
    assert not writable, "the listener's backlog did not fill: connects do not hang here"
    try:
        yield f"http://127.0.0.1:{address[1]}"
    finally:
        filler.close()
        listener.close()


@pytest.fixture
def silent_tls() -> Iterator[str]:
    """A listener whose kernel completes the TCP handshake but that never answers the
    TLS ClientHello (nothing accepts the connection)."""
    listener = _listener(64)
    try:
        yield f"https://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()


def _engine(
    provider: Any, base_url: str, *, retry: RetryPolicy = RETRY, **engine_kwargs: Any
) -> Any:
    """An engine with one route of the provider, its client pointed at ``base_url``."""
    import anthropic
    import openai

    if provider.name == "anthropic":
        cls: Any = anthropic.AsyncAnthropic if provider.is_async else anthropic.Anthropic
    else:
        cls = openai.AsyncOpenAI if provider.is_async else openai.OpenAI
    factory: Callable[[], Any] = lambda: cls(base_url=base_url, api_key="test")  # noqa: E731
    route = provider.route(factory=factory)
    return provider.make_engine([route], retry=retry, **engine_kwargs)


@pytest.mark.parametrize("hang", ["full_backlog", "silent_tls"])
def test_interrupt_while_the_connect_hangs(
    provider: Any, hang: str, request: pytest.FixtureRequest
) -> None:
    engine = _engine(provider, request.getfixturevalue(hang), timeouts=TIMEOUTS)
    run, seen = provider.run_to_end(engine, interrupt_after=INTERRUPT_AFTER)
    assert isinstance(seen.error, Interrupted), f"the loop ended with {seen.error!r}"
    assert seen.interrupt_called_at is not None
    latency = seen.ended_at - seen.interrupt_called_at
    assert latency <= PROMPT, (
        f"Interrupted raised {1000 * latency:.0f} ms after interrupt() while connecting; "
        f"cleanup: {run.attempts[-1].diagnostics.cleanup}"
    )
    assert run.state == "cancelled"
    assert [a.outcome for a in run.attempts] == ["interrupted"]
    aborts = [s for s in run.attempts[0].diagnostics.cleanup if s.step == "abort"]
    assert aborts[0].thread == "test-interrupter", aborts


@pytest.mark.parametrize("hang", ["full_backlog", "silent_tls"])
def test_total_ends_a_hanging_connect(
    provider: Any, hang: str, request: pytest.FixtureRequest
) -> None:
    # Timeouts.connect cannot exceed Timeouts.total, but a retry's connect starts late:
    # the second attempt's connect would run 1 s past the total.
    total = 2.0
    timeouts = Timeouts(connect=1.5, first_token=1.5, stale=1.5, total=total)
    retry = RetryPolicy(max_attempts=3, initial_backoff=0.0, max_backoff=0.0)
    engine = _engine(provider, request.getfixturevalue(hang), timeouts=timeouts, retry=retry)
    started = time.monotonic()
    run, seen = provider.run_to_end(engine)
    took = seen.ended_at - started
    assert isinstance(seen.error, StreamFailed), f"the loop ended with {seen.error!r}"
    last = run.attempts[-1].diagnostics
    assert took <= total + PROMPT, (
        f"the run ended {took:.2f} s after it started; the watchdog fired "
        f"{last.detection_lateness} s late; cleanup: {last.cleanup}"
    )
    assert run.state == "failed"
    assert len(run.attempts) == 2, [a.reason for a in run.attempts]
    assert run.attempts[-1].diagnostics.stall_clock == "total"


def test_an_aborted_attempt_shuts_a_socket_attached_later() -> None:
    connection = AttemptConnection()
    connection.abort(reason="interrupt")
    listener = _listener(8)
    try:
        client = socket.create_connection(listener.getsockname(), timeout=5)
        served, _ = listener.accept()
        with client, served:
            connection.attach(client)
            served.settimeout(5)
            assert served.recv(1) == b"", "the peer did not see the socket shut down"
    finally:
        listener.close()
