"""The mutation catalogue (``tests/mutation/``) stays applicable to the code it mutates.

Cheap: no mutated suite runs here (``python tests/mutation/run.py`` does that, on
demand). When production code under a mutation changes, this fails: update the
catalogue entry with the code, so that the mutation still exists.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mutation.catalogue import BUG_CLASSES, CATALOGUE, REQUIRED, Mutation

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("mutation", CATALOGUE, ids=lambda mutation: mutation.name)
def test_mutation_applies_once_and_compiles(mutation: Mutation) -> None:
    path = ROOT / mutation.file
    assert path.is_file(), f"{mutation.file} does not exist"
    text = path.read_text(encoding="utf-8")
    assert text.count(mutation.old) == 1, (
        f"{mutation.name}: its old snippet occurs {text.count(mutation.old)} times in "
        f"{mutation.file}; update tests/mutation/catalogue.py with the code"
    )
    assert mutation.new != mutation.old
    mutated = text.replace(mutation.old, mutation.new)
    compile(mutated, str(path), "exec")


@pytest.mark.parametrize("mutation", CATALOGUE, ids=lambda mutation: mutation.name)
def test_mutation_is_documented(mutation: Mutation) -> None:
    assert mutation.bug_class in BUG_CLASSES
    assert mutation.why.strip() and "\n" not in mutation.why
    assert mutation.first, "no first test files"
    for name in mutation.first:
        assert name.startswith("tests/test_") and (ROOT / name).is_file(), name


def test_names_are_unique() -> None:
    names = [mutation.name for mutation in CATALOGUE]
    assert sorted(name for name in set(names) if names.count(name) > 1) == []


def test_every_required_bug_and_class_is_there() -> None:
    names = {mutation.name for mutation in CATALOGUE}
    assert [name for name in REQUIRED if name not in names] == []
    classes = {mutation.bug_class for mutation in CATALOGUE}
    assert [name for name in BUG_CLASSES if name not in classes] == []


def test_no_two_mutations_share_a_snippet() -> None:
    # Two entries on one snippet would be one mutation counted twice.
    places = [(mutation.file, mutation.old) for mutation in CATALOGUE]
    assert len(set(places)) == len(places)
