"""Test-only fault injection: mutations that re-create known lifecycle bugs, so the
verification suite can prove it would catch them. Never part of the public API.

Each switch is a module attribute that tests set (with ``mutation(...)``) and the engine
reads at the one place the bug would live:

- ``misdirect_cleanup``: the cleanup plan is aimed at the route *after* the active one,
  exactly like the bug that started this project (an Anthropic stall "cleaned up" by
  rebuilding the OpenAI client). Read in ``_machine.RunCore.plan_cleanup``.
- ``leak_connection``: cleanup skips the abort and the stream close, so the faulty
  attempt's connection stays open. Read in ``_run_base`` / the drivers' ``_clean_up``.
- ``close_on_watchdog``: when a clock runs out, the watchdog (or loop timer) also closes
  the attempt's client from its own thread, the hazard the design forbids. Read where
  the drivers arm the watch.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["mutation"]

misdirect_cleanup = False
leak_connection = False
close_on_watchdog = False
leaked: list[object] = []
"""Streams that ``leak_connection`` kept alive (so that garbage collection cannot close them)."""

_SWITCHES = ("misdirect_cleanup", "leak_connection", "close_on_watchdog")


@contextmanager
def mutation(name: str) -> Iterator[None]:
    """Turn one switch on for the duration of a ``with`` block."""
    if name not in _SWITCHES:
        raise ValueError(f"unknown mutation {name!r}; one of {_SWITCHES}")
    globals()[name] = True
    try:
        yield
    finally:
        globals()[name] = False
