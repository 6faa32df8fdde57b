"""The README shows the machine as it is: its Mermaid block is the generated diagram."""

from __future__ import annotations

from pathlib import Path

from lifecycle.diagrams import lifecycle_mermaid

ROOT = Path(__file__).resolve().parent.parent


def test_readme_embeds_the_current_lifecycle_diagram() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "```mermaid\n" + lifecycle_mermaid().rstrip("\n") + "\n```" in readme


def test_readme_quickstart_has_the_two_commands_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert ".venv/bin/pip install . && .venv/bin/lifecycle demo" in readme
    assert ".venv/bin/pip install '.[test]' && .venv/bin/python -m pytest" in readme


def test_readme_embeds_the_current_breaker_diagram() -> None:
    from lifecycle.diagrams import breaker_mermaid

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "```mermaid\n" + breaker_mermaid().rstrip("\n") + "\n```" in readme
