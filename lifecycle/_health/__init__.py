"""Route health: the breaker store interface, the in-process store and the Redis store.

``route_health`` asks a route's breaker before an attempt and reports after it;
``redis_store`` shares the breakers across processes (needs ``redis``).

May import: ``_core``. Its public face is ``lifecycle.health``.
"""
