"""Route health shared by a fleet: breakers kept in Redis (``pip install redis``).

``RedisHealthStore`` is a ``HealthStore`` whose breaker cores live in Redis hashes, one
per route, under ``prefix + route name``. Give every process of a fleet a store on the
same Redis, and its engines share their routes' breakers: failures seen by one process
open the breaker for all of them, and a half-open breaker lets exactly one probe through
across the whole fleet::

    from lifecycle import BreakerPolicy, StreamEngine
    from lifecycle._health.redis_store import RedisHealthStore

    engine = StreamEngine(
        routes=[...],
        breaker=BreakerPolicy(failures_to_open=5, cooldown=30),
        health_store=RedisHealthStore(url="redis://redis.internal:6379/0"),
    )

Route names (``Route(name=...)``) are the keys, so processes that call a route by the
same name share its breaker; nothing of the process (pid, host) enters a key.

Theory of operation
-------------------
A breaker operation (``admit``, ``report``) is a read-modify-write of the whole core:
"is it half-open? then take the probe slot" must not interleave with another process
doing the same, or two processes both see ``half_open`` and both send a probe (or two
failure reports both read ``failures=4`` and both write 5, a lost update). Each
``update`` is therefore one optimistic transaction:

1. ``WATCH key``, then ``HGETALL key``: the core as it is now;
2. apply the operation to the core in this process (``BreakerCore`` is sans-I/O: the
   operation is a pure function of the fields and the time it was given);
3. ``MULTI``, ``HSET key <every field>``, ``EXEC``.

Redis runs ``EXEC`` only if no other client wrote the key since ``WATCH``; otherwise
it runs nothing and the store starts again from step 1 with the new fields (a few
times, with a short jittered pause once there is real contention, at most
``max_tries`` in all, then ``redis.WatchError`` is raised). So every operation that
returns saw, and replaced, the state left by the previous one: the transitions of one
route form a single serial history across every process, exactly as under the lock of
``LocalHealthStore``. An operation that changes nothing (the common refusal by an open
breaker) writes nothing: its answer is the one the state had when it was read, and a
write would only make concurrent operations retry. Time-driven transitions (the end of
a cooldown, an expired probe) are taken by whichever operation comes first after the
moment, inside its own transaction, from the wall-clock time the caller handed in
(``time.time()``), so they need no timer anywhere.

When Redis is lost
------------------
A store never retries a dead Redis for long: clients built from ``url`` have
``socket_timeout`` and ``socket_connect_timeout`` of ``socket_timeout`` (0.5 s) and
retry a broken connection once, at once (a pooled connection from before a Redis
restart). Any failure (refused, timed out, reset) raises ``redis.RedisError``;
``RouteHealth`` catches it, logs one warning on the ``"lifecycle"`` logger, and keeps
this process's breakers in its own ``LocalHealthStore`` for a few seconds before it
tries Redis again; runs never fail because the store did. While degraded, each process
judges routes alone, with breakers of its own (closed at its first outage), and what
it learns then is not written back: when Redis answers again, the fleet's shared state
is used again as Redis kept it (empty, if Redis restarted without persistence: every
breaker closed). A connection lost while ``EXEC`` was in flight leaves unknown whether
the write happened; that one is raised rather than retried, so an operation is never
applied twice.

Async runs use ``redis.asyncio`` pipelines in the same way. An async client is bound
to the event loop it first ran on: a store built from ``url`` keeps one per event loop
(``aclose()`` closes the current loop's); an ``async_client`` passed in is used as is.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, cast

import redis
import redis.asyncio
import redis.asyncio.retry
import redis.retry
from redis.backoff import NoBackoff

from .._core.breaker import BreakerCore
from .._core.config import BreakerPolicy
from .._core.fork import renew_lock_after_fork

__all__ = ["RedisHealthStore"]

T = TypeVar("T")

_CONNECTION_ERRORS = (redis.ConnectionError, redis.TimeoutError, OSError)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _decode(raw: object) -> dict[str, str]:
    """HGETALL's answer, whether the client decodes responses or not."""
    return {_text(k): _text(v) for k, v in cast(Mapping[Any, Any], raw).items()}


