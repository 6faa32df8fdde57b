"""The package's faces, one per audience, and the layers behind them.

- ``lifecycle`` is for those who use the engine, ``lifecycle.adapters`` for those who
  write an adapter, ``lifecycle.health`` for those who keep route health, and
  ``lifecycle.otel`` / ``lifecycle.record`` / ``lifecycle.diagrams`` for observers: each
  exports exactly the names listed here, so a name leaves or joins a face on purpose (as
  httpx's exported-members test does).
- ``lifecycle`` never imports ``providers``, and nothing outside ``lifecycle`` imports
  one of its private modules: ``providers`` (the adapters and the applications) reads
  the faces only.
- The private layers import downwards only (``_core`` nothing, ``_health`` and
  ``_observe`` the core, ``_drivers`` all three), and no two modules import each other,
  not even inside a function or for type checking.
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FACES = {
    "lifecycle": [
        "FINAL_STATES",
        "OUTCOMES",
        "STATES",
        "STOP_REASONS",
        "TRANSITIONS",
        "AsyncRun",
        "AttemptRecord",
        "BreakerChange",
        "BreakerPolicy",
        "BreakerStatus",
        "CleanupStep",
        "Diagnostics",
        "EngineClosed",
        "Fault",
        "IncompleteToolCall",
        "Interrupted",
        "LifecycleError",
        "LifecycleHooks",
        "LocalHealthStore",
        "Message",
        "MissingCredentials",
        "Outcome",
        "OutcomeTerm",
        "ProviderArtifact",
        "Restart",
        "RetryPolicy",
        "Run",
        "RunView",
        "SecretsFilter",
        "StopReason",
        "StreamEngine",
        "StreamEvent",
        "StreamFailed",
        "Timeouts",
        "ToolCall",
        "ToolCallDelta",
        "Transition",
        "Usage",
        "__version__",
        "attempt_text",
        "ending_of",
    ],
    "lifecycle.adapters": [
        "HEADER_ALLOWLIST",
        "AsyncAttemptStream",
        "AttemptConnection",
        "AttemptStream",
        "Fault",
        "MissingCredentials",
        "OversizedEvent",
        "Request",
        "Route",
        "Shutdownable",
        "active_connection",
        "count_decoded",
        "count_read",
        "exception_chain",
        "header_subset",
        "redact",
        "register_secrets",
    ],
    "lifecycle.health": [
        "BREAKER_STATES",
        "BREAKER_TRANSITIONS",
        "Admission",
        "BreakerChange",
        "BreakerCore",
        "BreakerPolicy",
        "BreakerStatus",
        "HealthStore",
        "LocalHealthStore",
        "RedisHealthStore",
        "RouteHealth",
    ],
    "lifecycle.otel": ["BREAKER_STATE_VALUES", "OpenTelemetryHooks", "provider_name"],
    "lifecycle.record": [
        "FORMAT_VERSION",
        "BreakerStep",
        "Percentiles",
        "RecordedRun",
        "Recording",
        "RecordingError",
        "RouteFigures",
        "Summary",
        "TransitionRecorder",
        "load",
        "path_of",
        "percentile",
        "print_summary",
        "recoveries_of",
        "report_command",
        "summarize",
        "summary_of",
        "write_diagrams",
    ],
    "lifecycle.diagrams": [
        "adapter_mermaid",
        "breaker_mermaid",
        "lifecycle_dot",
        "lifecycle_mermaid",
        "run_diagram",
        "run_dot",
    ],
    "providers": [
        "AnthropicMessages",
        "OpenAIChatCompletions",
        "OpenAIResponses",
    ],
}

LAYERS = {
    "_core": {"_core"},
    "_health": {"_core", "_health"},
    "_observe": {"_core", "_observe"},
    "_drivers": {"_core", "_health", "_observe", "_drivers"},
}
"""What each private layer of ``lifecycle`` may import at run time (type-only imports
are exempt from layering, never from the no-circle rule)."""


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in ("lifecycle", "providers"):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(module: str) -> Iterator[tuple[str, bool]]:
    """Every project module ``module`` imports, anywhere in it, each with whether the
    import runs (False: under ``if TYPE_CHECKING:``)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only.update(id(inner) for inner in ast.walk(node))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - node.level + 1]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != module:
                yield target, id(node) not in typing_only


def _is_private(module: str) -> bool:
    return any(part.startswith("_") and part != "__init__" for part in module.split("."))


@pytest.mark.parametrize("face", sorted(FACES))
def test_each_face_exports_exactly_its_names(face: str) -> None:
    module = importlib.import_module(face)
    assert sorted(module.__all__) == sorted(FACES[face])
    for name in module.__all__:
        assert getattr(module, name) is not None, f"{face}.{name}"


def test_every_public_module_of_lifecycle_is_a_face() -> None:
    public = {name for name in MODULES if name.startswith("lifecycle") and not _is_private(name)}
    assert public == {name for name in FACES if name.startswith("lifecycle")}


# ``python -m lifecycle`` is the one way in from outside: it hands over to the CLI.
@pytest.mark.parametrize(
    "module", sorted(m for m in MODULES if m.startswith("lifecycle") and m != "lifecycle.__main__")
)
def test_lifecycle_never_imports_providers(module: str) -> None:
    imported = sorted(target for target, _ in _imports(module) if target.startswith("providers"))
    assert not imported, f"{module} imports {imported}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("providers")))
def test_providers_reads_only_the_faces_of_lifecycle(module: str) -> None:
    private = sorted(
        target
        for target, _ in _imports(module)
        if target.startswith("lifecycle") and _is_private(target)
    )
    assert not private, f"{module} imports private lifecycle modules {private}"


LAYERED = sorted(m for m in MODULES if m.startswith("lifecycle.") and m.split(".")[1] in LAYERS)


def test_every_private_module_of_lifecycle_is_in_a_layer() -> None:
    loose = {m for m in MODULES if m.startswith("lifecycle.") and _is_private(m)} - set(LAYERED)
    assert loose == {"lifecycle.__main__"}


@pytest.mark.parametrize("module", LAYERED)
def test_layers_import_downwards_only(module: str) -> None:
    layer = module.split(".")[1]
    wrong = sorted(
        target
        for target, runs in _imports(module)
        if runs and target.startswith("lifecycle.") and (target.split(".")[1] not in LAYERS[layer])
    )
    assert not wrong, f"{module} ({layer}) imports {wrong}"


def test_no_two_modules_import_each_other() -> None:
    graph = {module: {target for target, _ in _imports(module)} for module in MODULES}
    # Tarjan's strongly connected components: any component of two or more is a circle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in graph:
        if module not in index:
            visit(module)
    assert not circles


def _project_imports_in(path: Path) -> Iterator[tuple[str, str, int]]:
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if (
            isinstance(node, ast.ImportFrom)
            and node.level == 0
            and node.module
            and node.module.split(".")[0] in ("lifecycle", "providers")
        ):
            for alias in node.names:
                yield node.module, alias.name, node.lineno


SCRIPTS = sorted((ROOT / "tests").rglob("*.py"))


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_name_a_test_or_benchmark_imports_exists(path: Path) -> None:
    """The benchmarks (and helpers imported only by some tests) are not run by the suite:
    a name that moved would surface only when someone runs them."""
    missing = []
    for module_name, name, line in _project_imports_in(path):
        module = importlib.import_module(module_name)
        if name == "*" or hasattr(module, name) or f"{module_name}.{name}" in MODULES:
            continue
        missing.append(f"line {line}: from {module_name} import {name}")
    assert not missing, missing
