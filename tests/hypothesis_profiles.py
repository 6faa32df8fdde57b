"""Hypothesis profiles for the verification suite (no ``[tool.hypothesis]`` section needed).

- ``default``: what the README's test command runs, on a laptop or in CI alike: a fixed
  number of examples, derandomized (the same examples on every run and every machine, so a
  red run is reproducible and a green one means the same thing everywhere), no deadline
  (the engine tests do real I/O on a possibly busy machine), no example database.
- ``random``: opt-in exploration: Hypothesis' own random generation with the database kept
  in ``.hypothesis/``, at the default budgets (``dev`` is the old name of it).
- ``deep``: opt-in soak before a release: many more random examples.

``HYPOTHESIS_PROFILE=<name>`` picks one; nothing else in the environment (``CI`` included)
changes what runs, so the suite a newcomer runs is the one CI runs. Test modules import
``PROFILE`` and ``budget(kind)`` from here; the profile is loaded once, on the first import.

Budgets are per test, since one example of the pure core costs ~1 ms and one example of
the real engine costs a real run or several (~0.3 s each with a stall).
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from typing import Final

from hypothesis import HealthCheck, Phase, settings

__all__ = ["BUDGETS", "PROFILE", "budget"]

_SLOW_OK = [HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large]


def _import_the_project() -> None:
    """Hypothesis draws some strings and numbers from the constants of the project's
    modules imported at the time (test files excepted). Without this, the examples a
    derandomized test runs would depend on which other tests ran before it in the same
    process: a test could pass alone and fail in the suite (seen: a history property
    drew ``system='signature'`` only in the full run). Imported first, every module of
    the project is in that pool, so the examples are a function of the commit alone."""
    for package_name in ("lifecycle", "providers"):
        package = importlib.import_module(package_name)
        for module in pkgutil.walk_packages(package.__path__, f"{package_name}."):
            if not module.name.endswith("__main__"):
                importlib.import_module(module.name)


_import_the_project()

settings.register_profile(
    "default",
    max_examples=100,
    derandomize=True,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=_SLOW_OK,
)
settings.register_profile("random", deadline=None, suppress_health_check=_SLOW_OK)
settings.register_profile("dev", parent=settings.get_profile("random"))
settings.register_profile(
    "deep",
    max_examples=2000,
    deadline=None,
    suppress_health_check=_SLOW_OK,
    phases=tuple(Phase),
)

PROFILE: Final = os.environ.get("HYPOTHESIS_PROFILE") or "default"
settings.load_profile(PROFILE)

BUDGETS: Final[dict[str, dict[str, int]]] = {
    # examples of the pure RunCore state machine (each up to ``core_steps`` events)
    "default": {"core": 2000, "core_steps": 30, "engine": 40, "engine_steps": 4},
    "random": {"core": 1000, "core_steps": 30, "engine": 20, "engine_steps": 3},
    "deep": {"core": 25000, "core_steps": 80, "engine": 400, "engine_steps": 6},
}
BUDGETS["dev"] = BUDGETS["random"]


def budget(kind: str) -> int:
    """The number of examples (or steps) of ``kind`` in the loaded profile."""
    return BUDGETS.get(PROFILE, BUDGETS["random"])[kind]
