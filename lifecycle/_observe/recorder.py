"""A JSON-lines recording of runs and route breakers, for an operator's later look.

``TransitionRecorder`` is a ``LifecycleHooks``: pass it to ``StreamEngine(hooks=[...])``
(one recorder may serve several engines) and every run's transitions, attempt records
and end, and every breaker change, become one JSON object per line, flushed as it is
written. ``lifecycle report FILE`` summarizes such a file.

Lines, each with a ``kind``:

- ``header``: ``version`` (of this format), ``wall`` (``time.time()`` when recording
  began), ``pid``; an appended file has one header per recording session;
- ``run_start``: ``run_id``, ``started_at`` (wall clock), ``routes`` (route names, in
  fallback order);
- ``transition``: ``run_id``, ``source``, ``trigger``, ``dest``, ``at`` (seconds since
  the run started, as ``Transition.at``), ``wall``;
- ``attempt_end``: ``run_id``, ``route`` (the route's name), then every field of
  ``AttemptRecord.as_dict()`` (``attempt``, ``route_index``, ``api_mode``, ``model``,
  ``outcome``, ``reason``, ``probe``, the diagnostics), ``wall``;
- ``run_end``: ``run_id``, ``state``, ``attempts`` (how many), ``elapsed`` (seconds
  since the run started, at its last transition), ``wall``;
- ``breaker``: ``route``, ``source``, ``trigger``, ``dest``, ``at`` (wall clock),
  ``failures``, ``reopen_at`` (wall clock, or null).

Only records are written, and records are redacted data (every string from the outside
passed through ``lifecycle._core.redaction.redact``): no request, header, message
content or key.
Route names come from the application's configuration; they are redacted too.
"""

from __future__ import annotations

import json
import os
import threading
import time
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, Final

from .._core.fork import renew_lock_after_fork
from .._core.records import AttemptRecord, Transition
from .._core.redaction import redact
from .hooks import LifecycleHooks

if TYPE_CHECKING:
    from .._core.breaker import BreakerChange
    from .hooks import RunView

__all__ = ["FORMAT_VERSION", "TransitionRecorder"]

FORMAT_VERSION: Final = 1
"""The ``version`` of the header line; readers refuse a version they do not know."""


class TransitionRecorder(LifecycleHooks):
    """Writes runs and breaker changes as JSON lines; see the module docstring.

    Give exactly one of ``path`` (the recorder opens the file, truncating it unless
    ``append``, and closes it) or ``file`` (an open text file: written and flushed, never
    closed here). Thread-safe: runs on any thread or task may share one recorder. After
    ``close()`` further records are dropped. Also a context manager.
    """

    def __init__(
        self,
        *,
        path: str | os.PathLike[str] | None = None,
        file: IO[str] | None = None,
        append: bool = False,
    ) -> None:
        if (path is None) == (file is None):
            raise TypeError("TransitionRecorder needs exactly one of path=... or file=...")
        if file is not None and append:
            raise TypeError("TransitionRecorder(append=True) applies to path=... only")
        self._lock = threading.Lock()
        renew_lock_after_fork(self)
        self._owned = path is not None
        if path is not None:
            self._file: IO[str] = open(path, "a" if append else "w", encoding="utf-8")  # noqa: SIM115
        else:
            assert file is not None
            self._file = file
        self._closed = False
        self.lines = 0
        """Lines written so far, the header included."""
        self._write({"kind": "header", "version": FORMAT_VERSION, "pid": os.getpid()})

    # -- the hooks ------------------------------------------------------------------------
    def on_run_start(self, run: RunView) -> None:
        self._write(
            {
                "kind": "run_start",
                "run_id": run.id,
                "started_at": run.started_at,
                "routes": [redact(name) for name in run.route_names],
            }
        )

    def on_transition(self, run: RunView, transition: Transition) -> None:
        self._write(
            {
                "kind": "transition",
                "run_id": run.id,
                "source": transition.source,
                "trigger": transition.trigger,
                "dest": transition.dest,
                "at": transition.at,
            }
        )

    def on_attempt_end(self, run: RunView, attempt: AttemptRecord) -> None:
        names = run.route_names
        index = attempt.route_index
        route = names[index] if 0 <= index < len(names) else f"route {index}"
        self._write(
            {"kind": "attempt_end", "run_id": run.id, "route": redact(route), **attempt.as_dict()}
        )

    def on_run_end(self, run: RunView) -> None:
        history = run.history
        self._write(
            {
                "kind": "run_end",
                "run_id": run.id,
                "state": run.state,
                "attempts": len(run.attempts),
                "elapsed": history[-1].at if history else 0.0,
            }
        )

    def on_breaker_change(self, change: BreakerChange) -> None:
        self._write(
            {
                "kind": "breaker",
                "route": redact(change.route),
                "source": change.source,
                "trigger": change.trigger,
                "dest": change.dest,
                "at": change.at,
                "failures": change.failures,
                "reopen_at": change.reopen_at,
            }
        )

    # -- the file -------------------------------------------------------------------------
    def _write(self, record: dict[str, Any]) -> None:
        if "wall" not in record and record["kind"] != "breaker":
            record["wall"] = time.time()
        line = json.dumps(record, default=str, ensure_ascii=False) + "\n"
        with self._lock:
            if self._closed:
                return
            self._file.write(line)
            self._file.flush()
            self.lines += 1

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Flush, and close the file if the recorder opened it; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._owned:
                self._file.close()
            else:
                self._file.flush()

    def __enter__(self) -> TransitionRecorder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
