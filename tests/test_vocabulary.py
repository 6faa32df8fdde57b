"""One word for one thing (issue 14, item 8): an attempt's ending is named by its outcome
(``AttemptRecord.outcome``) in the demo's transition log and table, the library's log,
``lifecycle report`` and the per-run diagram's title, never by the machine state it
passed through (a 529 passes through ``dropped`` but its outcome is ``error``).

The scenarios run through the real engine, the real SDKs and the loopback server: a 529
twice then a fallback, a stall, and an interrupt."""

from __future__ import annotations

import io
import json
import logging
import re
from collections import Counter
from pathlib import Path
from typing import get_args

import pytest

from lifecycle import STATES, TRANSITIONS, AttemptRecord, Outcome
from lifecycle.record import TransitionRecorder, print_summary, summarize
from providers.cli import _demo, _scenarios
from providers.loopback import LoopbackServer

SCENARIOS = {s.name: s for s in _scenarios.SCENARIOS}


def attempt_text(attempt: AttemptRecord) -> str:
    """How every surface names one attempt and its ending (the diagram title's form)."""
    return f"attempt {attempt.number} {attempt.api_mode} {attempt.outcome}"


def _logged_outcome(record: logging.LogRecord) -> object:
    """The outcome a failed-attempt log record carries: a structured field, or the JSON
    object the message ends with."""
    if hasattr(record, "outcome"):
        return record.outcome
    message = record.getMessage()
    return json.loads(message[message.index("{") :]).get("outcome")


@pytest.mark.parametrize(
    ("name", "outcomes"),
    [
        ("overload-fallback", ["error", "error", "completed"]),
        ("stuck-anthropic", ["stale", "completed"]),
        ("user-interrupt", ["interrupted"]),
    ],
)
def test_every_surface_names_an_attempt_by_its_outcome(
    server: LoopbackServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    name: str,
    outcomes: list[str],
) -> None:
    lines: list[str] = []
    recording = tmp_path / "runs.jsonl"
    with TransitionRecorder(path=recording) as recorder, caplog.at_level(logging.INFO):
        result = _scenarios.run_scenario(
            server, SCENARIOS[name], 0.5, lines.append, hooks=[recorder]
        )
    assert result.run is not None and result.ok, lines
    attempts = result.run.attempts
    assert [a.outcome for a in attempts] == outcomes
    expected = [attempt_text(a) for a in attempts]

    # The demo's transition log: each attempt's last transition names its outcome.
    log = "\n".join(lines)
    for text in expected:
        assert text in log, f"{text!r} not in the transition log:\n{log}"
    # The demo's table row names the attempts the same way, in order.
    row = _scenarios._table([result]).splitlines()[2]
    found = re.findall(r"attempt \d+ \S+ [a-z ]+?(?=,|\s*$|\s{2})", row)
    assert found == expected, row
    # The per-run diagram's title (Mermaid and DOT).
    title = result.run.diagram().splitlines()[1]
    assert title == f'title: "run: {", ".join(expected)}"'
    assert f'label="run: {", ".join(expected)}"' in (_demo._run_dot_text(result.run) or "")
    # The library's log: one record per failed attempt, under the same outcome words.
    logged = [_logged_outcome(r) for r in caplog.records if r.name == "lifecycle"]
    assert logged == [a.outcome for a in attempts if a.outcome != "completed"], logged
    # lifecycle report: attempts by outcome, under the same column words.
    summary = summarize(recording)
    counted: Counter[str] = Counter()
    for figures in summary.routes.values():
        for word in set(outcomes):
            counted[word] += getattr(figures, word)
    assert counted == Counter(outcomes)
    printed = io.StringIO()
    print_summary(summary, printed, use_rich=False)
    header = next(line for line in printed.getvalue().splitlines() if line.startswith("route"))
    words = list(get_args(Outcome))
    assert header.split()[2 : 2 + len(words)] == words


def test_one_mapping_names_the_outcomes_and_the_states_they_pass_through() -> None:
    from lifecycle import OUTCOMES

    assert list(OUTCOMES) == list(get_args(Outcome))
    for word, term in OUTCOMES.items():
        assert term.word == word
        assert term.state in STATES
        assert term.meaning
        # The trigger named is the one that takes an attempt in flight into that state.
        assert {"trigger": term.trigger, "source": "streaming", "dest": term.state} in [
            {k: row[k] for k in ("trigger", "source", "dest")} for row in TRANSITIONS
        ]
    assert OUTCOMES["error"].state == "dropped"
    assert OUTCOMES["dropped"].state == "dropped"
