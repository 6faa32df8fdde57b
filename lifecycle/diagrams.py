"""Lifecycle diagrams, for reviewers: drawn from the transition tables themselves.

``lifecycle_mermaid`` / ``lifecycle_dot`` draw the run machine, ``breaker_mermaid`` a
route's breaker, ``adapter_mermaid`` one adapter's cleanup, ``run_diagram`` / ``run_dot``
one run's (or one recording's) path through the machine. ``lifecycle diagram`` writes
them to ``diagrams/`` and ``--check`` fails when they drift from the tables.
"""

from ._observe.diagram import (
    adapter_mermaid,
    breaker_mermaid,
    lifecycle_dot,
    lifecycle_mermaid,
    run_diagram,
    run_dot,
)

__all__ = [
    "adapter_mermaid",
    "breaker_mermaid",
    "lifecycle_dot",
    "lifecycle_mermaid",
    "run_diagram",
    "run_dot",
]