def _lost_connection(exc: redis.WatchError) -> bool:
    """redis-py turns a connection lost while a key is watched into a WatchError (its
    cause left as the context): unlike a real conflict, the outcome of an EXEC in flight
    is then unknown."""
    return not exc.__suppress_context__ and isinstance(exc.__context__, _CONNECTION_ERRORS)


def _changed(
    raw: object, route: str, policy: BreakerPolicy, change: Callable[[BreakerCore], T]
) -> tuple[T, dict[str, str] | None]:
    """Apply ``change`` to the core stored as ``raw`` (HGETALL's answer): its result, and
    the fields to save, or None when nothing changed (then nothing is written)."""
    fields = _decode(raw)
    core = BreakerCore.from_fields(fields, route=route, policy=policy)
    result = change(core)
    saved = core.to_fields()
    return result, None if saved == fields else saved


def _raise_if_lost_during_exec(exc: redis.WatchError, committing: bool, key: str) -> None:
    """A WatchError is a conflict to retry, unless the connection was lost during EXEC:
    the write may have been applied, and retrying could count a report twice."""
    if committing and _lost_connection(exc):
        raise redis.ConnectionError(
            f"connection to Redis lost during EXEC on {key!r}: "
            "the update may or may not have been applied"
        ) from exc


def _pause(tries: int) -> float:
    """Seconds to wait before try ``tries + 1`` after a conflict: none at first, then a
    short random pause that grows, so contenders stop colliding in lockstep."""
    if tries < 3:
        return 0.0
    return random.uniform(0.0, min(0.02, 0.0005 * 2 ** (tries - 3)))


