"""The drivers: what carries the core's decisions out, on a thread or an event loop.

``run_base`` (what both drivers share), ``sync_run`` and ``async_run`` (the two
interpreters of an attempt), ``watchdog`` (the clocks and the abort), ``connection``
(the attempt's socket and its byte counters), ``client_slots`` (leased clients, spares
and the builder thread), ``route_clients`` (one engine's clients of a route, and what
it learned of the server), ``route`` (the adapter interface) and ``engine``
(``StreamEngine``, which composes all of it).

May import: ``_core``, ``_health``, ``_observe``. Never imported by them.
"""
