"""The engine's own context manager closes every client it built, with both drivers:
``with StreamEngine(...)`` for sync runs, ``async with StreamEngine(...)`` for async ones
(whose clients only ``await engine.aclose()`` can close)."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import open_connections_of

from lifecycle import RetryPolicy, Timeouts
from providers.loopback import HttpError, StallAfterEvents

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
        assert provider.clients(route).built_count == len(provider.built[route.model])
        unused = route.sync_clients if provider.is_async else route.async_clients
        assert unused.built_count == 0
    # Once the engine's context has exited, every one of them is closed and its slot empty.
    assert all(client.is_closed() for client in first + fallback)
    for route in routes:
        assert provider.clients(route).take_all() == []
    with pytest.raises(RuntimeError, match="closed"):
        provider.run_to_end(engine)
    # And the server sees none of their connections open.
    models = {provider.model, provider.other_model}
    assert provider.server.wait_until(lambda: not open_connections_of(provider.server, models), 2)
