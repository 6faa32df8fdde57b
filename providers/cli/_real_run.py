"""``lifecycle run``: stream from a real provider with the same lifecycle as the demo."""

from __future__ import annotations

import os
import sys
from typing import TextIO

import anthropic
import openai

from lifecycle import Interrupted, RetryPolicy, StreamEngine, StreamFailed, Timeouts, Transition
from lifecycle.adapters import Route

from ..anthropic_messages import AnthropicMessages
from ..openai_chat_completions import OpenAIChatCompletions

__all__ = ["run_real"]

KEY_VARIABLE = {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY"}


class _Console:
    """The answer's text on stdout, the lifecycle's notes on stderr, one per line.

    On a terminal both streams share the screen, so a note that arrives in the middle of
    a text line first ends that line, on stdout where it began: neither stream then ever
    holds an empty line, read together or apart.
    """

    def __init__(self, out: TextIO, err: TextIO) -> None:
        self._out = out
        self._err = err
        self._mid_line = False

    def text(self, text: str) -> None:
        if text:
            self._out.write(text)
            self._out.flush()
            self._mid_line = not text.endswith("\n")

    def end_line(self) -> None:
        if self._mid_line:
            self.text("\n")

    def marker(self, line: str) -> None:
        """A line among the text (stdout), such as the replay marker."""
        self.end_line()
        self.text(line + "\n")

    def note(self, line: str) -> None:
        self.end_line()
        print(line, file=self._err, flush=True)

    def transition(self, transition: Transition) -> None:
        self.note(f"[{transition.at:.3f}s] {transition.source} -> {transition.dest}")


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}s"


def run_real(
    *, provider: str, model: str, prompt: str, max_tokens: int, stale: float, first_token: float
) -> int:
    variable = KEY_VARIABLE[provider]
    if not os.environ.get(variable):
        print(f"lifecycle run: {variable} is not set", file=sys.stderr)
        return 2
    console = _Console(sys.stdout, sys.stderr)
    route: Route
    if provider == "anthropic":
        route = AnthropicMessages(anthropic.Anthropic, model=model)
    else:
        route = OpenAIChatCompletions(openai.OpenAI, model=model)
    engine = StreamEngine(
        routes=[route],
        timeouts=Timeouts(first_token=first_token, stale=stale, total=max(900.0, first_token)),
        retry=RetryPolicy(max_attempts=3),
        on_transition=console.transition,
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
                    console.text(event.text)
                elif event.type == "restart":
                    console.marker("[restart: the stream is replayed from a new attempt]")
    except (StreamFailed, Interrupted) as exc:
        console.note(f"lifecycle run: {type(exc).__name__}: {exc}")
        return 1
    except KeyboardInterrupt:
        return 130
    console.end_line()
    for attempt in run.attempts:
        d = attempt.diagnostics
        console.note(
            f"attempt {attempt.number}: {attempt.api_mode}/{attempt.model} {attempt.outcome} "
            f"status={d.http_status} ttft={_seconds(d.ttft)} chunks={d.chunks} bytes={d.bytes}"
        )
    return 0
