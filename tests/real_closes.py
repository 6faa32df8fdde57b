"""Who really closed what: an observer of every socket and client close, for invariants.

The engine records its own cleanup steps (``attempt.diagnostics.cleanup``), and an
invariant over those records sees only what the engine chose to write down: a close
that some other code path makes (an abort that also closes, a watchdog callback that
closes a client) leaves no step, and nothing fails. This module wraps the real
functions instead, once per process:

- ``socket.socket.close`` / ``shutdown`` and asyncio's selector transport ``close`` /
  ``abort`` (an async socket is closed by the loop after its transport's close, so the
  transport call is the one whose caller counts);
- the SDKs' client ``close()`` (sync) and ``await close()`` (async), both SDKs, and the
  httpx / httpx2 client under them (``close`` / ``aclose``).

Each call is kept with the calling thread's name, the running asyncio task (if any) and
whether it ran inside ``Run.interrupt()`` / ``AsyncRun.interrupt()`` or a watchdog
callback on an event loop (``foreign``), the contexts that may only shut a socket down.

Only the objects of runs are followed, so the loopback server's sockets and unrelated
clients cost a dictionary miss: a socket is a run's once one of its attempts' connections
attached it (``AttemptConnection.attach``, observed through a subclass the run creates),
and a client is a route slot's once the slot built or adopted it.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import socket
import threading
import time
import traceback
import weakref
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Final

import anthropic._base_client
import openai._base_client

from lifecycle import AsyncRun, Run
from lifecycle._drivers import async_run as _async_driver
from lifecycle._drivers import client_slots as _clients
from lifecycle._drivers import connection as _abort
from lifecycle._drivers import run_base as _run_base
from lifecycle._drivers import watchdog as _watchdog

__all__ = ["Call", "ClientTrace", "RunTrace", "SocketTrace", "clients_of", "install", "trace_of"]

WATCHDOG: Final = "lifecycle-watchdog"
_seq = itertools.count()
_local = threading.local()
"""``foreign``: set while interrupt() or the loop watchdog's callback runs on this thread."""
_closing_client: ContextVar[bool] = ContextVar("real_closes_closing_client", default=False)
"""Inside an async client's close (a context variable: it awaits among other tasks, and
the loop callbacks it schedules run in its context). A sync close counts in
``_local.closing`` instead, and never sets a context variable: the SDKs' sync httpx
client closes itself in ``__del__`` (anthropic 0.40 even when already closed), so the
garbage collector runs it, and a collection triggered inside another ``ContextVar.set``
(the engine's ``active_connection``) that re-enters ``ContextVar.set`` frees the HAMT the
outer set is still walking on CPython < 3.12 (python/cpython#148891). That is what
segfaulted the lowest-versions leg in CI, three times, always inside
``PyContextVar_Set`` under ``sync_run._open``."""
_acting_for: ContextVar[str | None] = ContextVar("real_closes_acting_for", default=None)
"""The task on whose behalf this one runs: the async driver awaits each close of a
cleanup as a task of its own (``_settle``, so a cancellation cannot cut it short), which
inherits this from the run's task."""


@dataclass(frozen=True, slots=True)
class Call:
    kind: str
    """"socket.close", "socket.shutdown", "transport.close", "transport.abort",
    "client.close" (the SDK's) or "http.close" (httpx's, under it)."""
    thread: str
    task: str | None
    foreign: str | None
    was_open: bool
    """False for a call on an object already closed (a no-op, harmless)."""
    seq: int
    at: float
    in_client_close: bool
    """Made by a client's close (its pool closing its connections): the client's close
    is the call that counts."""
    stack: str = ""
    """Where the call came from, kept only for calls in a suspicious context."""

    @property
    def context(self) -> str:
        where = self.thread if self.task is None else f"{self.thread}/{self.task}"
        return where if self.foreign is None else f"{where} inside {self.foreign}"

    @property
    def closes(self) -> bool:
        return self.was_open and self.kind != "socket.shutdown"


@dataclass(eq=False, slots=True)
class SocketTrace:
    description: str
    calls: list[Call] = field(default_factory=list)


@dataclass(eq=False, slots=True)
class Holding:
    """One attempt's hold on a socket, from its attach on. Once the attempt's own cleanup
    aborted it (``connection.cleaned_seq``), the socket is the owner's to close, nobody
    else's; an attempt that completed handed it to its client's pool instead."""

    socket: SocketTrace
    attached_seq: int
    connection: TracedConnection


@dataclass(eq=False)
class RunTrace:
    holdings: list[Holding] = field(default_factory=list)


