"""Benchmark: the same faults against this engine and what users would pick instead.

Not a test: it prints a markdown table. Run from the repository root, in an environment
with the ``bench`` extra (``pip install -e '.[test,bench]'``)::

    python tests/benchmarks/bench_peers.py [--peers engine,sdk,litellm,pydantic-ai]
                                           [--faults silent,pings,...] [--providers ...]

One loopback server runs in this process; each (peer, provider, fault) case runs in a
child interpreter of its own, so a peer that blocks forever cannot hang the benchmark:
the child gets ``--cap`` seconds (30) for its call, then it is killed (by its own PID).
Each child first refuses every socket connection and name lookup that is not for
127.0.0.1 or ::1 (so nothing a peer does at import, cost maps, telemetry, reaches off
the machine); an attempt ends the case as ``OFF-MACHINE`` and the benchmark exits 2.

Every peer gets the same 2 s budget, configured as a competent user would:

- engine: ``StreamEngine`` with ``Timeouts(first_token=2, stale=2)`` and every other
  setting at its default (``RetryPolicy()``: 3 attempts a route, 0.5 s full-jitter
  backoff); the fallback case has a second route.
- sdk: the bare ``anthropic`` / ``openai`` client, ``timeout=Timeout(10, read=2)``
  (connect 10 s as the engine's, read 2 s), ``max_retries=2`` (the SDK default, on).
- litellm: ``litellm.completion(stream=True, timeout=2, stream_timeout=2,
  num_retries=2)``; the fallback case is a ``litellm.Router`` with ``fallbacks``.
- pydantic-ai: ``Agent(AnthropicModel | OpenAIChatModel).run_stream`` with model
  settings ``timeout=2`` and ``first_event_timeout=2`` (SDK retries at their default,
  2); the fallback case is a ``FallbackModel`` of the two.

The columns: the outcome (``completed``; ``completed, wrong text`` when the text is not
the recording's whole answer, cut short or with parts repeated; the exception that
reached the caller; or ``no answer at 30 s``, blocked or still retrying, as the request
count tells), the seconds from the faulty request reaching the server to the answer's
end in the caller (both ``time.monotonic()``, one clock across processes on Linux), the
requests the server saw (``first+second`` for the fallback cases), and the connections
of the case still open at the server half a second after the call returned, with the
client objects still alive (``open (n on a faulted request)``: a faulted one is a socket
the call is stuck on or the peer abandoned without closing).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # the child runs this file as a script
    sys.path.insert(0, str(REPO))

from providers.loopback import (  # noqa: E402
    DropAfterEvents,
    Healthy,
    HttpError,
    LoopbackServer,
    PingsOnly,
    ServerFault,
    StallAfterEvents,
    StallBeforeHeaders,
    recordings,
)

BUDGET = 2.0
"""The stall budget every peer gets: the engine's first_token and stale, the read timeout."""
CAP = 30.0
"""Seconds a child's call may take before the case counts as blocked and the child is killed."""
SETTLE = 0.5
"""Seconds after the call returns before the case's open connections are counted."""
MAX_TOKENS = 64
PROMPT = "Hi"
OTHER = {"anthropic": "openai", "openai": "anthropic"}
ALLOWED_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
OFF_MACHINE_EXIT = 97


@dataclasses.dataclass(frozen=True, kw_only=True)
class FaultCase:
    name: str
    title: str
    first: tuple[ServerFault, ...]
    """What the first (or only) provider does with each request, in order."""
    fallback: bool = False
    """A second provider, the other one, answers healthy: the peer's fallback is measured."""


# Each fault is followed by a healthy answer, so a peer that retries can complete; the
# fallback cases' first provider stalls on every request it gets (100 is more than any
# peer sends within the cap), so only a fallback to the second one answers.
FAULTS: tuple[FaultCase, ...] = (
    FaultCase(
        name="silent",
        title="silent after the first event",
        first=(StallAfterEvents(n=1), Healthy()),
    ),
    FaultCase(
        name="pings",
        title="pings only (keep-alives every 0.5 s)",
        first=(PingsOnly(interval=0.5), Healthy()),
    ),
    FaultCase(
        name="before-headers",
        title="stuck before the headers",
        first=(StallBeforeHeaders(), Healthy()),
    ),
    FaultCase(
        name="drop",
        title="TCP reset mid-stream",
        first=(DropAfterEvents(n=1), Healthy()),
    ),
    FaultCase(
        name="529",
        title="529 overloaded, then healthy",
        first=(HttpError(status=529), Healthy()),
    ),
    FaultCase(
        name="fallback",
        title="first provider silent after the first event, second healthy",
        first=(StallAfterEvents(n=1),) * 100,
        fallback=True,
    ),
    FaultCase(
        name="fallback-before-headers",
        title="first provider stuck before the headers, second healthy",
        first=(StallBeforeHeaders(),) * 100,
        fallback=True,
    ),
)

