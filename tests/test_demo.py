"""The demo tells the truth about what it measures (issue 14, item 10).

In-process, with the real SDKs over a real loopback server: the summary says what
"recovery" spans and shows its parts, which add up to it; and a verdict that fails names
the expectation that failed, what it expected and what it saw. The failing burst is made
to fail by its own parameters (the flaky route never recovers), not by mocking."""

from __future__ import annotations

import re

import pytest

from providers.cli import _burst, _demo, _scenarios
from providers.loopback import HttpError, LoopbackServer

SCENARIOS = {s.name: s for s in _scenarios.SCENARIOS}
MS = r"(\d+\.\d) ms"
STALE = 0.5
"""The demo's own stale clock: generous on a busy machine."""


def _parts_of(row: str) -> list[float]:
    """The recovery figure and its parts, in ms, from one row of the summary table."""
    return [float(x) for x in re.findall(MS, row)]


@pytest.mark.parametrize("name", ["stuck-openai", "tcp-drop", "overload-fallback"])
def test_the_summary_shows_what_recovery_spans_and_its_parts_add_up(
    server: LoopbackServer, name: str
) -> None:
    lines: list[str] = []
    result = _scenarios.run_scenario(server, SCENARIOS[name], STALE, lines.append)
    assert result.ok, lines
    summary = _scenarios.summary_text([result])
    for part in ("detection", "cleanup", "rebuild", "backoff"):
        assert part in summary.splitlines()[0], summary  # the legend says what each part is
    assert "stall deadline" in summary and "next attempt" in summary, summary
    header, row = (line for line in summary.splitlines() if line.startswith(("scenario", name)))
    columns = header.split()
    assert columns[3:8] == ["recovery", "detection", "cleanup", "rebuild", "backoff"], header
    recovery, *parts = _parts_of(row)
    assert len(parts) == 4, row
    # Each figure is rounded to 0.1 ms: the parts add up within their roundings.
    assert abs(sum(parts) - recovery) <= 0.3, row
    assert recovery > 0
    # The recovery of a failure seen at once has no detection part; a stall's does.
    detection, cleanup, rebuild, _backoff = parts
    if name == "stuck-openai":
        assert detection >= 0
    else:
        assert detection == 0.0, row
    assert cleanup + rebuild > 0, row  # the engine records its cleanup steps


def test_a_failed_expectation_is_named_with_what_was_expected_and_seen(
    server: LoopbackServer,
) -> None:
    lines: list[str] = []
    # The flaky route never recovers within the burst: its breaker opens (a fact about
    # outcomes, on a busy machine too) and cannot close again.
    burst = _burst.run_burst(
        server, STALE, lines.append, hooks=(), board=None, recover_after=60.0, limit=2.0
    )
    checks = {check.name: check for check in burst.checks}
    assert checks["breaker-burst breaker opened"].ok, checks
    assert not checks["breaker-burst breaker closed again"].ok, checks
    out: list[str] = []
    status = _demo.verdict([], burst, leaked=0, out=out.append)
    assert status == 1
    text = "\n".join(out)
    assert "FAILED" in text
    failed_lines = [line for line in text.splitlines() if "breaker closed again" in line]
    assert failed_lines, text
    assert "expected" in failed_lines[0] and "saw" in failed_lines[0], text
    assert "open" in failed_lines[0], text  # what was seen: the breaker's last state
    # The failing expectations, and only they, are printed, each with its reason.
    for name, check in checks.items():
        printed = [line for line in text.splitlines() if name in line]
        assert bool(printed) == (not check.ok), (name, text)
        if printed:
            assert printed[0].strip() == f"- {check.line()}", text


def test_a_scenario_that_ends_otherwise_says_what_it_expected_and_what_happened(
    server: LoopbackServer,
) -> None:
    lines: list[str] = []
    # One attempt per route, two 529s: both routes used up, the run fails.
    scenario = _scenarios.Scenario(
        name="overload-no-retry",
        title="529 on the first route, 529 on the second",
        first="anthropic",
        faults=(HttpError(status=529), HttpError(status=529)),
        expect="completed",
        max_attempts=1,
    )
    result = _scenarios.run_scenario(server, scenario, STALE, lines.append)
    assert result.state == "failed"
    out: list[str] = []
    assert _demo.verdict([result], None, leaked=0, out=out.append) == 1
    text = "\n".join(out)
    assert "FAILED" in text
    assert (
        "overload-no-retry final state: expected completed; saw failed "
        "(attempt 1 anthropic_messages error" in text
    ), text
    assert "StreamFailed" in text, text


def test_the_verdict_passes_when_every_expectation_holds(server: LoopbackServer) -> None:
    result = _scenarios.run_scenario(server, SCENARIOS["tcp-drop"], STALE, lambda _: None)
    out: list[str] = []
    assert _demo.verdict([result], None, leaked=0, out=out.append) == 0
    assert "FAILED" not in "\n".join(out)
    assert _demo.verdict([result], None, leaked=2, out=out.append) == 1
    expected = "connections closed: expected 0 connections open at the server; saw 2"
    assert any(expected in line for line in out), out
