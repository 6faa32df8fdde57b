"""One member of a fleet of processes racing for a breaker's probe through one Redis.

Run by ``tests/test_redis_health.py`` (``python tests/redis_workers/admission_loop.py
URL ROUTE DURATION HOLD PROBE_TIMEOUT``, with ``lifecycle`` importable): it builds its own
RouteHealth over a RedisHealthStore, prints ``ready``, waits for a line on stdin (every
process starts together), then admits on ROUTE in a tight loop for DURATION seconds.
An admitted probe is held HOLD seconds and reported stale, which opens the breaker
again. Its last line on stdout is JSON: its admissions, its breaker transitions, and
the warnings ``lifecycle`` logged (a warning means it lost Redis and judged alone).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from lifecycle import BreakerChange, BreakerPolicy
from lifecycle.health import RedisHealthStore, RouteHealth


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("url")
    parser.add_argument("route")
    parser.add_argument("duration", type=float)
    parser.add_argument("hold", type=float)
    parser.add_argument("probe_timeout", type=float)
    args = parser.parse_args(argv)
    route: str = args.route

    warnings = Collect()
    logging.getLogger("lifecycle").addHandler(warnings)
    changes: list[BreakerChange] = []
    policy = BreakerPolicy(
        failures_to_open=1,
        cooldown=0.2,
        cooldown_factor=1.0,
        max_cooldown=0.2,
        probe_timeout=args.probe_timeout,
    )
    # A generous timeout: a loaded machine must not push this process onto its local
    # breakers (it would then judge alone, and the test would prove nothing).
    store = RedisHealthStore(url=args.url, socket_timeout=10.0)
    health = RouteHealth(policy=policy, store=store, on_change=changes.append)
    health.status((route,))  # connect now, not inside the race
    print("ready", flush=True)
    sys.stdin.readline()

    admissions: list[tuple[float, str]] = []
    end = time.time() + args.duration
    while time.time() < end:
        probe_id = health.new_probe_id()
        admission = health.admit(route, probe_id)
        admissions.append((time.time(), admission.kind))
        if admission.kind == "probe":
            time.sleep(args.hold)  # the probe's stream, which goes stale
            health.report(route, "stale", probe_id)
        else:
            time.sleep(0.001)
    print(
        json.dumps(
            {
                "admissions": admissions,
                "changes": [[c.at, c.source, c.trigger, c.dest] for c in changes],
                "warnings": warnings.messages,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