PEERS = ("engine", "sdk", "litellm", "pydantic-ai")
PEER_TITLES = {
    "engine": "this engine (defaults, 2 s budgets)",
    "sdk": "bare SDK",
    "litellm": "LiteLLM `completion` / `Router`",
    "pydantic-ai": "pydantic-ai `Agent` / `FallbackModel`",
}
PROVIDERS = ("anthropic", "openai")


# ---------------------------------------------------------------- the child's guard


def guard_sockets() -> None:
    """Refuse, loudly, any connection or name lookup that would leave the machine.

    Installed before any peer is imported: LiteLLM fetches a model cost map at import
    unless told not to and may send telemetry; logfire and genai-prices could too. An
    attempt is reported on stderr and ends the child at once with OFF_MACHINE_EXIT, so it
    cannot be swallowed by a library's ``except Exception``.
    """

    def refuse(what: str) -> None:
        sys.stderr.write(f"OFF-MACHINE {what}\n")
        sys.stderr.flush()
        os._exit(OFF_MACHINE_EXIT)

    def host_of(address: Any) -> str | None:
        if isinstance(address, tuple) and address:
            return str(address[0])
        return None

    original_connect = socket.socket.connect
    original_connect_ex = socket.socket.connect_ex
    original_sendto = socket.socket.sendto
    original_getaddrinfo = socket.getaddrinfo

    def check(sock: socket.socket, address: Any, what: str) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            host = host_of(address)
            if host not in ALLOWED_HOSTS:
                refuse(f"{what} to {address!r}")

    def connect(self: socket.socket, address: Any) -> None:
        check(self, address, "connect")
        original_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        check(self, address, "connect")
        return original_connect_ex(self, address)

    def sendto(self: socket.socket, *args: Any) -> int:
        check(self, args[-1], "sendto")
        return original_sendto(self, *args)  # type: ignore[arg-type]

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name is not None and name not in ALLOWED_HOSTS:
            refuse(f"name lookup of {name!r}")
        return original_getaddrinfo(host, *args, **kwargs)

    socket.socket.connect = connect  # type: ignore[method-assign]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]
    socket.socket.sendto = sendto  # type: ignore[assignment]
    socket.getaddrinfo = getaddrinfo


def quiet_peers() -> None:
    """What keeps the peers local and silent: set before they are imported."""
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    os.environ["LITELLM_TELEMETRY"] = "False"
    os.environ["LITELLM_LOG"] = "ERROR"
    os.environ["LOGFIRE_SEND_TO_LOGFIRE"] = "false"
    os.environ["OTEL_SDK_DISABLED"] = "true"
    for name in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "ANTHROPIC_BASE_URL", "OPENAI_BASE_URL"):
        os.environ.pop(name, None)


# ---------------------------------------------------------------- the peers' calls


@dataclasses.dataclass(frozen=True, kw_only=True)
class Target:
    """Where one case's requests go: the server and the model names its script keys on."""

    url: str
    provider: str
    model: str
    """The first provider's model name, the server's script key for it."""
    second_model: str | None
    """The other provider's model (the healthy fallback), when the case has one."""
    budget: float = BUDGET

    def base_url(self, provider: str) -> str:
        return self.url + ("/v1" if provider == "openai" else "")

    def second_provider(self) -> str:
        return OTHER[self.provider]


KEEP: list[Any] = []
"""Every client a case built, held until the child exits: the connections it leaves
open are counted while its objects are alive, as in a long-running service."""


def run_engine(target: Target) -> str:
    import anthropic
    import openai

    from lifecycle import StreamEngine, Timeouts
    from providers import AnthropicMessages, OpenAIChatCompletions

    def route(provider: str, model: str) -> Any:
        url = target.base_url(provider)
        if provider == "anthropic":
            return AnthropicMessages(
                lambda: anthropic.Anthropic(base_url=url, api_key="bench"), model=model
            )
        return OpenAIChatCompletions(
            lambda: openai.OpenAI(base_url=url, api_key="bench"), model=model
        )

    routes = [route(target.provider, target.model)]
    if target.second_model is not None:
        routes.append(route(target.second_provider(), target.second_model))
    budgets = Timeouts(first_token=target.budget, stale=target.budget)
    engine = StreamEngine(routes=routes, timeouts=budgets)
    KEEP.append(engine)
    with engine.stream(
        messages=[{"role": "user", "content": PROMPT}], max_tokens=MAX_TOKENS
    ) as run:
        for _event in run:
            pass
    return run.message.text


