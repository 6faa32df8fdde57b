"""What the caller asks for, provider-neutral: each route translates it to its own API.

Pure data, built once per run by the engine (``StreamEngine.stream``/``astream``) and
read by the adapters (``Route.open``) and the hooks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

__all__ = ["Request", "SupportsToDict"]


@runtime_checkable
class SupportsToDict(Protocol):
    """A history entry given as an object (``lifecycle.Message``): its ``to_dict()`` is
    the neutral message dict."""

    def to_dict(self) -> dict[str, Any]: ...


@dataclass(frozen=True, kw_only=True, slots=True)
class Request:
    """A provider-neutral request; each route translates it to its own wire API."""

    messages: Sequence[Mapping[str, Any] | SupportsToDict]
    """The neutral history (README, "Conversation history")."""
    max_tokens: int
    system: str | None = None
    tools: Sequence[Mapping[str, Any]] = ()
    """Each: {"name", "description", "input_schema"} (JSON schema of the arguments)."""
    options: Mapping[str, Any] = field(default_factory=dict)
    """Other keyword arguments: the neutral ones each route translates, the rest passed
    through to the SDK call unchanged."""
    provider_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """api_mode -> keyword arguments for the routes of that api_mode only."""
