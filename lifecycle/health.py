"""Route health, for those who keep it: the breaker store interface and its stores.

A ``HealthStore`` keeps one ``BreakerCore`` per route and applies each change
atomically; ``LocalHealthStore`` (the default) keeps them in the process,
``RedisHealthStore`` shares them across a fleet (``pip install '.[redis]'``: imported
on first use). ``RouteHealth`` is what the engine asks, per route, before an attempt.
"""

from typing import TYPE_CHECKING, Any

from ._core.breaker import (
    BREAKER_STATES,
    BREAKER_TRANSITIONS,
    Admission,
    BreakerChange,
    BreakerCore,
)
from ._core.config import BreakerPolicy
from ._health.route_health import BreakerStatus, HealthStore, LocalHealthStore, RouteHealth

if TYPE_CHECKING:
    from ._health.redis_store import RedisHealthStore

__all__ = [
    "BREAKER_STATES",
    "BREAKER_TRANSITIONS",
    "Admission",
    "BreakerChange",
    "BreakerCore",
    "BreakerPolicy",
    "BreakerStatus",
    "HealthStore",
    "LocalHealthStore",
    "RedisHealthStore",
    "RouteHealth",
]

if not TYPE_CHECKING:

    def __getattr__(name: str) -> Any:
        # The Redis store needs the redis client, an optional dependency.
        if name == "RedisHealthStore":
            from ._health.redis_store import RedisHealthStore

            globals()[name] = RedisHealthStore
            return RedisHealthStore
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
