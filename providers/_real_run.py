"""``lifecycle run``: stream from a real provider with the same lifecycle as the demo."""

from __future__ import annotations

import os
import sys

import anthropic
import openai

from lifecycle import Interrupted, RetryPolicy, Route, StreamEngine, StreamFailed, Timeouts

from .anthropic_messages import AnthropicMessages
from .openai_chat_completions import OpenAIChatCompletions

__all__ = ["run_real"]

KEY_VARIABLE = {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY"}


def run_real(
    *, provider: str, model: str, prompt: str, max_tokens: int, stale: float, first_token: float
) -> int:
    variable = KEY_VARIABLE[provider]
    if not os.environ.get(variable):
        print(f"lifecycle run: {variable} is not set", file=sys.stderr)
        return 2
    route: Route
    if provider == "anthropic":
        route = AnthropicMessages(anthropic.Anthropic, model=model)
    else:
        route = OpenAIChatCompletions(openai.OpenAI, model=model)
    engine = StreamEngine(
        routes=[route],
        timeouts=Timeouts(first_token=first_token, stale=stale, total=max(900.0, first_token)),
        retry=RetryPolicy(max_attempts=3),
        on_transition=lambda t: print(
            f"\n[{t.at:7.3f}s {t.source} -> {t.dest}]", file=sys.stderr, flush=True
        ),
    )
    try:
        with (
            engine,
            engine.stream(
                messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens
            ) as run,
        ):
            for event in run:
                if event.type == "text":
                    print(event.text, end="", flush=True)
                elif event.type == "restart":
                    print("\n[restart: the stream is replayed from a new attempt]\n", flush=True)
    except (StreamFailed, Interrupted) as exc:
        print(f"\nlifecycle run: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    print()
    for attempt in run.attempts:
        d = attempt.diagnostics
        print(
            f"attempt {attempt.number}: {attempt.api_mode}/{attempt.model} {attempt.outcome} "
            f"status={d.http_status} ttft={d.ttft} chunks={d.chunks} bytes={d.bytes}",
            file=sys.stderr,
        )
    return 0
