"""The sans-I/O core: what a run and a route's breaker decide, as data and pure code.

The run machine and its transition table (``machine``), the breaker (``breaker``), the
retry policy (``policy``), the frozen past-tense events (``events``), the records
(``records``), the errors and the faults the engine classifies itself (``errors``), the
answer being built (``message``), the configuration (``config``), the outcome words
(``outcomes``), and redaction (``redaction``, ``secrets``).

No socket, no thread, no clock is touched here (callers pass the time in); ``fork``
only re-creates locks in a forked child. May import: the standard library and
``transitions``. Imported by every other layer.
"""
