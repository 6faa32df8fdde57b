"""The circuit breaker of one route, as a transition table: the second machine.

Rules
-----
1. ``closed``: every run may use the route. Attempts that end ``stale`` or ``dropped``
   by a provider fault (not the caller's 400, an interrupt or ``Timeouts.total``) are
   failures; a completed attempt resets the count. Failures count by incident: a
   failure of an attempt admitted before the last counted failure was reported was in
   flight with it, so it is the same incident (a wave of stalls detected together is
   one fault of the provider, not hundreds) and is tallied (``stale``, ``dropped``) but
   not counted again. ``BreakerPolicy.failures_to_open`` consecutive incidents open
   the breaker.
2. ``open``: no run is admitted. The breaker stays open for a cooldown that grows with
   every opening since the last successful probe (``cooldown * cooldown_factor ** n``,
   at most ``max_cooldown``), then becomes ``half_open``. (A refusal is advice: when
   every route of a run refuses it, the run goes ahead on the route that failed least
   recently, panic mode, unless ``fail_fast_when_all_open``; such an attempt is not a
   probe and its report moves nothing, like a straggler's.)
3. ``half_open``: the next admission is the probe and moves the breaker to ``probing``;
   every other admission is refused while the probe is out. So a half-open breaker
   admits exactly one probe at a time.
4. ``probing`` ends only by the probe's own verdict: success closes the breaker (and
   resets the cooldown), failure opens it again with a longer cooldown, and a probe
   that ends without a verdict (interrupted) or never reports (its process died:
   ``probe_timeout``) makes the breaker ``half_open`` again. Reports of other attempts
   (admitted before the breaker opened) are counted but move nothing.

Theory of operation
-------------------
Sans-I/O like the run machine: ``BreakerCore`` never reads a clock. Its time is
wall-clock seconds handed in by the caller (``time.time()``: breakers may be shared by
processes on several machines through a store), and time-driven transitions
(``cool_down``, an expired probe) are taken lazily, by ``advance(at)``, at the next
admission or report; the rules above hold at every instant anyone can observe. One
``transitions.Machine`` serves every breaker; a ``HealthStore`` loads a core, applies
one operation and saves it atomically (a lock in process, WATCH/MULTI on Redis).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal, cast

from transitions import EventData, Machine

from .config import BreakerPolicy

__all__ = [
    "BREAKER_STATES",
    "BREAKER_TRANSITIONS",
    "Admission",
    "BreakerChange",
    "BreakerCore",
    "Verdict",
]

BREAKER_STATES: Final = ("closed", "open", "half_open", "probing")
Verdict = Literal["success", "stale", "dropped", "neutral"]
"""What an attempt tells its route's breaker: ``neutral`` (interrupted, the caller's own
error) releases a probe without judging the route."""


@dataclass(frozen=True, kw_only=True, slots=True)
class BreakerChange:
    """One breaker transition, as hooks see it."""

    route: str
    source: str
    trigger: str
    dest: str
    at: float
    """Wall-clock seconds (``time.time()``)."""
    failures: int
    """Consecutive failures when it changed."""
    reopen_at: float | None
    """When an open breaker lets the next probe through; None unless ``dest`` is open."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Admission:
    """The breaker's answer to "may this attempt use the route?"."""

    kind: Literal["pass", "probe", "refuse"]
    state: str
    """The breaker's state after the admission."""
    reopen_at: float | None = None
    """For a refusal by an open breaker: when the next probe will be allowed."""
    at: float = 0.0
    """The breaker's time of the admission: the attempt's report hands it back, so the
    breaker knows which failures were in flight together (rule 1)."""
    failed_at: float | None = None
    """For a refusal: when the route last failed (panic mode picks the least recent)."""


def consecutive_failures_reached(ev: EventData) -> bool:
    """failures >= failures_to_open."""
    core = cast(BreakerCore, ev.model)
    return core.failures >= core.policy.failures_to_open


def _schedule_reopen(ev: EventData) -> None:
    """reopen after cooldown * factor^openings (capped)."""
    core = cast(BreakerCore, ev.model)
    policy = core.policy
    core.openings += 1
    cooldown = min(
        policy.max_cooldown, policy.cooldown * policy.cooldown_factor ** (core.openings - 1)
    )
    core.reopen_at = ev.kwargs["at"] + cooldown
    core.probe_id = None


def _close(ev: EventData) -> None:
    """reset counts and cooldown."""
    core = cast(BreakerCore, ev.model)
    core.openings = 0
    core.failures = core.stale = core.dropped = 0
    core.reopen_at = None
    core.probe_id = None


def _take_probe(ev: EventData) -> None:
    """hold the one probe slot (until probe_timeout)."""
    core = cast(BreakerCore, ev.model)
    core.probe_id = ev.kwargs["probe_id"]
    core.probe_expires_at = ev.kwargs["at"] + core.policy.probe_timeout


def _free_probe(ev: EventData) -> None:
    """free the probe slot."""
    core = cast(BreakerCore, ev.model)
    core.probe_id = None
    core.probe_expires_at = None


BREAKER_TRANSITIONS: Final[tuple[dict[str, Any], ...]] = (
    {
        "trigger": "trip",
        "source": "closed",
        "dest": "open",
        "conditions": consecutive_failures_reached,
        "after": _schedule_reopen,
    },
    {"trigger": "cool_down", "source": "open", "dest": "half_open"},
    {"trigger": "admit_probe", "source": "half_open", "dest": "probing", "after": _take_probe},
    {"trigger": "probe_succeeded", "source": "probing", "dest": "closed", "after": _close},
    {
        "trigger": "probe_failed",
        "source": "probing",
        "dest": "open",
        "after": _schedule_reopen,
    },
    {"trigger": "release_probe", "source": "probing", "dest": "half_open", "after": _free_probe},
)


