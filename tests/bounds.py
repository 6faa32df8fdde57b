"""Latency allowances of the suite, in one place: generous on purpose.

The suite runs on shared, busy machines (two cores, another CPU-heavy process beside it):
a thread can wait tens of milliseconds for the GIL or a core, and building a client costs
~60 ms of TLS set-up. So these bounds do not measure the engine's speed (the benchmarks
under ``tests/benchmarks/`` print the real figures: recovery and detection in
milliseconds); they tell *prompt* from *hung*. Each stays well below the clock it guards
(the stall clocks of the tests are 0.5 s or more, the read timeouts they replace are
minutes), so a real hang, a missed wake-up or a wait for the next clock still fails.
"""

from __future__ import annotations

from typing import Final

PROMPT: Final = 0.25
"""Seconds within which something the engine does at once must be seen done: a socket
shutdown waking a reader, ``Interrupted`` raised after ``interrupt()``, the server seeing
a connection closed, the next attempt starting after a stall (its client build aside)."""
