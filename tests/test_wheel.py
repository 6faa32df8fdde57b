"""The wheel a user installs: built here with ``pip wheel`` and opened as a zip file.

It carries the project's licence and those of the recordings it ships, the metadata an
index shows (classifiers, project URLs), the typing marker, and no test-only module."""

from __future__ import annotations

import email.parser
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import lifecycle

ROOT = Path(__file__).resolve().parent.parent
RECORDED = "providers/loopback/recorded"
BUILD_OUTPUTS = (
    ".git",
    ".venv*",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".*_cache",
    ".hypothesis",
)

pytestmark = pytest.mark.timeout(55)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[zipfile.ZipFile]:
    # From a copy without build outputs: setuptools reuses a checkout's build/ directory,
    # whose stale files (a module since deleted) would end up in the wheel.
    source = tmp_path_factory.mktemp("source") / "stream-lifecycle"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*BUILD_OUTPUTS))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(source)],
        check=True,
        capture_output=True,
        timeout=50,
    )
    (built,) = out.glob("stream_lifecycle-*.whl")
    with zipfile.ZipFile(built) as archive:
        yield archive


def _dist_info(wheel: zipfile.ZipFile) -> str:
    (name,) = {n.split("/", 1)[0] for n in wheel.namelist() if ".dist-info/" in n}
    return name


def _metadata(wheel: zipfile.ZipFile) -> email.message.Message:
    text = wheel.read(f"{_dist_info(wheel)}/METADATA").decode("utf-8")
    return email.parser.Parser().parsestr(text)


def test_the_project_licence_is_in_the_dist_info(wheel: zipfile.ZipFile) -> None:
    dist_info = _dist_info(wheel)
    licences = [n for n in wheel.namelist() if n.startswith(dist_info) and n.endswith("LICENSE")]
    assert licences, f"no LICENSE in {dist_info}: {wheel.namelist()}"
    text = wheel.read(licences[0]).decode("utf-8")
    assert "MIT License" in text and "Permission is hereby granted" in text


@pytest.mark.parametrize(
    ("name", "licence", "holder"),
    [
        ("anthropic-sdk-python-MIT.txt", "Permission is hereby granted", "Anthropic, PBC"),
        ("openai-python-Apache-2.0.txt", "Apache License", "OpenAI"),
    ],
)
def test_the_recordings_ship_with_their_licences(
    wheel: zipfile.ZipFile, name: str, licence: str, holder: str
) -> None:
    names = wheel.namelist()
    assert any(n.startswith(f"{RECORDED}/anthropic/") for n in names)
    path = f"{RECORDED}/LICENSES/{name}"
    assert path in names, f"{path} not in the wheel"
    text = wheel.read(path).decode("utf-8")
    assert licence in text and holder in text


def test_no_test_only_module_ships(wheel: zipfile.ZipFile) -> None:
    assert "lifecycle/_testing.py" not in wheel.namelist()
    assert not [n for n in wheel.namelist() if n.startswith("tests/")]


def test_every_module_of_both_packages_ships(wheel: zipfile.ZipFile) -> None:
    # The suite runs from the checkout, whose sources shadow the installed package: a
    # sub-package left out of the build would only break an installed copy.
    sources = {
        str(path.relative_to(ROOT))
        for package in ("lifecycle", "providers")
        for path in (ROOT / package).rglob("*.py")
    }
    assert sources - set(wheel.namelist()) == set()


def test_the_metadata_has_classifiers(wheel: zipfile.ZipFile) -> None:
    # (No Project-URL yet: the project has no public address, and an invented one would
    # send users somewhere else.)
    metadata = _metadata(wheel)
    classifiers = metadata.get_all("Classifier") or []
    assert "License :: OSI Approved :: MIT License" in classifiers
    assert "Typing :: Typed" in classifiers
    assert any(c.startswith("Programming Language :: Python :: 3.11") for c in classifiers)


def test_both_packages_are_typed(wheel: zipfile.ZipFile) -> None:
    assert {"lifecycle/py.typed", "providers/py.typed"} <= set(wheel.namelist())


def test_the_package_version_is_the_metadata_version(wheel: zipfile.ZipFile) -> None:
    assert lifecycle.__version__ == _metadata(wheel)["Version"]