def run_sdk(target: Target) -> str:
    if target.second_model is not None:
        raise NotApplicable("the SDK has no fallback to another provider")
    if target.provider == "anthropic":
        import anthropic

        client = anthropic.Anthropic(
            base_url=target.base_url("anthropic"),
            api_key="bench",
            timeout=anthropic.Timeout(10.0, read=target.budget),
            max_retries=2,
        )
        KEEP.append(client)
        with client.messages.stream(
            model=target.model,
            max_tokens=MAX_TOKENS,
            messages=[{"role": "user", "content": PROMPT}],
        ) as stream:
            return "".join(stream.text_stream)
    import openai

    oclient = openai.OpenAI(
        base_url=target.base_url("openai"),
        api_key="bench",
        timeout=openai.Timeout(10.0, read=target.budget),
        max_retries=2,
    )
    KEEP.append(oclient)
    chunks = oclient.chat.completions.create(
        model=target.model,
        max_tokens=MAX_TOKENS,
        messages=[{"role": "user", "content": PROMPT}],
        stream=True,
    )
    KEEP.append(chunks)
    return "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)


def litellm_params(target: Target, provider: str, model: str) -> dict[str, Any]:
    return {
        "model": f"{provider}/{model}",
        "api_base": target.base_url(provider),
        "api_key": "bench",
        "timeout": target.budget,
        "stream_timeout": target.budget,
    }


def run_litellm(target: Target) -> str:
    import litellm

    litellm.telemetry = False
    litellm.callbacks = []
    litellm.success_callback = []
    litellm.failure_callback = []
    litellm.suppress_debug_info = True
    messages = [{"role": "user", "content": PROMPT}]
    if target.second_model is None:
        response = litellm.completion(
            **litellm_params(target, target.provider, target.model),
            messages=messages,
            max_tokens=MAX_TOKENS,
            stream=True,
            num_retries=2,
        )
    else:
        router = litellm.Router(
            model_list=[
                {
                    "model_name": "primary",
                    "litellm_params": litellm_params(target, target.provider, target.model),
                },
                {
                    "model_name": "secondary",
                    "litellm_params": litellm_params(
                        target, target.second_provider(), target.second_model
                    ),
                },
            ],
            fallbacks=[{"primary": ["secondary"]}],
            num_retries=2,
            timeout=target.budget,
            stream_timeout=target.budget,
        )
        KEEP.append(router)
        response = router.completion(
            model="primary", messages=messages, max_tokens=MAX_TOKENS, stream=True
        )
    KEEP.append(response)
    return "".join(chunk.choices[0].delta.content or "" for chunk in response if chunk.choices)


def run_pydantic_ai(target: Target) -> str:
    import asyncio

    from pydantic_ai import Agent
    from pydantic_ai.models.anthropic import AnthropicModel
    from pydantic_ai.models.fallback import FallbackModel
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.anthropic import AnthropicProvider
    from pydantic_ai.providers.openai import OpenAIProvider

    def model_for(provider: str, name: str) -> Any:
        if provider == "anthropic":
            return AnthropicModel(
                name,
                provider=AnthropicProvider(base_url=target.base_url(provider), api_key="bench"),
            )
        return OpenAIChatModel(
            name, provider=OpenAIProvider(base_url=target.base_url(provider), api_key="bench")
        )

    model = model_for(target.provider, target.model)
    if target.second_model is not None:
        model = FallbackModel(model, model_for(target.second_provider(), target.second_model))
    agent = Agent(model)
    KEEP.append(agent)

    async def main() -> str:
        parts: list[str] = []
        async with agent.run_stream(
            PROMPT,
            model_settings={
                "max_tokens": MAX_TOKENS,
                "timeout": target.budget,
                "first_event_timeout": target.budget,
            },
        ) as result:
            async for delta in result.stream_text(delta=True, debounce_by=None):
                parts.append(delta)
        return "".join(parts)

    # One loop for the child's life: its clients stay bound to it, open, until exit.
    loop = asyncio.new_event_loop()
    KEEP.append(loop)
    return loop.run_until_complete(main())


