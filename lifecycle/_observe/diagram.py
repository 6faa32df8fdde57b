"""Diagrams of the lifecycle, generated from the machine's own transition table.

Everything here walks ``machine.STATES`` and ``machine.TRANSITIONS`` (the table the
``transitions.Machine`` is built from), so a diagram cannot drift from the machine:
``lifecycle diagram --check`` regenerates them and compares. The output is plain,
deterministic text: table order, no addresses, no timestamps.

Edge labels read ``trigger (prepare) [guard] / action``:

- ``(prepare)``: a callback run when the trigger fires, before the guard is checked;
- ``[guard]``: the row is taken only if the guard is true; rows of the same trigger and
  source are tried in table order and the first true guard wins;
- ``/ action``: the callback bound to the transition. An action is labelled with the
  first clause of its docstring (so ``plan_cleanup`` reads
  ``abort + close(api_mode) + rebuild``), or with its name if it has none.

This module is provider-neutral: adapters hand ``adapter_mermaid`` their own class
attributes (``api_mode``, ``cleanup_description``); it never imports ``providers``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from .._core.machine import (
    CLEANUP_STEPS,
    FAULTS,
    FINAL_STATES,
    IN_FLIGHT,
    RECOVERY,
    STATES,
    TRANSITIONS,
    build_machine,
)
from .._core.outcomes import IN_FLIGHT_WORD, attempt_text
from .._core.records import AttemptRecord, Transition

__all__ = [
    "adapter_mermaid",
    "breaker_mermaid",
    "lifecycle_dot",
    "lifecycle_mermaid",
    "run_diagram",
    "run_dot",
]


def _initial_state() -> str:
    """The initial state, as the machine itself is configured (``build_machine``)."""
    return str(build_machine(None).initial)


INITIAL_STATE: Final = _initial_state()

# (group id, caption, states, fill, stroke): the visual groups, in drawing order.
_GROUPS: Final[tuple[tuple[str, str, tuple[str, ...], str, str], ...]] = (
    ("in_flight", "in flight", tuple(IN_FLIGHT), "#dbeafe", "#1d4ed8"),
    ("fault", "fault", tuple(FAULTS), "#fee2e2", "#b91c1c"),
    ("recovery", "recovery", tuple(RECOVERY), "#fef3c7", "#b45309"),
    ("final", "final", tuple(FINAL_STATES), "#dcfce7", "#15803d"),
)
_START_FILL: Final = "#f1f5f9"
_START_STROKE: Final = "#475569"
_TEXT: Final = "#111827"

_HEADER: Final = (
    "Generated from lifecycle._core.machine by `lifecycle diagram`: do not edit by hand."
)
_LEGEND: Final = (
    "trigger (prepare) [guard] / action - guards of one trigger are tried in table "
    "order, the first true one wins"
)


# -- the table, as edges ---------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Edge:
    source: str
    trigger: str
    dest: str
    prepare: tuple[str, ...]
    guards: tuple[str, ...]
    actions: tuple[str, ...]

    @property
    def label(self) -> str:
        parts = [self.trigger]
        if self.prepare:
            parts.append("(" + ", ".join(self.prepare) + ")")
        if self.guards:
            parts.append("[" + " and ".join(self.guards) + "]")
        if self.actions:
            parts.append("/ " + " then ".join(self.actions))
        return " ".join(parts)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.source, self.trigger, self.dest)


def _callback_label(callback: object, *, action: bool) -> str:
    if isinstance(callback, str):
        return callback
    name = str(getattr(callback, "__name__", type(callback).__name__))
    doc = getattr(callback, "__doc__", None) if action else None
    if isinstance(doc, str) and doc.strip():
        clause = doc.strip().splitlines()[0].split(",")[0].rstrip(" .")
        if clause:
            return clause
    return name


def _callbacks(value: object, *, action: bool = False, negate: bool = False) -> tuple[str, ...]:
    if value is None:
        return ()
    items: Iterable[object] = value if isinstance(value, list | tuple) else (value,)
    prefix = "not " if negate else ""
    return tuple(prefix + _callback_label(item, action=action) for item in items)


def _sources(value: object) -> tuple[str, ...]:
    if value == "*":
        return tuple(STATES)
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list | tuple):
        return tuple(str(v) for v in value)
    return (str(value),)


def _edges(table: Sequence[dict[str, object]] = TRANSITIONS) -> tuple[_Edge, ...]:
    edges: list[_Edge] = []
    for row in table:
        for source in _sources(row["source"]):
            dest = row.get("dest")
            edges.append(
                _Edge(
                    source=source,
                    trigger=str(row["trigger"]),
                    dest=source if dest in (None, "=") else str(dest),
                    prepare=_callbacks(row.get("prepare")),
                    guards=_callbacks(row.get("conditions"))
                    + _callbacks(row.get("unless"), negate=True),
                    actions=_callbacks(row.get("before"), action=True)
                    + _callbacks(row.get("after"), action=True),
                )
            )
    return tuple(edges)


def _group_of(state: str) -> tuple[str, str, str, str] | None:
    for group_id, caption, states, fill, stroke in _GROUPS:
        if state in states:
            return group_id, caption, fill, stroke
    return None


def _ungrouped() -> tuple[str, ...]:
    grouped = {s for _, _, states, _, _ in _GROUPS for s in states}
    return tuple(s for s in STATES if s not in grouped)


_MERMAID_ESCAPES: Final = str.maketrans(
    {"#": "#35;", '"': "#quot;", ";": "#59;", "<": "#lt;", ">": "#gt;", "\n": " "}
)


def _mermaid_text(text: str) -> str:
    """Text safe inside a quoted Mermaid label, a transition label or a title."""
    return text.translate(_MERMAID_ESCAPES)


def _one_line(text: str) -> str:
    return " ".join(text.split())


# -- the whole lifecycle -------------------------------------------------------------
def lifecycle_mermaid() -> str:
    """A Mermaid ``stateDiagram-v2`` of the whole lifecycle (renders on GitHub).

    Each group is a composite state that only lists its members; every transition is
    declared at the top level (Mermaid moves a state into the last composite whose
    body mentions it, so an edge inside a composite body would regroup its ends).
    """
    lines = [
        "---",
        f'title: "Stream lifecycle - edge labels: {_mermaid_text(_LEGEND)}"',
        "---",
        "stateDiagram-v2",
        f"    %% {_HEADER}",
        "    direction TB",
    ]
    for group_id, _, _, fill, stroke in _GROUPS:
        lines.append(f"    classDef {group_id} fill:{fill},stroke:{stroke},color:{_TEXT}")
    lines.append(f"    classDef initial fill:{_START_FILL},stroke:{_START_STROKE},color:{_TEXT}")
    lines.append("")
    for state in _ungrouped():
        lines.append(f"    {state}")
    for group_id, caption, states, _, _ in _GROUPS:
        lines.append(f'    state "{caption}" as group_{group_id} {{')
        lines.extend(f"        {state}" for state in states)
        lines.append("    }")
    lines.append("")
    lines.append(f"    [*] --> {INITIAL_STATE}")
    for edge in _edges():
        lines.append(f"    {edge.source} --> {edge.dest} : {_mermaid_text(edge.label)}")
    for state in FINAL_STATES:
        lines.append(f"    {state} --> [*]")
    lines.append("")
    for group_id, _, states, _, _ in _GROUPS:
        lines.append(f"    class {','.join(states)} {group_id}")
    if _ungrouped():
        lines.append(f"    class {','.join(_ungrouped())} initial")
    return "\n".join(lines) + "\n"


_BREAKER_FILL: Final = {
    "closed": ("#dcfce7", "#15803d"),
    "open": ("#fee2e2", "#b91c1c"),
    "half_open": ("#fef3c7", "#b45309"),
    "probing": ("#dbeafe", "#1d4ed8"),
}


def breaker_mermaid() -> str:
    """A Mermaid ``stateDiagram-v2`` of one route's circuit breaker (``_breaker``)."""
    from .._core.breaker import BREAKER_STATES, BREAKER_TRANSITIONS

    lines = [
        "---",
        f'title: "Route circuit breaker - edge labels: {_mermaid_text(_LEGEND)}"',
        "---",
        "stateDiagram-v2",
        f"    %% {_HEADER.replace('.machine', '.breaker')}",
        "    %% cool_down and an expired probe's release_probe are taken lazily: at the",
        "    %% first admission or report after the time has come.",
        "    direction LR",
    ]
    for state in BREAKER_STATES:
        fill, stroke = _BREAKER_FILL[state]
        lines.append(f"    classDef {state}_style fill:{fill},stroke:{stroke},color:{_TEXT}")
    lines.append("")
    lines.append(f"    [*] --> {BREAKER_STATES[0]}")
    for edge in _edges(BREAKER_TRANSITIONS):
        lines.append(f"    {edge.source} --> {edge.dest} : {_mermaid_text(edge.label)}")
    lines.append("")
    for state in BREAKER_STATES:
        lines.append(f"    class {state} {state}_style")
    return "\n".join(lines) + "\n"