@dataclass(eq=False, slots=True)
class ClientTrace:
    description: str
    calls: list[Call] = field(default_factory=list)

    def closes(self) -> list[Call]:
        """The SDK-level closes of the open client (its httpx close is part of each)."""
        return [c for c in self.calls if c.kind == "client.close" and c.was_open]


_SOCKETS: weakref.WeakKeyDictionary[Any, SocketTrace] = weakref.WeakKeyDictionary()
_RUNS: weakref.WeakKeyDictionary[Any, RunTrace] = weakref.WeakKeyDictionary()
_CLIENTS: weakref.WeakKeyDictionary[Any, ClientTrace] = weakref.WeakKeyDictionary()
"""SDK clients and their httpx clients, each to the trace of the SDK client."""
_SLOT_CLIENTS: weakref.WeakKeyDictionary[Any, list[ClientTrace]] = weakref.WeakKeyDictionary()
_installed = False
_install_lock = threading.Lock()


def _task_name() -> str | None:
    loop = asyncio._get_running_loop()
    if loop is None:
        return None
    task = asyncio.current_task(loop)
    if task is None:
        return None
    return _acting_for.get() or task.get_name()


def _call(kind: str, was_open: bool) -> Call:
    thread = threading.current_thread().name
    foreign: str | None = getattr(_local, "foreign", None)
    stack = ""
    if foreign is not None or thread == WATCHDOG:
        stack = "".join(traceback.format_stack(limit=9)[:-2])
    return Call(
        kind,
        thread,
        _task_name(),
        foreign,
        was_open,
        next(_seq),
        time.monotonic(),
        in_client_close(),
        stack,
    )


def in_client_close() -> bool:
    """Whether this thread (a sync close) or this context (an async one) is inside a
    client's close."""
    return getattr(_local, "closing", 0) > 0 or _closing_client.get()


def traced_sync_close(original: Any, kind: str) -> Any:
    """``original`` (a sync client's close), recorded; see ``_closing_client`` for why
    it counts on the thread instead of setting a context variable."""

    @functools.wraps(original)
    def traced(self: Any) -> Any:
        client = _CLIENTS.get(self)
        if client is not None:
            client.calls.append(_call(kind, _is_open(self)))
        _local.closing = getattr(_local, "closing", 0) + 1
        try:
            return original(self)
        finally:
            _local.closing -= 1

    return traced


def _is_open(client: Any) -> bool:
    closed = getattr(client, "is_closed", False)
    return not (closed() if callable(closed) else closed)


def trace_of(run: Any) -> RunTrace:
    """The sockets a run's attempts attached (empty if the run made no connection)."""
    return _RUNS.get(run) or RunTrace()


def clients_of(slot: Any) -> list[ClientTrace]:
    """Every client the slot built or adopted since ``install()``, oldest first."""
    return list(_SLOT_CLIENTS.get(slot, ()))


# -- sockets of runs ------------------------------------------------------------------------


class TracedConnection(_abort.AttemptConnection):
    """The run's own ``AttemptConnection``, which also tells this module what it attaches
    and when its attempt's cleanup took it over."""

    __slots__ = ("_trace", "cleaned_seq")

    def __init__(self) -> None:
        super().__init__()
        self._trace: RunTrace | None = None
        self.cleaned_seq: int | None = None

    def attach(self, sock: Any) -> None:
        super().attach(sock)
        trace = self._trace
        real = getattr(sock, "_sock", sock)  # asyncio hands out a TransportSocket
        if trace is None or not isinstance(real, socket.socket):
            return
        traced = _SOCKETS.get(real)
        if traced is None:
            traced = _SOCKETS[real] = SocketTrace(f"fd {real.fileno()} (at its attach)")
        if not any(h.socket is traced and h.connection is self for h in trace.holdings):
            trace.holdings.append(Holding(traced, next(_seq), self))

    def abort(self, *, reason: str) -> bool:
        if reason == "cleanup" and self.cleaned_seq is None:
            self.cleaned_seq = next(_seq)
        return super().abort(reason=reason)