class RedisHealthStore:
    """Breaker cores in Redis hashes, shared by every process that uses the same Redis and
    ``prefix``; see the module docstring.

    ``client`` (a ``redis.Redis``) serves sync runs, ``async_client`` (a
    ``redis.asyncio.Redis``) async ones; ``url`` ("redis://host:6379/0",
    "unix:///run/redis.sock") builds whichever is not given, with short timeouts
    (``socket_timeout`` seconds). Clients passed in keep their own settings: give them
    short timeouts too, or a dead Redis stalls runs until they expire.
    """

    def __init__(
        self,
        *,
        client: redis.Redis | None = None,
        async_client: redis.asyncio.Redis | None = None,
        url: str | None = None,
        prefix: str = "lifecycle:breaker:",
        socket_timeout: float = 0.5,
        max_tries: int = 50,
    ) -> None:
        if client is None and async_client is None and url is None:
            raise ValueError("RedisHealthStore needs client=, async_client= or url=")
        if client is not None and not isinstance(client, redis.Redis):
            raise TypeError(
                f"RedisHealthStore(client=...) must be a redis.Redis, got {type(client).__name__}"
            )
        if async_client is not None and not isinstance(async_client, redis.asyncio.Redis):
            raise TypeError(
                "RedisHealthStore(async_client=...) must be a redis.asyncio.Redis, "
                f"got {type(async_client).__name__}"
            )
        if url is not None and not isinstance(url, str):
            raise TypeError("RedisHealthStore(url=...) must be a string")
        if not isinstance(prefix, str):
            raise TypeError("RedisHealthStore(prefix=...) must be a string")
        if isinstance(max_tries, bool) or not isinstance(max_tries, int) or max_tries < 1:
            raise ValueError("RedisHealthStore(max_tries=...) must be a positive int")
        if (
            isinstance(socket_timeout, bool)
            or not isinstance(socket_timeout, int | float)
            or not socket_timeout > 0
        ):
            raise ValueError("RedisHealthStore(socket_timeout=...) must be a positive number")
        self.prefix = prefix
        self.max_tries = max_tries
        self._url = url
        self._timeout = float(socket_timeout)
        self._owns_client = client is None and url is not None
        self._client = client if client is not None else self._build_sync()
        self._async_client = async_client
        self._loop_clients: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, redis.asyncio.Redis
        ] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        renew_lock_after_fork(self)

    def key(self, route: str) -> str:
        """The Redis key of ``route``'s breaker hash."""
        return self.prefix + route

    # -- clients ------------------------------------------------------------------------
    def _build_sync(self) -> redis.Redis | None:
        if self._url is None:
            return None
        retry = redis.retry.Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,))
        return redis.Redis.from_url(
            self._url,
            socket_timeout=self._timeout,
            socket_connect_timeout=self._timeout,
            retry=retry,
        )

    def _sync(self) -> redis.Redis:
        if self._client is None:
            raise TypeError(
                "RedisHealthStore has no sync client for a sync run: pass client= or url="
            )
        return self._client

    def _async(self) -> redis.asyncio.Redis:
        if self._async_client is not None:
            return self._async_client
        if self._url is None:
            raise TypeError(
                "RedisHealthStore has no async client for an async run: pass async_client= or url="
            )
        loop = asyncio.get_running_loop()
        with self._lock:
            client = self._loop_clients.get(loop)
            if client is None:
                retry = redis.asyncio.retry.Retry(
                    NoBackoff(), 1, supported_errors=(redis.ConnectionError,)
                )
                client = redis.asyncio.Redis.from_url(
                    self._url,
                    socket_timeout=self._timeout,
                    socket_connect_timeout=self._timeout,
                    retry=retry,
                )
                self._loop_clients[loop] = client
            return client

    def close(self) -> None:
        """Close the sync client this store built from ``url`` (clients passed in are the
        caller's to close)."""
        if self._owns_client and self._client is not None:
            self._client.close()

    async def aclose(self) -> None:
        """Close the clients this store built from ``url`` for the running event loop, and
        its sync client."""
        with self._lock:
            client = self._loop_clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()
        self.close()

    # -- HealthStore --------------------------------------------------------------------
    def update(self, route: str, policy: BreakerPolicy, change: Callable[[BreakerCore], T]) -> T:
        """Load ``route``'s core, apply ``change``, save it: one atomic step across every
        process (WATCH/MULTI/EXEC, retried on conflict; ``change`` runs once per try)."""
        key = self.key(route)
        with self._sync().pipeline(transaction=True) as typed_pipe:
            pipe = cast(Any, typed_pipe)  # parts of redis-py's Pipeline are untyped
            for tries in range(self.max_tries):
                committing = False
                try:
                    pipe.watch(key)
                    result, saved = _changed(pipe.hgetall(key), route, policy, change)
                    if saved is None:
                        pipe.unwatch()
                        return result
                    pipe.multi()
                    pipe.hset(key, mapping=saved)
                    committing = True
                    pipe.execute()
                    return result
                except redis.WatchError as exc:
                    _raise_if_lost_during_exec(exc, committing, key)
                    pipe.reset()
                    if pause := _pause(tries):
                        time.sleep(pause)
        raise redis.WatchError(f"{key!r} changed under every one of {self.max_tries} tries")

    async def aupdate(
        self, route: str, policy: BreakerPolicy, change: Callable[[BreakerCore], T]
    ) -> T:
        """``update`` for async runs, with a ``redis.asyncio`` pipeline."""
        key = self.key(route)
        async with self._async().pipeline(transaction=True) as typed_pipe:
            pipe = cast(Any, typed_pipe)  # parts of redis-py's Pipeline are untyped
            for tries in range(self.max_tries):
                committing = False
                try:
                    await pipe.watch(key)
                    result, saved = _changed(await pipe.hgetall(key), route, policy, change)
                    if saved is None:
                        await pipe.unwatch()
                        return result
                    pipe.multi()
                    pipe.hset(key, mapping=saved)
                    committing = True
                    await pipe.execute()
                    return result
                except redis.WatchError as exc:
                    _raise_if_lost_during_exec(exc, committing, key)
                    await pipe.reset()
                    if pause := _pause(tries):
                        await asyncio.sleep(pause)
        raise redis.WatchError(f"{key!r} changed under every one of {self.max_tries} tries")

    def snapshot(self, routes: tuple[str, ...], policy: BreakerPolicy) -> dict[str, BreakerCore]:
        """The current cores of ``routes``, read in one round trip (nothing is watched:
        each core is as it was at the moment Redis read it)."""
        with self._sync().pipeline(transaction=False) as pipe:
            for route in routes:
                pipe.hgetall(self.key(route))
            answers = pipe.execute()
        return {
            route: BreakerCore.from_fields(_decode(raw), route=route, policy=policy)
            for route, raw in zip(routes, answers, strict=True)
        }

    def __repr__(self) -> str:
        where = self._url if self._url is not None else "given clients"
        return f"RedisHealthStore({where!r}, prefix={self.prefix!r})"
