"""The diagrams are generated from the machine and kept current (``lifecycle diagram``)."""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import lifecycle
import providers
from lifecycle import STATES, TRANSITIONS, RetryPolicy, Timeouts
from lifecycle._core.events import (
    AttemptStarted,
    CleanupFinished,
    FirstEventReceived,
    StallDetected,
    StreamFinished,
)
from lifecycle._core.machine import CLEANUP_STEPS, RouteInfo, RunCore, build_machine
from lifecycle.diagrams import adapter_mermaid, lifecycle_dot, lifecycle_mermaid, run_diagram
from providers import AnthropicMessages, OpenAIChatCompletions
from providers.cli._diagram_files import diagram_command, expected_files

REPO = Path(__file__).resolve().parents[1]
DIAGRAMS = REPO / "diagrams"


def _machine_states_and_triggers() -> tuple[set[str], set[str]]:
    machine = build_machine(None)  # the table as transitions.Machine reads it
    return set(machine.states), set(machine.events)


# -- generation ----------------------------------------------------------------------
def test_regeneration_is_byte_identical() -> None:
    first, second = expected_files(), expected_files()
    assert first == second
    assert set(first) >= {
        "lifecycle.mmd",
        "lifecycle.dot",
        "adapter-anthropic_messages.mmd",
        "adapter-chat_completions.mmd",
    }
    if shutil.which("dot"):
        assert "lifecycle.svg" in first
    for name, content in first.items():
        assert content.endswith("\n")
        if not name.endswith(".svg"):
            assert " at 0x" not in content  # no object reprs


def test_committed_diagrams_are_current(capsys: pytest.CaptureFixture[str]) -> None:
    assert diagram_command(check=True, directory=str(DIAGRAMS)) == 0, capsys.readouterr().out
    assert "diagrams are current" in capsys.readouterr().out