def _observe_sockets() -> None:
    close = socket.socket.close
    shutdown = socket.socket.shutdown

    @functools.wraps(close)
    def traced_close(self: socket.socket) -> None:
        traced = _SOCKETS.get(self)
        if traced is not None:
            traced.calls.append(_call("socket.close", self.fileno() != -1))
        close(self)

    @functools.wraps(shutdown)
    def traced_shutdown(self: socket.socket, how: int) -> None:
        traced = _SOCKETS.get(self)
        if traced is not None:
            traced.calls.append(_call("socket.shutdown", self.fileno() != -1))
        shutdown(self, how)

    socket.socket.close = traced_close  # type: ignore[method-assign]
    socket.socket.shutdown = traced_shutdown  # type: ignore[method-assign]

    from asyncio import selector_events

    transport = selector_events._SelectorTransport
    for name in ("close", "abort"):
        original = getattr(transport, name)

        def traced(
            self: Any, *, _original: Any = original, _kind: str = f"transport.{name}"
        ) -> Any:
            sock = getattr(self, "_sock", None)
            traced_sock = None if sock is None else _SOCKETS.get(sock)
            if traced_sock is not None:
                traced_sock.calls.append(_call(_kind, not self.is_closing()))
            return _original(self)

        setattr(transport, name, functools.wraps(original)(traced))

    new_connection = _run_base.RunBase._new_connection

    @functools.wraps(new_connection)
    def traced_new_connection(self: Any) -> Any:
        connection = new_connection(self)
        trace = _RUNS.get(self)
        if trace is None:
            trace = _RUNS[self] = RunTrace()
        connection._trace = trace
        return connection

    _run_base.AttemptConnection = TracedConnection  # type: ignore[misc]
    _run_base.RunBase._new_connection = traced_new_connection  # type: ignore[method-assign]


# -- the contexts that may only shut a socket down -------------------------------------------


def _marking(function: Callable[..., Any], label: str) -> Callable[..., Any]:
    @functools.wraps(function)
    def marked(*args: Any, **kwargs: Any) -> Any:
        outer = getattr(_local, "foreign", None)
        _local.foreign = outer or label
        try:
            return function(*args, **kwargs)
        finally:
            _local.foreign = outer

    return marked


def _observe_foreign_contexts() -> None:
    Run.interrupt = _marking(Run.interrupt, "Run.interrupt()")  # type: ignore[method-assign]
    AsyncRun.interrupt = _marking(AsyncRun.interrupt, "AsyncRun.interrupt()")  # type: ignore[method-assign]
    # The loop timer's callback is looked up by name when it is scheduled (call_at).
    _watchdog._check_on_loop = _marking(_watchdog._check_on_loop, "the loop watchdog's timer")

    settle = _async_driver._settle

    @functools.wraps(settle)
    async def traced_settle(awaitable: Any, leaving: BaseException | None) -> Any:
        token = _acting_for.set(_task_name())
        try:
            return await settle(awaitable, leaving)
        finally:
            _acting_for.reset(token)

    _async_driver._settle = traced_settle  # type: ignore[assignment]


# -- clients of route slots -------------------------------------------------------------------


def _register_client(slot: Any, client: Any) -> None:
    traced = ClientTrace(f"{type(client).__name__} #{len(_SLOT_CLIENTS.get(slot, ())) + 1}")
    _CLIENTS[client] = traced
    http = getattr(client, "_client", None)
    if http is not None:
        _CLIENTS[http] = traced
    _SLOT_CLIENTS.setdefault(slot, []).append(traced)


def _observe_clients() -> None:
    slot_class = _clients.ClientSlot
    generation_of = slot_class._generation_of

    # Every client a slot takes in passes here: built on a run's thread, built by the
    # builder thread (a spare), or adopted (check_factories).
    @functools.wraps(generation_of)
    def traced_generation_of(self: Any, client: Any) -> Any:
        generation = generation_of(self, client)
        _register_client(self, client)
        return generation

    slot_class._generation_of = traced_generation_of  # type: ignore[method-assign]

    def async_wrapper(original: Any, kind: str) -> Any:
        @functools.wraps(original)
        async def traced(self: Any) -> Any:
            client = _CLIENTS.get(self)
            if client is not None:
                client.calls.append(_call(kind, _is_open(self)))
            token = _closing_client.set(True)
            try:
                return await original(self)
            finally:
                _closing_client.reset(token)

        return traced

    for module in (anthropic._base_client, openai._base_client):
        module.SyncAPIClient.close = traced_sync_close(module.SyncAPIClient.close, "client.close")  # type: ignore[method-assign]
        module.AsyncAPIClient.close = async_wrapper(module.AsyncAPIClient.close, "client.close")  # type: ignore[method-assign]
    seen: set[type] = set()
    for module in (anthropic._base_client, openai._base_client):
        for wrapper in ("SyncHttpxClientWrapper", "AsyncHttpxClientWrapper"):
            for base in getattr(module, wrapper).__mro__:
                if base.__name__ not in ("Client", "AsyncClient") or base in seen:
                    continue
                seen.add(base)
                if base.__name__ == "Client":
                    base.close = traced_sync_close(base.close, "http.close")
                else:
                    base.aclose = async_wrapper(base.aclose, "http.close")


def install() -> None:
    """Wrap the real functions (once per process; later calls do nothing)."""
    global _installed
    with _install_lock:
        if _installed:
            return
        _observe_sockets()
        _observe_foreign_contexts()
        _observe_clients()
        _installed = True
