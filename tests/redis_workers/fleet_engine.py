"""One process of a fleet of StreamEngines sharing their breakers through one Redis.

Run by ``tests/test_redis_health.py`` (``python tests/redis_workers/fleet_engine.py
URL ANTHROPIC_URL OPENAI_URL DEAD BACKUP SECONDS COOLDOWN``, with ``lifecycle`` and
``providers`` importable): an engine with two routes, model DEAD over the Anthropic SDK
then model BACKUP over the OpenAI SDK (both at the loopback server), whose breakers open
at one failure for COOLDOWN seconds. It prints ``ready``, waits for a line on stdin
(every process starts together), then streams run after run, printing one JSON line per
run: its state, its attempts (route index, probe, outcome, wall-clock start) and the
error of a failed run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import anthropic
import openai

from lifecycle import BreakerPolicy, RetryPolicy, StreamEngine, StreamFailed, Timeouts
from lifecycle.health import RedisHealthStore
from providers import AnthropicMessages, OpenAIChatCompletions


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("url")
    parser.add_argument("anthropic_url")
    parser.add_argument("openai_url")
    parser.add_argument("dead")
    parser.add_argument("backup")
    parser.add_argument("seconds", type=float)
    parser.add_argument("cooldown", type=float)
    args = parser.parse_args(argv)
    anthropic_url: str = args.anthropic_url
    openai_url: str = args.openai_url

    engine = StreamEngine(
        routes=[
            AnthropicMessages(
                lambda: anthropic.Anthropic(base_url=anthropic_url, api_key="k"), model=args.dead
            ),
            OpenAIChatCompletions(
                lambda: openai.OpenAI(base_url=openai_url, api_key="k"), model=args.backup
            ),
        ],
        timeouts=Timeouts(connect=5, first_token=5, stale=5, total=30),
        retry=RetryPolicy(max_attempts=1, initial_backoff=0.0, max_backoff=0.0),
        breaker=BreakerPolicy(
            failures_to_open=1,
            cooldown=args.cooldown,
            cooldown_factor=1.0,
            max_cooldown=args.cooldown,
        ),
        health_store=RedisHealthStore(url=args.url),
    )
    print("ready", flush=True)
    sys.stdin.readline()  # every process starts together
    # Run until the dead route has been skipped and then served this process 3 runs (its
    # breaker opened, a probe closed it), not for a fixed time: on a busy machine the
    # fleet's probes, a cooldown apart, may need longer than planned. ``seconds`` caps it.
    end = time.monotonic() + args.seconds
    skipped, served_after = False, 0
    while time.monotonic() < end and served_after < 3:
        line: dict[str, Any] = {"attempts": [], "state": None}
        run = engine.stream(messages=[{"role": "user", "content": "Hi"}], max_tokens=16)
        try:
            with run:
                for _ in run:
                    pass
        except StreamFailed as exc:
            line["error"] = str(exc)
        line["state"] = run.state
        starts = [t.at for t in run.history if t.trigger == "start_attempt"]
        attempts = [
            [a.route_index, a.probe, a.outcome, run.started_at + at]
            for a, at in zip(run.attempts, starts, strict=False)
        ]
        line["attempts"] = attempts
        print(json.dumps(line), flush=True)
        routes = [attempt[0] for attempt in attempts]
        skipped = skipped or routes == [1]
        if skipped and routes == [0] and run.state == "completed":
            served_after += 1
    engine.close()


if __name__ == "__main__":
    main()
