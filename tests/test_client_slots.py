"""Client slots: one shared client per route until ``streams_per_client`` streams run at
once, then more; retirement of one client leaves the others serving."""

from __future__ import annotations

import itertools
import sys
import threading
from typing import Any

import pytest

from lifecycle import RetryPolicy, Timeouts
from lifecycle._drivers.client_slots import BUILDER_THREAD, ClientSlot
from providers.loopback import Healthy, StallAfterEvents


class Built:
    def __init__(self, number: int) -> None:
        self.number = number


def slot(cap: int) -> ClientSlot:
    counter = itertools.count(1)
    return ClientSlot(build=lambda: Built(next(counter)), streams_per_client=cap)


def test_one_client_until_the_cap_then_another() -> None:
    s = slot(3)
    leases = [s.lease() for _ in range(3)]
    assert s.built_count == 1 and not s.has_spare and s.building is None
    s.replenish()  # as a driver does once the request is out
    assert s.wait_for_builder()
    assert {lease.client.number for lease in leases} == {1}
    assert s.built_count == 2 and s.has_spare, "the first client, and its spare"
    fourth = s.lease()
    assert fourth.client.number == 2 and s.live_clients == 2, "the spare, moved in"
    s.release(leases[0])
    assert s.lease().client.number == 1, "the oldest client with room is used first"


def test_replenish_returns_before_the_builder_runs_the_factory() -> None:
    """The caller of ``replenish`` (an event loop's thread) starts the builder thread and
    waits until it has started; it must not also wait while the builder runs the factory,
    whose first stretch of Python (an SDK client's set-up before its TLS context) holds
    the GIL: the caller would stay stopped for that stretch, up to the GIL's switch
    interval, or for as long as the OS keeps a loaded builder off the CPU."""
    caller = threading.get_ident()
    caller_inside_replenish: list[bool] = []

    def factory() -> Built:
        frame = sys._current_frames().get(caller)
        names = set()
        while frame is not None:
            names.add(frame.f_code.co_name)
            frame = frame.f_back
        caller_inside_replenish.append("replenish" in names)
        return Built(1)

    for _ in range(20):
        s = ClientSlot(build=factory)  # (taking the spare away closes a slot: a new one)
        s.replenish()
        assert s.wait_for_builder() and s.has_spare
        s.take_spare()
    assert caller_inside_replenish == [False] * 20, (
        f"the factory ran while replenish() held its caller in "
        f"{caller_inside_replenish.count(True)} of 20 builds"
    )


def test_retiring_one_client_leaves_the_others_serving() -> None:
    s = slot(1)
    a, b = s.lease(), s.lease()
    assert (a.client.number, b.client.number) == (1, 2)
    s.retire(a)
    assert s.live_clients == 1
    assert s.release(a) == (a.client, 0), "the retired client's last user closes it"
    s.release(b)
    assert s.lease().client.number == 2
    assert s.built_count == 2, "a live client is left: nothing was built for a"


def test_take_all_returns_every_unclosed_client() -> None:
    s = slot(1)
    a, b, c = s.lease(), s.lease(), s.lease()
    s.replenish()
    s.retire(a)
    assert s.wait_for_builder()
    assert {x.number for x in s.take_all()} == {1, 2, 3, 4}, "the spare too"
    assert s.live_clients == 0
    assert s.release(a) == (None, 0), "closed by take_all already"
    del b, c


def test_a_slot_never_leased_builds_nothing() -> None:
    s = slot(1)
    assert s.building is None and not s.has_spare and s.built_count == 0
    assert s.take_idle() == [] and s.built_count == 0


def test_the_successor_is_the_spare_built_on_the_builder() -> None:
    s = slot(1)
    first = s.lease()
    s.replenish()
    assert s.wait_for_builder() and s.has_spare
    s.retire(first)
    s.release(first)
    successor = s.successor()
    assert successor is not None and successor.number == 2
    assert s.current_client is successor.client
    assert not s.has_spare and s.building is None, "the next spare: after the next request"
    assert s.builds_log == [threading.current_thread().name, BUILDER_THREAD]


def test_a_failed_spare_build_reaches_the_lease_that_needs_it_once() -> None:
    calls: list[str] = []

    def build() -> Built:
        calls.append(threading.current_thread().name)
        if len(calls) == 2:
            raise LookupError("no credentials for the spare")
        return Built(len(calls))

    s = ClientSlot(build=build, streams_per_client=1)
    first = s.lease()
    s.replenish()
    assert s.wait_for_builder() and not s.has_spare
    s.retire(first)
    s.release(first)
    with pytest.raises(LookupError, match="spare"):
        s.successor()  # cleanup records it; the error stays for the next lease
    with pytest.raises(LookupError, match="spare"):
        s.lease()
    assert s.lease().client.number == 3, "the lease after builds anew, on its own thread"
    s.replenish()
    s.replenish()  # one spare at a time
    assert s.wait_for_builder()
    here = threading.current_thread().name
    assert calls == [here, BUILDER_THREAD, here, BUILDER_THREAD], "no retry loop"


def test_streams_per_client_is_checked(provider: Any) -> None:
    with pytest.raises(ValueError, match="streams_per_client"):
        provider.route(streams_per_client=0)


def test_concurrent_runs_beyond_the_cap_get_their_own_clients(provider: Any) -> None:
    """Five runs at once on a route whose clients carry two streams each: three clients,
    every run completes, a stall on one client retires only that client, and closing the
    engine closes every client the route built."""
    route = provider.route(streams_per_client=2)
    engine = provider.make_engine(
        [route],
        timeouts=Timeouts(connect=5, first_token=1.5, stale=1.5, total=30),
        retry=RetryPolicy(max_attempts=2, initial_backoff=0.0, max_backoff=0.0),
    )
    # The healthy streams last long enough (18 blocks of OpenAI's recording, 9 of
    # Anthropic's, 0.02 s apart) for all five runs to hold a lease at once, and end well
    # before the stall is found: the retry then finds room on a client already built.
    provider.script([Healthy(drip=0.02)] * 4 + [StallAfterEvents(n=1), Healthy(drip=0.02)])
    runs = provider.run_at_once(engine, 5)
    assert [run.state for run in runs] == ["completed"] * 5
    assert sum(len(run.attempts) for run in runs) == 6  # one stall, retried
    slot_ = provider.clients(route)
    assert slot_.wait_for_builder()
    assert slot_.built_count == 4, "five streams at two per client, and one spare"
    if provider.is_async:
        provider.run_coroutine(engine.aclose())
    else:
        engine.close()
    built = provider.built[provider.model]
    assert len(built) == slot_.built_count and all(c.is_closed() for c in built)