def _record_change(ev: EventData) -> None:
    core = cast(BreakerCore, ev.model)
    transition = ev.transition
    assert transition is not None and transition.dest is not None
    core.changes.append(
        BreakerChange(
            route=core.route,
            source=transition.source,
            trigger=ev.event.name,
            dest=transition.dest,
            at=ev.kwargs["at"],
            failures=core.failures,
            reopen_at=core.reopen_at if transition.dest == "open" else None,
        )
    )


BREAKER_MACHINE: Final = Machine(
    model=None,
    states=list(BREAKER_STATES),
    transitions=[dict(row) for row in BREAKER_TRANSITIONS],
    initial="closed",
    auto_transitions=False,
    send_event=True,
    after_state_change=_record_change,
    model_attribute="state",
)

_FIELDS: Final = (
    "state",
    "failures",
    "stale",
    "dropped",
    "openings",
    "reopen_at",
    "probe_id",
    "probe_expires_at",
    "incident_at",
    "failed_at",
)


class BreakerCore:
    """One route's breaker: its state and counts, and the operations a store applies."""

    state: str

    def __init__(self, *, route: str, policy: BreakerPolicy) -> None:
        self.route = route
        self.policy = policy
        self.state = "closed"
        self.failures = 0
        """Consecutive incidents of provider faults (stale or dropped) since the last
        success (rule 1)."""
        self.stale = 0
        self.dropped = 0
        self.openings = 0
        """Openings since the last successful probe: the cooldown grows with them."""
        self.reopen_at: float | None = None
        self.probe_id: str | None = None
        self.probe_expires_at: float | None = None
        self.incident_at: float | None = None
        """When the last counted failure was reported: failures of attempts admitted
        before it belong to its incident."""
        self.failed_at: float | None = None
        """When the last failure (counted or not) was reported."""
        self.changes: list[BreakerChange] = []
        """Transitions taken since the store loaded this core (not persisted)."""

    # -- persistence: plain strings, for a Redis hash or a log line ---------------------
    def to_fields(self) -> dict[str, str]:
        return {name: "" if (v := getattr(self, name)) is None else str(v) for name in _FIELDS}

    @classmethod
    def from_fields(
        cls, fields: dict[str, str], *, route: str, policy: BreakerPolicy
    ) -> BreakerCore:
        core = cls(route=route, policy=policy)
        if not fields:
            return core
        state = fields.get("state", "closed")
        core.state = state if state in BREAKER_STATES else "closed"
        for name in ("failures", "stale", "dropped", "openings"):
            setattr(core, name, int(fields.get(name) or 0))
        for name in ("reopen_at", "probe_expires_at", "incident_at", "failed_at"):
            raw = fields.get(name) or ""
            setattr(core, name, float(raw) if raw else None)
        core.probe_id = fields.get("probe_id") or None
        return core

    # -- operations ---------------------------------------------------------------------
    def advance(self, at: float) -> None:
        """Take the transitions that time alone allows: an open breaker whose cooldown is
        over becomes half-open; a probe that outlived ``probe_timeout`` is released."""
        if self.state == "open" and self.reopen_at is not None and at >= self.reopen_at:
            self._pull("cool_down", at=at)
        if (
            self.state == "probing"
            and self.probe_expires_at is not None
            and at >= self.probe_expires_at
        ):
            self._pull("release_probe", at=at)

    def admit(self, at: float, *, probe_id: str) -> Admission:
        """May an attempt use the route now? ``probe_id`` names the attempt, in case it
        becomes the half-open breaker's one probe."""
        self.advance(at)
        if self.state == "closed":
            return Admission(kind="pass", state=self.state, at=at)
        if self.state == "half_open":
            self._pull("admit_probe", at=at, probe_id=probe_id)
            return Admission(kind="probe", state=self.state, at=at)
        reopen = self.reopen_at if self.state == "open" else self.probe_expires_at
        return Admission(
            kind="refuse", state=self.state, reopen_at=reopen, at=at, failed_at=self.failed_at
        )

    def report(
        self,
        at: float,
        verdict: Verdict,
        *,
        probe_id: str | None,
        admitted_at: float | None = None,
    ) -> None:
        """An admitted attempt ended. Only the probe's verdict moves a probing breaker.
        ``admitted_at`` is its ``Admission.at`` (None: an incident of its own)."""
        self.advance(at)
        if verdict in ("stale", "dropped"):
            in_flight_with_last = (
                admitted_at is not None
                and self.incident_at is not None
                and admitted_at < self.incident_at
            )
            if not in_flight_with_last:
                self.failures += 1
                self.incident_at = at
            self.failed_at = at
            if verdict == "stale":
                self.stale += 1
            else:
                self.dropped += 1
        elif verdict == "success" and self.state == "closed":
            self.failures = self.stale = self.dropped = 0
        is_probe = probe_id is not None and self.state == "probing" and probe_id == self.probe_id
        if is_probe:
            if verdict == "success":
                self._pull("probe_succeeded", at=at)
            elif verdict == "neutral":
                self._pull("release_probe", at=at)
            else:
                self._pull("probe_failed", at=at)
        elif self.state == "closed" and verdict in ("stale", "dropped"):
            self._pull("trip", at=at)

    def _pull(self, trigger: str, **kwargs: Any) -> None:
        BREAKER_MACHINE.events[trigger].trigger(self, **kwargs)
