"""The engine's own context manager closes every client it built, with both drivers:
``with StreamEngine(...)`` for sync runs, ``async with StreamEngine(...)`` for async ones
(whose clients only ``await engine.aclose()`` can close)."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import open_connections_of

from lifecycle import RetryPolicy, Timeouts
from providers.loopback import Healthy, HttpError, StallAfterEvents

pytestmark = pytest.mark.timeout(30)

TIMEOUTS = Timeouts(connect=5, first_token=0.5, stale=0.5, total=30)
RETRY = RetryPolicy(max_attempts=2, initial_backoff=0.0, max_backoff=0.0)


def test_the_engines_context_closes_every_client_it_built(provider: Any) -> None:
    # A 529, then a stall on the first route (two cleanups: two clients closed there and
    # a third built), then the fallback completes on the other route.
    provider.script([HttpError(status=529), StallAfterEvents(n=1)])
    routes = [provider.route(), provider.other_route()]
    engine, run, seen = provider.run_in_own_engine(routes, timeouts=TIMEOUTS, retry=RETRY)
    assert seen.error is None, repr(seen.error)
    assert run.state == "completed"
    assert [(a.route_index, a.outcome) for a in run.attempts] == [
        (0, "error"),
        (0, "stale"),
        (1, "completed"),
    ]
    first = provider.built[provider.model]
    fallback = provider.built[provider.other_model]
    # Route 0: its first client, the spare moved in after the stall, the spare moved in
    # after the error; the fallback route: its client and that client's spare.
    assert (len(first), len(fallback)) == (3, 2)
    # The runs' flavour of client, and only it, was built.
    for route in routes:
        assert provider.clients(route, engine).built_count == len(provider.built[route.model])
        route_clients = engine._route_clients(route)
        unused = route_clients.sync if provider.is_async else route_clients.first_async
        assert unused.built_count == 0
    # Once the engine's context has exited, every one of them is closed and its slot empty.
    assert all(client.is_closed() for client in first + fallback)
    for route in routes:
        assert provider.clients(route, engine).take_all() == []
    with pytest.raises(RuntimeError, match="closed"):
        provider.run_to_end(engine)
    # And the server sees none of their connections open.
    models = {provider.model, provider.other_model}
    assert provider.server.wait_until(lambda: not open_connections_of(provider.server, models), 2)


def test_two_engines_over_one_route_object_keep_their_own_clients(provider: Any) -> None:
    """A route is configuration: each engine builds, shares among its own runs and
    closes its own clients. Closing one engine leaves the other's client open, so that
    engine's next run goes out on it without a build."""
    route = provider.route()
    first = provider.make_engine([route])
    second = provider.make_engine([route])
    provider.script([Healthy(), Healthy(), Healthy()])
    for engine in (first, second):
        run, seen = provider.run_to_end(engine)
        assert run.state == "completed", repr(seen.error)
    provider.settle()
    built = provider.built[provider.model]
    assert len(built) == 4, "each engine: its client and that client's spare"
    if provider.is_async:
        provider.run_coroutine(first.aclose())
    else:
        first.close()
    assert sum(client.is_closed() for client in built) == 2, "the first engine's two"
    kept = provider.clients(route, second).current_client
    assert kept is not None and not kept.is_closed()
    run, seen = provider.run_to_end(second)
    assert run.state == "completed", repr(seen.error)
    provider.settle()
    assert len(built) == 4, "the second engine's client still serves it"
    assert provider.clients(route, second).current_client is kept and not kept.is_closed()
