"""A fault script as text: what ``lifecycle serve --script`` and ``POST /_loopback/script`` take.

Grammar (whitespace around steps is ignored)::

    script := step ("," step)*
    step   := [COUNT "*"] NAME [":" VALUE] (":" FIELD "=" VALUE)*

``COUNT*`` repeats the step. ``VALUE`` is the fault's main parameter; ``FIELD=VALUE``
sets any other parameter by its field name.

=======================  ==========================  ===============================
step                     fault                       other fields
=======================  ==========================  ===============================
``healthy``              ``Healthy()``               ``drip``, ``head_delay``, ``recording``
``stall_before_headers`` ``StallBeforeHeaders()``
``stall_after_headers``  ``StallAfterHeaders()``
``stall_after[:N]``      ``StallAfterEvents(n=N)``   ``recording`` (N defaults to 1)
``pings[:SECONDS]``      ``PingsOnly(interval=S)``   ``after_events``, ``recording``
``drop_after[:N]``       ``DropAfterEvents(n=N)``    ``recording``
``http[:STATUS]``        ``HttpError(status=S)``     (STATUS defaults to 529)
``malformed[:N]``        ``MalformedEvent(after_events=N)``  ``recording``
``truncate_after[:N]``   ``TruncateAfterBlocks(n=N)``  ``recording``, ``end`` (complete/cut)
``compressed_line[:B]``  ``CompressedLine(size=B)``  ``encoding``, ``after_events``, ``recording``
=======================  ==========================  ===============================

Example: ``2*http:529,stall_after:1,healthy``. A script that runs out means ``healthy``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from . import _recordings
from ._faults import (
    CompressedLine,
    DropAfterEvents,
    Healthy,
    HttpError,
    MalformedEvent,
    PingsOnly,
    ServerFault,
    StallAfterEvents,
    StallAfterHeaders,
    StallBeforeHeaders,
    TruncateAfterBlocks,
)

__all__ = ["ScriptError", "format_fault", "format_script", "parse_script"]

_MAX_REPEAT = 100_000


class ScriptError(ValueError):
    """A script that does not parse, naming the step at fault and why."""


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class _Step:
    fault_class: type
    positional: str | None
    """The field the step's VALUE sets, if it takes one."""


_STEPS: dict[str, _Step] = {
    "healthy": _Step(fault_class=Healthy, positional=None),
    "stall_before_headers": _Step(fault_class=StallBeforeHeaders, positional=None),
    "stall_after_headers": _Step(fault_class=StallAfterHeaders, positional=None),
    "stall_after": _Step(fault_class=StallAfterEvents, positional="n"),
    "pings": _Step(fault_class=PingsOnly, positional="interval"),
    "drop_after": _Step(fault_class=DropAfterEvents, positional="n"),
    "http": _Step(fault_class=HttpError, positional="status"),
    "malformed": _Step(fault_class=MalformedEvent, positional="after_events"),
    "truncate_after": _Step(fault_class=TruncateAfterBlocks, positional="n"),
    "compressed_line": _Step(fault_class=CompressedLine, positional="size"),
}
_NAMES = {step.fault_class: name for name, step in _STEPS.items()}

_FIELD_TYPES: dict[str, tuple[Callable[[str], Any], str]] = {
    "n": (int, "an integer"),
    "after_events": (int, "an integer"),
    "status": (int, "an integer"),
    "interval": (float, "a number of seconds"),
    "drip": (float, "a number of seconds"),
    "head_delay": (float, "a number of seconds"),
    "recording": (str, "a recording name"),
    "end": (str, "'complete' or 'cut'"),
    "size": (int, "a number of bytes"),
    "encoding": (str, "'gzip' or 'deflate'"),
}
"""The fields a step can set; ``HttpError.body`` and ``headers`` need the Python API."""


def _fields(fault_class: type) -> list[str]:
    return [f.name for f in dataclasses.fields(fault_class) if f.name in _FIELD_TYPES]