def _dot_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def lifecycle_dot() -> str:
    """The same lifecycle as Graphviz DOT: one cluster per group, labelled edges."""
    font = _dot_quote("Helvetica")
    legend_lines = (
        "Stream lifecycle, generated from lifecycle._core.machine",
        "edge labels: " + _LEGEND,
    )
    legend = "".join(_dot_quote(line)[1:-1] + "\\l" for line in legend_lines)  # \l: flush left
    lines = [
        "// " + _HEADER,
        "digraph lifecycle {",
        f"    graph [rankdir=TB, fontname={font}, fontsize=13, labelloc=b, labeljust=l,",
        "           nodesep=0.7, ranksep=0.9, pad=0.3, newrank=true, splines=true,",
        f'           label="{legend}"];',
        f'    node [shape=box, style="rounded,filled", fontname={font}, fontsize=12,',
        f'          margin="0.18,0.08", color={_dot_quote(_START_STROKE)},'
        f" fillcolor={_dot_quote(_START_FILL)}];",
        f'    edge [fontname={font}, fontsize=10, color="#475569", fontcolor="#1f2937",'
        " arrowsize=0.7];",
        "",
        '    __start__ [shape=circle, style=filled, fillcolor="#111827", label="",'
        " width=0.18, fixedsize=true];",
    ]
    for state in _ungrouped():
        lines.append(f"    {state} [label={_dot_quote(state)}];")
    for group_id, caption, states, fill, stroke in _GROUPS:
        lines.append("")
        lines.append(f"    subgraph cluster_{group_id} {{")
        lines.append(
            f'        label={_dot_quote(caption)}; labelloc=t; margin=4; style="rounded,dashed";'
            f" color={_dot_quote(stroke)}; fontcolor={_dot_quote(stroke)};"
        )
        for state in states:
            extra = ", peripheries=2" if state in FINAL_STATES else ""
            lines.append(
                f"        {state} [label={_dot_quote(state)}, fillcolor={_dot_quote(fill)},"
                f" color={_dot_quote(stroke)}{extra}];"
            )
        if set(states) <= set(FINAL_STATES):
            lines.append(f"        {{rank=same; {'; '.join(states)};}}")
        lines.append("    }")
    lines.append("")
    lines.append(f"    __start__ -> {INITIAL_STATE};")
    for edge in _edges():
        source_group, dest_group = _group_of(edge.source), _group_of(edge.dest)
        # Edges inside one group pull their ends together, which keeps the group compact
        # and the edges leaving it (and their labels) clear of the cluster's border.
        weight = "weight=4, " if source_group and source_group == dest_group else ""
        lines.append(
            f"    {edge.source} -> {edge.dest} [{weight}label={_dot_quote(_dot_label(edge))}];"
        )
    lines.append("}")
    return "\n".join(lines) + "\n"


