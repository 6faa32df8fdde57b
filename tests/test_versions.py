"""The declared versions are the tested ones: every direct dependency's minimum is the
exact pin of ``.ci/lowest-constraints.txt`` (the versions CI's lowest leg installs), and
every SDK, whose private attributes ``providers/_sdk/sockets.py`` reads, has an upper bound."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
CONSTRAINTS = ROOT / ".ci" / "lowest-constraints.txt"
BOUNDED = ("anthropic", "openai", "transitions")
"""Dependencies whose next major can break the private attributes or the machine."""


def _declared() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    requirements = [Requirement(line) for line in project["dependencies"]]
    return {canonicalize_name(r.name): r for r in requirements}


def _pins() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for raw in CONSTRAINTS.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([0-9][A-Za-z0-9.]*)", line)
        assert match, f"{CONSTRAINTS.name}: not an exact pin: {raw!r}"
        pins[canonicalize_name(match[1])] = Version(match[2])
    return pins


def _minimum(requirement: Requirement) -> Version | None:
    lows = [Version(s.version) for s in requirement.specifier if s.operator in (">=", "==")]
    return max(lows) if lows else None


def _has_upper_bound(requirement: Requirement) -> bool:
    return any(s.operator in ("<", "<=", "==", "~=") for s in requirement.specifier)


@pytest.mark.parametrize("name", sorted(_declared()))
def test_each_declared_minimum_is_the_pinned_lowest_version(name: str) -> None:
    requirement = _declared()[name]
    pins = _pins()
    assert name in pins, f"{name} is a dependency but {CONSTRAINTS.name} does not pin it"
    minimum = _minimum(requirement)
    assert minimum == pins[name], (
        f"pyproject declares {requirement}, CI's lowest leg tests {name}=={pins[name]}: "
        "the declared minimum must be the tested one"
    )
    assert requirement.specifier.contains(pins[name]), f"{requirement} excludes its own pin"


@pytest.mark.parametrize("name", BOUNDED)
def test_each_sdk_has_an_upper_bound(name: str) -> None:
    declared = _declared()
    assert name in declared, f"{name} is not a declared dependency"
    assert _has_upper_bound(declared[name]), (
        f"{declared[name]} has no upper bound: an untested major may move the private "
        "attributes providers/_sdk/sockets.py reads"
    )


def test_ci_runs_a_leg_with_the_lowest_constraints() -> None:
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "-c .ci/lowest-constraints.txt" in ci or '-c "$root/.ci/lowest-constraints.txt"' in ci


def test_readme_names_the_lowest_tested_versions() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "## Versions" in readme
    section = readme.split("## Versions", 1)[1].split("\n## ", 1)[0]
    for name in _declared():
        assert f"{name} {_pins()[name]}" in section, f"README's Versions omits {name}"