def _convert(step: str, field: str, text: str) -> Any:
    convert, expected = _FIELD_TYPES[field]
    try:
        return convert(text)
    except ValueError:
        raise ScriptError(f"{step!r}: {field} must be {expected}, got {text!r}") from None


def _parse_step(step: str) -> list[ServerFault]:
    text = step.strip()
    if not text:
        raise ScriptError("empty step (two commas in a row, or a trailing comma)")
    count = 1
    head, star, rest = text.partition("*")
    if star:
        try:
            count = int(head)
        except ValueError:
            raise ScriptError(f"{step!r}: repeat count must be an integer, got {head!r}") from None
        if not 1 <= count <= _MAX_REPEAT:
            raise ScriptError(f"{step!r}: repeat count must be 1..{_MAX_REPEAT}, got {count}")
        text = rest.strip()
    name, *args = (part.strip() for part in text.split(":"))
    spec = _STEPS.get(name)
    if spec is None:
        raise ScriptError(f"{step!r}: unknown fault {name!r}; known: {', '.join(_STEPS)}")
    allowed = _fields(spec.fault_class)
    kwargs: dict[str, Any] = {}
    positional = [arg for arg in args if "=" not in arg]
    if positional:
        if spec.positional is None:
            raise ScriptError(f"{step!r}: {name} takes no positional value")
        if len(positional) > 1:
            raise ScriptError(f"{step!r}: at most one positional value ({spec.positional})")
        kwargs[spec.positional] = _convert(step, spec.positional, positional[0])
    for arg in args:
        field, sep, value = arg.partition("=")
        if not sep:
            continue
        field = field.strip()
        if field not in allowed:
            known = ", ".join(allowed) or "none"
            raise ScriptError(f"{step!r}: {name} has no parameter {field!r}; it has: {known}")
        kwargs[field] = _convert(step, field, value.strip())
    recording = kwargs.get("recording")
    if recording is not None:
        known_recordings = {n for p in _recordings.PROVIDERS for n in _recordings.available(p)}
        if recording not in known_recordings:
            raise ScriptError(
                f"{step!r}: no such recording {recording!r}; "
                f"known: {', '.join(sorted(known_recordings))}"
            )
    try:
        fault: ServerFault = spec.fault_class(**kwargs)
    except ValueError as exc:
        raise ScriptError(f"{step!r}: {exc}") from None
    return [fault] * count


def parse_script(script: str | Sequence[str]) -> tuple[ServerFault, ...]:
    """The faults a script names, in order: a comma-separated string, or a list of steps
    (each of which may itself hold commas). Raises ``ScriptError`` naming the bad step."""
    if isinstance(script, str):
        if not script.strip():
            raise ScriptError("empty script: name at least one step, e.g. 'healthy'")
        steps: list[str] = script.split(",")
    else:
        steps = []
        for item in script:
            if not isinstance(item, str):
                raise ScriptError(f"each step must be a string, got {item!r}")
            steps.extend(item.split(","))
        if not steps:
            raise ScriptError("empty script: name at least one step, e.g. 'healthy'")
    return tuple(fault for step in steps for fault in _parse_step(step))


def format_fault(fault: ServerFault) -> str:
    """The step that parses back to ``fault``; its ``repr`` where the grammar cannot say
    it (a ``RawResponse``, an ``HttpError`` with a body or headers)."""
    name = _NAMES.get(type(fault))
    if name is None or (isinstance(fault, HttpError) and (fault.body or fault.headers)):
        return repr(fault)
    spec = _STEPS[name]
    defaults = type(fault)()
    parts = [name]
    if spec.positional is not None:  # always shown: "http:529" reads better than "http"
        parts.append(str(getattr(fault, spec.positional)))
    for field in _fields(type(fault)):
        if field != spec.positional and getattr(fault, field) != getattr(defaults, field):
            parts.append(f"{field}={getattr(fault, field)}")
    return ":".join(parts)


def format_script(faults: Sequence[ServerFault]) -> str:
    return ",".join(format_fault(fault) for fault in faults)