class NotApplicable(Exception):
    """The peer has no way to express this case (the bare SDK and a fallback)."""


RUNNERS: dict[str, Callable[[Target], str]] = {
    "engine": run_engine,
    "sdk": run_sdk,
    "litellm": run_litellm,
    "pydantic-ai": run_pydantic_ai,
}
PEER_MODULES = {"engine": None, "sdk": None, "litellm": "litellm", "pydantic-ai": "pydantic_ai"}


def peer_versions() -> dict[str, str | None]:
    """The installed versions (None: not installed), read without importing the peers."""
    from importlib import metadata

    versions: dict[str, str | None] = {}
    for dist in ("anthropic", "openai", "httpx2", "httpx", "litellm", "pydantic-ai-slim"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return versions


def child_main(args: argparse.Namespace) -> int:
    """One case: print a ready line, make the call, print the result line, wait for EOF."""
    guard_sockets()
    quiet_peers()
    target = Target(
        url=args.url,
        provider=args.provider,
        model=args.model,
        second_model=args.second_model,
        budget=args.budget,
    )
    runner = RUNNERS[args.peer]
    module = PEER_MODULES[args.peer]
    if module is not None:
        __import__(module)  # the import's seconds are not the call's
    print(json.dumps({"ready": time.monotonic()}), flush=True)
    result: dict[str, Any] = {}
    try:
        result["text"] = runner(target)
        result["outcome"] = "completed"
    except NotApplicable as exc:
        result["outcome"] = "n/a"
        result["error"] = str(exc)
    except BaseException as exc:  # what reached the caller is the measurement
        result["outcome"] = "raised"
        result["error"] = f"{type(exc).__module__}.{type(exc).__qualname__}"
        result["message"] = str(exc).splitlines()[0][:160] if str(exc) else ""
    result["done_at"] = time.monotonic()
    print(json.dumps(result), flush=True)
    sys.stdin.read()  # the parent counts connections, then closes our stdin
    sys.stdout.flush()
    os._exit(0)  # peers' non-daemon worker threads must not keep the child alive


# ---------------------------------------------------------------- the parent


@dataclasses.dataclass(frozen=True, kw_only=True)
class CaseResult:
    peer: str
    provider: str
    fault: str
    outcome: str
    seconds: float | None
    requests: str
    open_connections: int | None
    open_on_faulted: int | None
    detail: str = ""
    off_machine: bool = False


def expected_text(provider: str) -> str:
    return recordings.load(provider, "text_basic").text()  # type: ignore[arg-type]


def run_case(
    server: LoopbackServer,
    peer: str,
    provider: str,
    case: FaultCase,
    *,
    cap: float = CAP,
    budget: float = BUDGET,
    settle: float = SETTLE,
    python: str = sys.executable,
) -> CaseResult:
    """Run one (peer, provider, fault) in a child interpreter; kill it at ``cap``."""
    tag = f"{peer}-{provider}-{case.name}-{time.monotonic_ns()}"
    model = f"{'claude' if provider == 'anthropic' else 'gpt'}-bench-{tag}"
    second = OTHER[provider]
    second_model = (
        f"{'claude' if second == 'anthropic' else 'gpt'}-bench-{tag}-second"
        if case.fallback
        else None
    )
    server.script(model, case.first)
    if second_model is not None:
        server.script(second_model, [Healthy()])
    argv = [
        python,
        str(Path(__file__).resolve()),
        "--child",
        peer,
        "--url",
        server.url,
        "--provider",
        provider,
        "--model",
        model,
        "--budget",
        str(budget),
    ]
    if second_model is not None:
        argv += ["--second-model", second_model]
    # stderr to a file, not a pipe: a chatty peer must not block on a full pipe.
    with tempfile.TemporaryFile() as errors:
        child = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errors,
            cwd=str(REPO),
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        result: dict[str, Any] | None = None
        blocked = False
        lines = LineReader(child)
        try:
            ready = lines.next(timeout=120.0)
            if ready is not None and "ready" in ready:
                result = lines.next(timeout=cap)
                blocked = result is None and child.poll() is None
            time.sleep(settle)
            counted = count_connections(server, model, second_model)
        finally:
            stop_child(child)
        errors.seek(0)
        stderr = errors.read().decode(errors="replace")
    first_requests = [r for r in server.requests if r.model == model]
    second_requests = [r for r in server.requests if second_model and r.model == second_model]
    requests = f"{len(first_requests)}" + (f"+{len(second_requests)}" if case.fallback else "")
    off_machine = child.returncode == OFF_MACHINE_EXIT or "OFF-MACHINE" in stderr
    if off_machine:
        line = next(s for s in stderr.splitlines() if "OFF-MACHINE" in s)
        return CaseResult(
            peer=peer,
            provider=provider,
            fault=case.name,
            outcome="OFF-MACHINE",
            seconds=None,
            requests=requests,
            open_connections=None,
            open_on_faulted=None,
            detail=line,
            off_machine=True,
        )
    fault_at = next(
        (r.received_at for r in first_requests if not isinstance(r.fault, Healthy)), None
    )
    seconds: float | None = None
    detail = ""
    if blocked:
        outcome = f"no answer at {cap:g} s"
    elif result is None:
        outcome = "child died"
        detail = stderr.strip().splitlines()[-1] if stderr.strip() else f"rc {child.returncode}"
    elif result["outcome"] == "completed":
        text = result["text"]
        whole = {expected_text(provider)} | ({expected_text(second)} if case.fallback else set())
        outcome = "completed" if text in whole else "completed, wrong text"
        if outcome != "completed":
            detail = f"text {text!r}"
        if fault_at is not None:
            seconds = result["done_at"] - fault_at
    elif result["outcome"] == "n/a":
        outcome = "n/a"
        detail = result["error"]
    else:
        outcome = result["error"].rsplit(".", 1)[-1]
        detail = f"{result['error']}: {result['message']}"
        if fault_at is not None:
            seconds = result["done_at"] - fault_at
    open_total, open_faulted = counted
    return CaseResult(
        peer=peer,
        provider=provider,
        fault=case.name,
        outcome=outcome,
        seconds=seconds,
        requests=requests,
        open_connections=open_total,
        open_on_faulted=open_faulted,
        detail=detail,
    )


class LineReader:
    """The child's JSON lines, read from its stdout's file descriptor with a deadline.

    Not through the file object's readline: that buffers ahead, so a second line that
    arrived with the first would sit in the buffer while select() waits on the empty
    descriptor, and a case that answered at once would count as blocked.
    """

    def __init__(self, child: subprocess.Popen[bytes]) -> None:
        assert child.stdout is not None
        self._fd = child.stdout.fileno()
        self._buffer = b""

    def next(self, *, timeout: float) -> dict[str, Any] | None:
        """The next JSON object line, or None at EOF or when none came within ``timeout``."""
        import selectors

        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(self._fd, selectors.EVENT_READ)
            while True:
                line, newline, rest = self._buffer.partition(b"\n")
                if newline:
                    self._buffer = rest
                    try:
                        parsed = json.loads(line)
                    except ValueError:
                        continue  # a peer printed to stdout; not ours
                    if isinstance(parsed, dict):
                        return parsed
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not selector.select(remaining):
                    return None
                chunk = os.read(self._fd, 65536)
                if not chunk:
                    return None  # the child exited
                self._buffer += chunk


def count_connections(
    server: LoopbackServer, model: str, second_model: str | None
) -> tuple[int, int]:
    """The case's connections still open, and how many of them last carried a fault."""
    keys = {model, second_model} - {None}
    requests = {r.index: r for r in server.requests}
    open_total = open_faulted = 0
    for conn in server.connection_log:
        if conn.closed_at is not None or not keys.intersection(conn.keys):
            continue
        open_total += 1
        last = requests.get(conn.request_indexes[-1]) if conn.request_indexes else None
        if last is not None and not isinstance(last.fault, Healthy):
            open_faulted += 1
    return open_total, open_faulted


def stop_child(child: subprocess.Popen[bytes]) -> None:
    """Let the child exit (close its stdin); kill it, by its own PID, if it does not."""
    if child.stdin is not None:
        with contextlib.suppress(BrokenPipeError):
            child.stdin.close()
    try:
        child.wait(timeout=5.0)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait(timeout=5.0)


def format_cell(result: CaseResult) -> str:
    if result.outcome == "n/a":
        return "n/a"
    seconds = f"{result.seconds:.2f} s" if result.seconds is not None else "-"
    left = "?" if result.open_connections is None else str(result.open_connections)
    if result.open_on_faulted:
        left += f" ({result.open_on_faulted} on a faulted request)"
    return f"{result.outcome}, {seconds}, {result.requests} req, {left} open"


def markdown_table(results: Sequence[CaseResult], cases: Sequence[FaultCase]) -> str:
    """One row per (peer, provider), one column per fault."""
    by_key = {(r.peer, r.provider, r.fault): r for r in results}
    rows = sorted(
        {(r.peer, r.provider) for r in results},
        key=lambda pp: (PEERS.index(pp[0]), PROVIDERS.index(pp[1])),
    )
    header = ["peer", "provider", *(case.title for case in cases)]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    for peer, provider in rows:
        cells = [PEER_TITLES[peer], provider]
        for case in cases:
            found = by_key.get((peer, provider, case.name))
            cells.append(format_cell(found) if found else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def warm_up(server: LoopbackServer) -> None:
    """One healthy request per provider before the first case.

    The server loads its recordings and request schemas on first use; on a busy machine
    that first answer can take longer than the 2 s budget, which would charge the
    server's start-up to whichever peer ran first.
    """
    import anthropic
    import openai

    with anthropic.Anthropic(base_url=server.url, api_key="bench") as client:
        client.messages.create(
            model="warm-up", max_tokens=MAX_TOKENS, messages=[{"role": "user", "content": PROMPT}]
        )
    with openai.OpenAI(base_url=server.url + "/v1", api_key="bench") as oclient:
        oclient.chat.completions.create(
            model="warm-up", max_tokens=MAX_TOKENS, messages=[{"role": "user", "content": PROMPT}]
        )


def available_peers(requested: Sequence[str]) -> tuple[list[str], list[str]]:
    """The requested peers that are installed, and a line for each left out and why."""
    versions = peer_versions()
    chosen: list[str] = []
    left_out: list[str] = []
    for peer in requested:
        dist = {"litellm": "litellm", "pydantic-ai": "pydantic-ai-slim"}.get(peer)
        if dist is not None and versions[dist] is None:
            left_out.append(
                f"{peer}: not installed (pip install -e '.[bench]'; LiteLLM is pinned to a "
                "release from before its PyPI compromises, see pyproject.toml)"
            )
            continue
        chosen.append(peer)
    return chosen, left_out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--peers", default=",".join(PEERS))
    parser.add_argument("--providers", default=",".join(PROVIDERS))
    parser.add_argument("--faults", default=",".join(case.name for case in FAULTS))
    parser.add_argument("--cap", type=float, default=CAP)
    parser.add_argument(
        "--budget", type=float, default=BUDGET, help="every peer's stall budget (default: 2 s)"
    )
    parser.add_argument("--child", choices=PEERS, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--provider", choices=PROVIDERS, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--second-model", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        args.peer = args.child
        return child_main(args)
    requested = [p for p in args.peers.split(",") if p]
    unknown = set(requested) - set(PEERS)
    if unknown:
        parser.error(f"unknown peers {sorted(unknown)}; known: {', '.join(PEERS)}")
    names = [f for f in args.faults.split(",") if f]
    cases = [case for case in FAULTS if case.name in names]
    providers = [p for p in args.providers.split(",") if p in PROVIDERS]
    peers, left_out = available_peers(requested)
    versions = peer_versions()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"{platform.python_implementation()} {platform.python_version()}; "
        + ", ".join(f"{name} {version}" for name, version in versions.items() if version),
        flush=True,
    )
    for line in left_out:
        print(f"left out: {line}", flush=True)
    results: list[CaseResult] = []
    total = len(peers) * len(providers) * len(cases)
    started = time.monotonic()
    with LoopbackServer() as server:
        warm_up(server)
        for peer in peers:
            for provider in providers:
                for case in cases:
                    label = f"[{len(results) + 1:>2}/{total}] {peer} {provider} {case.name}"
                    print(f"{label} ...", end=" ", file=sys.stderr, flush=True)
                    result = run_case(
                        server, peer, provider, case, cap=args.cap, budget=args.budget
                    )
                    results.append(result)
                    print(
                        f"{format_cell(result)} ({time.monotonic() - started:.0f} s in)"
                        + (f"\n      {result.detail}" if result.detail else ""),
                        file=sys.stderr,
                        flush=True,
                    )
                    server.wait_idle(5.0)
    print()
    print(markdown_table(results, cases))
    details = [r for r in results if r.detail and r.outcome != "n/a"]
    if details:
        print("\nexceptions and wrong answers:")
        for r in details:
            print(f"- {r.peer} {r.provider} {r.fault}: {r.detail}")
    if any(r.off_machine for r in results):
        print("\nFAILED: a peer tried to reach off the machine (see above)")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
