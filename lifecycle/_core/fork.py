"""Locks a forked child gets back unheld.

``os.fork()`` copies a lock as it is: held, if another thread of the parent (a run
reporting, a hook writing) was inside it at that moment, and no thread of the child can
ever release it, so the child's first use blocks forever. Pre-fork servers (gunicorn,
celery) fork from a parent that may be running streams. Objects whose ``_lock`` guards
only their own short critical sections register here, and the child gets a fresh lock.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any

__all__ = ["renew_lock_after_fork"]

_LOCK_OWNERS: weakref.WeakSet[Any] = weakref.WeakSet()


def renew_lock_after_fork(owner: Any) -> None:
    """Give ``owner._lock`` a fresh ``threading.Lock`` in every forked child. What the
    lock guarded may be left half-changed by the parent's thread; each owner's state is
    a cache, a counter or a report-once set, which that cannot break."""
    _LOCK_OWNERS.add(owner)


def _renew_locks_in_child() -> None:
    for owner in list(_LOCK_OWNERS):
        owner._lock = threading.Lock()


os.register_at_fork(after_in_child=_renew_locks_in_child)
