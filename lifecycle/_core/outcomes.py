"""The words for how an attempt ended, in one place.

An attempt's outcome (``AttemptRecord.outcome``, ``Fault.outcome``) is the one word every
surface uses for its ending: the demo's transition log and table, the library's log,
``lifecycle report``, the per-run diagram's title, the telemetry. The machine's states
are a coarser partition, kept as they are because they are the public history: both a
lost connection (``dropped``) and an answer with an error status (``error``, a 529 say)
pass through the state ``dropped`` by the trigger ``drop``. So a state is never used to
name an ending; where a transition into a fault state is shown, the attempt's outcome
is shown with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Final

from .records import Outcome

if TYPE_CHECKING:
    from .records import AttemptRecord, Transition

__all__ = ["IN_FLIGHT_WORD", "OUTCOMES", "OutcomeTerm", "attempt_text", "ending_of"]


@dataclass(frozen=True, kw_only=True, slots=True)
class OutcomeTerm:
    word: Outcome
    """What the attempt record says, and what every surface shows."""
    state: str
    """The machine state an attempt that ends so passes through."""
    trigger: str
    """The trigger that takes it there."""
    meaning: str


OUTCOMES: Final[Mapping[Outcome, OutcomeTerm]] = MappingProxyType(
    {
        "completed": OutcomeTerm(
            word="completed",
            state="completed",
            trigger="finish",
            meaning="the stream ended with a complete answer",
        ),
        "stale": OutcomeTerm(
            word="stale",
            state="stale",
            trigger="stall",
            meaning="no meaningful event before a clock of the provider ran out "
            "(first_token, stale)",
        ),
        "dropped": OutcomeTerm(
            word="dropped",
            state="dropped",
            trigger="drop",
            meaning="the connection was lost, the stream was malformed or truncated, "
            "or the client could not be built",
        ),
        "error": OutcomeTerm(
            word="error",
            state="dropped",
            trigger="drop",
            meaning="the provider answered with an error status (a 529, say) or an error event",
        ),
        "interrupted": OutcomeTerm(
            word="interrupted",
            state="interrupted",
            trigger="interrupt",
            meaning="the caller asked the run to stop",
        ),
        # The caller's budget, not the provider's pace: events may still have been
        # arriving. It passes through the state ``stale`` by ``stall`` (the watchdog's
        # clock fired), and judges no route.
        "deadline": OutcomeTerm(
            word="deadline",
            state="stale",
            trigger="stall",
            meaning="Timeouts.total, the run's whole budget, ran out before the answer ended",
        ),
    }
)

IN_FLIGHT_WORD: Final = "in flight"
"""What an attempt that has not ended is called."""

_ENDING_TRIGGERS: Final = frozenset(term.trigger for term in OUTCOMES.values())


def attempt_text(attempt: AttemptRecord) -> str:
    """``attempt 2 anthropic_messages error``: how every surface names one attempt."""
    word = OUTCOMES[attempt.outcome].word if attempt.outcome is not None else IN_FLIGHT_WORD
    return f"attempt {attempt.number} {attempt.api_mode} {word}"


def ending_of(transition: Transition, attempt: AttemptRecord | None) -> str | None:
    """``attempt_text(attempt)`` if ``transition`` is the one that ended ``attempt`` (the
    run's attempt in flight when it was taken), else None."""
    if attempt is None or attempt.outcome is None or transition.trigger not in _ENDING_TRIGGERS:
        return None
    if transition.dest != OUTCOMES[attempt.outcome].state:
        return None
    return attempt_text(attempt)