def test_check_names_a_missing_or_edited_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert diagram_command(check=False, directory=str(tmp_path)) == 0
    assert diagram_command(check=True, directory=str(tmp_path)) == 0
    (tmp_path / "lifecycle.dot").write_text("digraph {}\n")
    (tmp_path / "adapter-chat_completions.mmd").unlink()
    capsys.readouterr()
    assert diagram_command(check=True, directory=str(tmp_path)) == 1
    out = capsys.readouterr().out
    assert "lifecycle.dot" in out
    assert "adapter-chat_completions.mmd" in out
    assert "lifecycle.mmd" not in out


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` is not installed")
def test_svg_is_compared_only_against_the_same_graphviz(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert diagram_command(check=False, directory=str(tmp_path)) == 0
    svg = tmp_path / "lifecycle.svg"
    rendered = svg.read_text()
    stale = rendered.replace("<title>lifecycle</title>", "<title>old</title>")
    assert stale != rendered

    svg.write_text(stale)  # same Graphviz, different content: stale
    capsys.readouterr()
    assert diagram_command(check=True, directory=str(tmp_path)) == 1
    assert "lifecycle.svg: differs" in capsys.readouterr().out

    # Another Graphviz lays the same DOT out differently: reported, not failed.
    svg.write_text(re.sub(r"graphviz version [^\n]*?(?=\s*-->)", "graphviz version 0.0", stale))
    assert diagram_command(check=True, directory=str(tmp_path)) == 0
    assert "lifecycle.svg: not compared" in capsys.readouterr().out


def test_every_state_and_trigger_is_in_the_mermaid_diagram() -> None:
    text = lifecycle_mermaid()
    states, triggers = _machine_states_and_triggers()
    assert states == set(STATES)
    assert triggers == {row["trigger"] for row in TRANSITIONS}
    # A state is a node (appears before an arrow, or after one) and every row is an edge.
    for state in states:
        assert re.search(rf"^\s+{state}\s*$|{state} --> |--> {state}\b", text, re.M), state
    edges = re.findall(r"^\s+(\w+) --> (\w+) : (\S+)", text, re.M)
    assert {(s, t, d) for s, d, t in edges} == {
        (row["source"], row["trigger"], row["dest"]) for row in TRANSITIONS
    }
    assert "[*] --> idle" in text
    for final in lifecycle.FINAL_STATES:
        assert f"{final} --> [*]" in text
    assert "begin_cleanup / abort + close(api_mode) + rebuild" in text
    assert "finish_cleanup [decided_retry]" in text
    for step in CLEANUP_STEPS:
        assert step in text


def test_dot_has_every_state_and_trigger() -> None:
    text = lifecycle_dot()
    states, triggers = _machine_states_and_triggers()
    for state in states:
        assert re.search(rf"^\s+{state} \[label=", text, re.M), state
    for trigger in triggers:
        assert f" {trigger} " in text, trigger
    assert text.count("subgraph cluster_") == 4


@pytest.mark.parametrize("route", [AnthropicMessages, OpenAIChatCompletions])
def test_adapter_diagram_shows_its_own_cleanup(route: type[lifecycle.Route]) -> None:
    text = adapter_mermaid(route.api_mode, route.__name__, route.cleanup_description)
    assert text == expected_files()[f"adapter-{route.api_mode}.mmd"]
    for line in route.cleanup_description:
        assert line.replace('"', "#quot;") in text
    assert f"close({route.api_mode})" in text
    assert text.index("1. abort") < text.index("2. close") < text.index("3. rebuild")
    other = OpenAIChatCompletions if route is AnthropicMessages else AnthropicMessages
    assert other.api_mode not in text


# -- drift: editing the table makes `lifecycle diagram --check` fail ------------------------
def test_check_fails_after_a_change_of_the_transition_table(tmp_path: Path) -> None:
    for package in (lifecycle, providers):
        source = Path(package.__file__).parent
        shutil.copytree(
            source, tmp_path / source.name, ignore=shutil.ignore_patterns("__pycache__")
        )
    machine = tmp_path / "lifecycle" / "_core" / "machine.py"
    original = machine.read_text()
    edited = original.replace('"trigger": "expire"', '"trigger": "expire_total"')
    assert edited != original
    machine.write_text(edited)

    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "providers.cli", "diagram", "--check", "--dir", str(DIAGRAMS)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "lifecycle.mmd" in output
    assert "lifecycle.dot" in output
    assert "adapter-" not in output  # the adapters' cleanup did not change


# -- one run ---------------------------------------------------------------------------
def _stale_then_completed_on_retry() -> RunCore:
    core = RunCore(
        routes=[RouteInfo(api_mode="anthropic_messages", model="claude-test", target=object())],
        timeouts=Timeouts(first_token=0.5, stale=0.5),
        retry=RetryPolicy(),
        started_at=100.0,
        rng=random.Random(0),
    )
    core.feed(AttemptStarted(at=100.0, route_index=0))
    core.feed(FirstEventReceived(at=100.012))
    core.feed(StallDetected(at=100.512, clock="stale", deadline=100.5))
    core.feed(CleanupFinished(at=100.515))
    core.feed(AttemptStarted(at=100.7, route_index=0))
    core.feed(FirstEventReceived(at=100.72))
    core.feed(StreamFinished(at=101.0))
    return core


def test_run_diagram_highlights_exactly_the_path_taken() -> None:
    core = _stale_then_completed_on_retry()
    assert core.state == "completed"
    history = core.history
    assert [t.trigger for t in history] == [
        "start_attempt",
        "receive_first_event",
        "stall",
        "begin_cleanup",
        "finish_cleanup",
        "start_attempt",
        "receive_first_event",
        "finish",
    ]
    text = run_diagram(history, core.attempts)
    assert text == run_diagram(history, core.attempts)
    assert text.splitlines()[3] == "flowchart LR"

    # Nodes styled "visited" are exactly the states the run was in.
    by_class = {
        cls: set(states.split(","))
        for states, cls in re.findall(r"^\s+class (\S+) (visited|untaken)$", text, re.M)
    }
    visited = {t.source for t in history} | {t.dest for t in history}
    assert by_class["visited"] == visited
    assert by_class["untaken"] == set(STATES) - visited

    # Links, in the order Mermaid numbers them for linkStyle.
    links = re.findall(r"^\s+(\w+) (==>|-\.->)(?:\|\"([^\"]*)\"\|)? (\w+)$", text, re.M)
    styles: dict[str, set[int]] = {}
    for indices, style in re.findall(r"^\s+linkStyle (\S+) (.*)$", text, re.M):
        kind = "untaken" if "stroke-dasharray" in style else "taken"
        styles[kind] = {int(i) for i in indices.split(",")}
    thick = {i for i, link in enumerate(links) if link[1] == "==>"}
    assert styles["taken"] == thick
    assert styles["untaken"] == set(range(len(links))) - thick
    assert len(links) == len(TRANSITIONS) + 1  # every row, plus the initial arrow

    taken_pairs = {(s, d) for i, (s, _, _, d) in enumerate(links) if i in thick and s != "start_"}
    assert taken_pairs == {(t.source, t.dest) for t in history}

    # Every taken edge carries its step numbers, in order, with the elapsed time.
    numbered: dict[int, str] = {}
    for _, arrow, label, _ in links:
        if arrow == "==>" and label:
            for step in label.split("<br/>"):
                number, rest = step.split(". ", 1)
                numbered[int(number)] = rest
    assert sorted(numbered) == list(range(1, len(history) + 1))
    for number, transition in enumerate(history, start=1):
        assert numbered[number].startswith(f"{transition.trigger} @{transition.at:.3f}s")
    assert numbered[3] == "stall @0.512s"
    assert numbered[4].endswith("/ abort + close(anthropic_messages) + rebuild")
    assert numbered[5] == "finish_cleanup @0.515s [decided_retry]"
    # connecting -> streaming was taken twice: one label, both numbers.
    assert '"2. receive_first_event @0.012s<br/>7. receive_first_event @0.720s"' in text
    assert "anthropic_messages stale" in text
    assert "anthropic_messages completed" in text


def test_run_diagram_of_a_run_that_never_started() -> None:
    text = run_diagram([], [])
    assert "class idle visited" in text
    assert "linkStyle 0 " in text