def _dot_label(edge: _Edge, width: int = 26) -> str:
    """The edge label on short lines (long actions wrap at ``+``), padded with a space."""
    parts = [edge.trigger]
    if edge.prepare:
        parts.append("(" + ", ".join(edge.prepare) + ")")
    if edge.guards:
        parts.append("[" + " and ".join(edge.guards) + "]")
    if edge.actions:
        parts.append("/ " + " then ".join(edge.actions))
    lines: list[str] = []
    for part in parts:
        line = ""
        for piece in part.split(" + "):
            if line and len(line) + 3 + len(piece) > width:
                lines.append(line)
                line = "+ " + piece
            else:
                line = f"{line} + {piece}" if line else piece
        lines.append(line)
    return "\n".join(f" {line} " for line in lines)


# -- one adapter's cleanup -----------------------------------------------------------
def adapter_mermaid(api_mode: str, route_name: str, cleanup_description: tuple[str, ...]) -> str:
    """What the cleanup of one adapter does: fault state -> cleanup steps -> next state.

    ``cleanup_description`` is the adapter's own ``Route.cleanup_description``: one
    human line per step of ``CLEANUP_STEPS`` (abort, close, rebuild), in order.
    """
    edges = _edges()
    into_cleanup = [e for e in edges if e.dest == "cleanup"]
    out_of_cleanup = [e for e in edges if e.source == "cleanup"]
    action = into_cleanup[0].label.split("/ ", 1)[-1] if into_cleanup else ""
    action = action.replace("(api_mode)", f"({api_mode})")
    faults = " / ".join(dict.fromkeys(e.source for e in into_cleanup))
    nexts = " / ".join(dict.fromkeys(e.dest for e in out_of_cleanup))
    lines = [
        "flowchart LR",
        f"    %% {_HEADER}",
        f"    %% Cleanup of {_one_line(route_name)} (api_mode {_one_line(api_mode)}),"
        " from its cleanup_description.",
        f"    classDef fault fill:{_GROUPS[1][3]},stroke:{_GROUPS[1][4]},color:{_TEXT}",
        f"    classDef step fill:{_GROUPS[2][3]},stroke:{_GROUPS[2][4]},color:{_TEXT}",
        f"    classDef next fill:{_START_FILL},stroke:{_START_STROKE},color:{_TEXT}",
        "",
        f'    fault(["{_mermaid_text(faults)}"]):::fault',
        f'    subgraph cleanup["cleanup of {_mermaid_text(_one_line(route_name))}'
        f' ({_mermaid_text(_one_line(api_mode))})"]',
        "        direction LR",
    ]
    steps = list(itertools.zip_longest(CLEANUP_STEPS, cleanup_description, fillvalue=""))
    for number, (step, description) in enumerate(steps, start=1):
        title = f"{number}. {step}" if step else f"{number}."
        if step == "close":
            title += f"({api_mode})"
        body = f"<b>{_mermaid_text(_one_line(title))}</b>"
        if description:
            body += "<br/>" + _mermaid_text(_one_line(description))
        lines.append(f'        step{number}["{body}"]:::step')
    for number in range(1, len(steps)):
        lines.append(f"        step{number} --> step{number + 1}")
    lines.append("    end")
    lines.append(f'    next(["{_mermaid_text(nexts)}"]):::next')
    begin = into_cleanup[0].trigger if into_cleanup else ""
    finish = out_of_cleanup[0].trigger if out_of_cleanup else ""
    lines.append(f'    fault -->|"{_mermaid_text(begin + " / " + action)}"| step1')
    lines.append(f'    step{len(steps)} -->|"{_mermaid_text(finish)}"| next')
    return "\n".join(lines) + "\n"


