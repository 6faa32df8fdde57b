"""Recordings of runs, for an operator's later look: the recorder and its report.

``TransitionRecorder`` (a ``lifecycle.LifecycleHooks``) writes every run's transitions,
attempts and end, and every breaker change, as JSON lines (the format is described in
``lifecycle._observe.recorder``); ``load`` reads such a file back, ``summarize`` turns it
into per-route figures and ``print_summary`` / ``write_diagrams`` show them, as
``lifecycle report FILE`` does (``report_command``).
"""

from ._observe.recorder import FORMAT_VERSION, TransitionRecorder
from ._observe.report import (
    BreakerStep,
    Percentiles,
    RecordedRun,
    Recording,
    RecordingError,
    RouteFigures,
    Summary,
    load,
    path_of,
    percentile,
    print_summary,
    recoveries_of,
    report_command,
    summarize,
    summary_of,
    write_diagrams,
)

__all__ = [
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
]