# -- one run -------------------------------------------------------------------------
_VISITED_STYLE: Final = f"fill:#fde68a,stroke:#b45309,stroke-width:3px,color:{_TEXT}"
_UNTAKEN_STYLE: Final = "fill:#f3f4f6,stroke:#d1d5db,color:#9ca3af"
_TAKEN_LINK: Final = "stroke:#b45309,stroke-width:3px,color:#b45309"
_UNTAKEN_LINK: Final = "stroke:#cbd5e1,stroke-width:1px,stroke-dasharray:4 4,color:#9ca3af"


def _attempt_of(history: Sequence[Transition]) -> list[int]:
    """The 1-based attempt number each transition belongs to (0: before the first)."""
    numbers: list[int] = []
    current = 0
    for transition in history:
        if transition.trigger == "start_attempt":
            current += 1
        numbers.append(current)
    return numbers


def _run_title(attempts: Sequence[AttemptRecord]) -> str:
    if not attempts:
        return "run: no attempt"
    return "run: " + ", ".join(attempt_text(a) for a in attempts)


def run_diagram(history: Sequence[Transition], attempts: Sequence[AttemptRecord]) -> str:
    """Mermaid flowchart of the whole lifecycle with the path of one run highlighted.

    Visited states are class ``visited``, the others ``untaken`` (grey). Taken edges
    are thick and labelled with their step numbers and times (``3. stall @0.512s``; an
    edge taken twice carries both), untaken edges thin and dashed. ``linkStyle`` lines
    come after the edges, one for the taken indices, one for the untaken.
    """
    edges = list(_edges())
    known = {e.key for e in edges}
    for transition in history:  # a transition the table lacks is still drawn as taken
        key = (transition.source, transition.trigger, transition.dest)
        if key not in known:
            known.add(key)
            edges.append(_Edge(*key, prepare=(), guards=(), actions=()))
    by_edge = {e.key: e for e in edges}
    by_attempt = {a.number: a for a in attempts}
    steps: dict[tuple[str, str, str], list[str]] = {}
    for number, (transition, attempt_no) in enumerate(
        zip(history, _attempt_of(history), strict=True), start=1
    ):
        key = (transition.source, transition.trigger, transition.dest)
        edge = by_edge[key]
        step = f"{number}. {transition.trigger} @{transition.at:.3f}s"
        if edge.guards:
            step += " [" + " and ".join(edge.guards) + "]"
        attempt = by_attempt.get(attempt_no)
        if edge.actions:
            action = " then ".join(edge.actions)
            if attempt is not None:  # the route this cleanup was aimed at
                action = action.replace("(api_mode)", f"({attempt.api_mode})")
            step += " / " + action
        steps.setdefault(key, []).append(step)
    visited = {INITIAL_STATE}
    for transition in history:
        visited.update((transition.source, transition.dest))

    lines = [
        "---",
        f'title: "{_mermaid_text(_one_line(_run_title(attempts)))}"',
        "---",
        "flowchart LR",
        f"    %% {_HEADER}",
    ]
    for attempt in attempts:
        lines.append(
            f"    %% attempt {attempt.number}: route {attempt.route_index}"
            f" {_one_line(attempt.api_mode)} {_one_line(attempt.model)}"
            f" -> {attempt.outcome or IN_FLIGHT_WORD}"
        )
    lines.append(f"    classDef visited {_VISITED_STYLE}")
    lines.append(f"    classDef untaken {_UNTAKEN_STYLE}")
    lines.append("")
    lines.append('    start_((" "))')
    for state in _ungrouped():
        lines.append(f"    {_flow_node(state)}")
    for group_id, caption, states, _, _ in _GROUPS:
        lines.append(f'    subgraph group_{group_id}["{caption}"]')
        for state in states:
            lines.append(f"        {_flow_node(state)}")
        lines.append("    end")
    extra_states = sorted({s for e in edges for s in (e.source, e.dest)} - set(STATES) - {"start_"})
    for state in extra_states:
        lines.append(f"    {_flow_node(state)}")
    lines.append("")

    taken: list[int] = [0]
    untaken: list[int] = []
    lines.append(f"    start_ ==> {INITIAL_STATE}")
    for index, edge in enumerate(edges, start=1):
        numbered = steps.get(edge.key)
        if numbered:
            taken.append(index)
            text = "<br/>".join(_mermaid_text(step) for step in numbered)
            lines.append(f'    {edge.source} ==>|"{text}"| {edge.dest}')
        else:
            untaken.append(index)
            lines.append(f'    {edge.source} -.->|"{_mermaid_text(edge.label)}"| {edge.dest}')
    lines.append("")
    all_states = [*STATES, *extra_states]
    visited_list = [s for s in all_states if s in visited]
    untaken_states = [s for s in all_states if s not in visited]
    if visited_list:
        lines.append(f"    class {','.join(visited_list)} visited")
    if untaken_states:
        lines.append(f"    class {','.join(untaken_states)} untaken")
    lines.append(f"    linkStyle {','.join(map(str, taken))} {_TAKEN_LINK}")
    if untaken:
        lines.append(f"    linkStyle {','.join(map(str, untaken))} {_UNTAKEN_LINK}")
    return "\n".join(lines) + "\n"


def _flow_node(state: str) -> str:
    if state in FINAL_STATES:
        return f'{state}((("{state}")))'
    return f'{state}(["{state}"])'


def run_dot(history: Sequence[Transition], attempts: Sequence[AttemptRecord]) -> str:
    """Graphviz DOT of the lifecycle with one run's path highlighted (for an SVG per run):
    visited states filled, taken edges bold and numbered in order with elapsed time,
    the rest grey."""
    visited = {INITIAL_STATE}
    taken: dict[tuple[str, str, str], list[str]] = {}
    for number, transition in enumerate(history, start=1):
        visited.update((transition.source, transition.dest))
        key = (transition.source, transition.trigger, transition.dest)
        taken.setdefault(key, []).append(f"{number}. {transition.trigger} @{transition.at:.3f}s")
    title = _one_line(_run_title(attempts))
    lines = [
        "digraph run {",
        f"    label={_dot_quote(title)}; labelloc=t; rankdir=TB; nodesep=0.5; ranksep=0.55;",
        '    node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=11];',
        '    edge [fontname="Helvetica", fontsize=9];',
    ]
    for state in STATES:
        final = state in FINAL_STATES
        if state in visited:
            fill, font = "#cfe8ff", "black"
        else:
            fill, font = "#f2f2f2", "#9a9a9a"
        peripheries = 2 if final else 1
        lines.append(
            f"    {state} [fillcolor={_dot_quote(fill)}, fontcolor={_dot_quote(font)}, "
            f"peripheries={peripheries}];"
        )
    seen: set[tuple[str, str, str]] = set()
    for edge in _edges():
        if edge.key in seen:
            continue
        seen.add(edge.key)
        source, trigger, dest = edge.key
        if edge.key in taken:
            # One line per time the edge was taken; \n is DOT's own line break.
            label = '"' + "\\n".join(_dot_quote(step)[1:-1] for step in taken[edge.key]) + '"'
            lines.append(
                f"    {source} -> {dest} [label={label}, penwidth=2.4, "
                'color="#1f6fd1", fontcolor="#1f6fd1"];'
            )
        else:
            lines.append(
                f"    {source} -> {dest} [label={_dot_quote(trigger)}, style=dashed, "
                'color="#c8c8c8", fontcolor="#b0b0b0"];'
            )
    lines.append("}")
    return "\n".join(lines) + "\n"
