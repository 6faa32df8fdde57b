"""The ``lifecycle`` command as a user meets it: run as a real subprocess.

Speed is not asserted here (the house rule: speed targets are checked by
``tests/benchmarks/bench_cli.py``, which prints the figures). What keeps the CLI fast is
asserted instead: ``--help`` and ``import providers.cli`` import neither SDK.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest
from conftest import unique_model

from providers.cli import build_parser
from providers.loopback import Healthy, LoopbackServer, StallAfterEvents

ROOT = Path(__file__).resolve().parent.parent
SDKS = ("anthropic", "openai")
BASE_URL_ENV = {"anthropic": "ANTHROPIC_BASE_URL", "openai": "OPENAI_BASE_URL"}
KEY_ENV = {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY"}
ENDPOINT = {"anthropic": "/v1/messages", "openai": "/v1/chat/completions"}


def _env(**extra: str) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in (*BASE_URL_ENV.values(), *KEY_ENV.values())
    }
    env.update(extra)
    return env


def _python(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env if env is not None else _env(),
    )


def _sdk_modules_after(code: str) -> list[str]:
    """The SDK modules loaded in a fresh interpreter after running ``code``."""
    probe = (
        "import sys, json\n"
        f"{code}\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('anthropic', 'openai'))\n"
        "print(json.dumps(loaded), file=sys.stderr)\n"
    )
    result = _python("-c", probe)
    assert result.returncode == 0, result.stderr
    loaded: list[str] = json.loads(result.stderr.strip().splitlines()[-1])
    return loaded


# ----------------------------------------------------------------- import cost


@pytest.mark.parametrize("module", ["providers", "providers.cli", "providers.loopback"])
def test_importing_the_cli_and_the_loopback_imports_no_sdk(module: str) -> None:
    assert _sdk_modules_after(f"import {module}") == []


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["--version"],
        *([command, "--help"] for command in ("demo", "report", "run", "serve", "diagram")),
    ],
    ids=lambda argv: " ".join(argv),
)
def test_help_and_version_import_no_sdk(argv: list[str]) -> None:
    code = (
        "from providers.cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit as exc:\n"
        "    assert exc.code == 0, exc.code\n"
    )
    assert _sdk_modules_after(code) == []


def test_the_adapters_still_import_from_providers() -> None:
    import providers
    from providers import AnthropicMessages, OpenAIChatCompletions, OpenAIResponses
    from providers.anthropic_messages import AnthropicMessages as Direct

    assert AnthropicMessages is Direct
    assert OpenAIChatCompletions.api_mode == "chat_completions"
    assert OpenAIResponses.api_mode == "responses"
    assert set(providers.__all__) <= set(dir(providers))
    with pytest.raises(AttributeError, match="NoSuchRoute"):
        _ = providers.NoSuchRoute  # type: ignore[attr-defined]


def test_lifecycle_never_imports_providers_not_even_its_main_module() -> None:
    result = _python(
        "-c",
        "import sys, lifecycle, lifecycle.__main__\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'providers'))",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# ----------------------------------------------------------------- version, -m


def test_version_comes_from_the_installed_distribution() -> None:
    installed = metadata.version("stream-lifecycle")
    for entry in (["-m", "lifecycle"], ["-m", "providers.cli"]):
        result = _python(*entry, "--version")
        assert result.returncode == 0, result.stderr
        assert result.stdout == f"lifecycle {installed}\n"
    result = _python("-c", "import lifecycle; print(lifecycle.__version__)")
    assert result.stdout.strip() == installed


def test_python_dash_m_lifecycle_is_the_cli() -> None:
    result = _python("-m", "lifecycle", "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: lifecycle ")
    for command in ("demo", "report", "run", "serve"):
        assert command in result.stdout
    bad = _python("-m", "lifecycle", "no-such-command")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


# ----------------------------------------------------------------- help text


def _actions(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.Action]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                yield (*path, choice.dest), choice
            for name, sub in action.choices.items():
                yield from _actions(sub, (*path, name))
        else:
            yield path, action


def test_every_option_of_every_subcommand_has_help() -> None:
    missing = [
        f"{' '.join(path) or 'lifecycle'} {'/'.join(action.option_strings) or action.dest}"
        for path, action in _actions(build_parser())
        if not action.help or action.help == argparse.SUPPRESS
    ]
    assert missing == []


def test_diagram_is_documented_as_a_maintainers_command() -> None:
    result = _python("-m", "providers.cli", "--help")
    line = next(line for line in result.stdout.splitlines() if line.strip().startswith("diagram"))
    assert "maintainer" in line
    sub = _python("-m", "providers.cli", "diagram", "--help")
    assert "maintainer" in sub.stdout


# ----------------------------------------------------------------- lifecycle run


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.mark.parametrize("provider", SDKS)
def test_run_calls_a_refused_connection_refused_and_names_the_url(provider: str) -> None:
    port = _closed_port()
    base = f"http://127.0.0.1:{port}" + ("/v1" if provider == "openai" else "")
    result = _python(
        "-m",
        "providers.cli",
        "run",
        "--provider",
        provider,
        "--model",
        "m",
        "hi",
        env=_env(**{KEY_ENV[provider]: "test", BASE_URL_ENV[provider]: base}),
    )
    assert result.returncode == 1, result.stderr
    final = result.stderr.strip().splitlines()[-1]
    assert "refused" in final, result.stderr
    assert f"http://127.0.0.1:{port}{ENDPOINT[provider]}" in final, result.stderr


def test_a_refused_url_is_named_without_its_query_or_credentials() -> None:
    import openai

    from providers import OpenAIChatCompletions

    # The HTTP library this SDK major runs on (httpx or httpx2), as its client holds it.
    with openai.OpenAI(api_key="k", base_url="http://127.0.0.1:9") as client:
        roots = [cls.__module__.split(".")[0] for cls in type(client._client).__mro__]
    httpx = sys.modules[next(root for root in roots if root in ("httpx", "httpx2"))]

    request = httpx.Request("POST", "http://user:pw@127.0.0.1:9/v1/chat/completions?key=s3cr3t")
    refused = httpx.ConnectError("[Errno 111] Connection refused", request=request)
    sdk_error = openai.APIConnectionError(request=request)
    sdk_error.__cause__ = refused
    route = OpenAIChatCompletions(openai.OpenAI, model="m")
    for exc in (refused, sdk_error):
        reason = route.classify(exc).reason
        assert reason.startswith("connection refused: POST http://127.0.0.1:9/v1/chat/completions")
        assert "s3cr3t" not in reason and "pw" not in reason
    reset = httpx.ReadError("[Errno 104] Connection reset by peer", request=request)
    assert route.classify(reset).reason.startswith("connection lost: ReadError")


@pytest.mark.parametrize("provider", SDKS)
def test_run_output_is_single_spaced_with_rounded_times(
    server: LoopbackServer, provider: str
) -> None:
    model = unique_model(provider)
    # A stall after the first text forces a restart, so notes interleave with text.
    server.script(model, [StallAfterEvents(n=1), Healthy()])
    base = server.anthropic_base_url if provider == "anthropic" else server.openai_base_url
    result = _python(
        "-m",
        "providers.cli",
        "run",
        "--provider",
        provider,
        "--model",
        model,
        "--stale",
        "0.5",
        "--first-token",
        "10",
        "hi",
        env=_env(**{KEY_ENV[provider]: "test", BASE_URL_ENV[provider]: base}),
    )
    assert result.returncode == 0, result.stderr
    assert "restart" in result.stdout + result.stderr
    assert "streaming -> stale" in result.stderr
    for stream in (result.stdout, result.stderr):
        assert "\n\n" not in stream, stream
        assert not stream.startswith("\n"), stream
    decimals = re.findall(r"\d+\.(\d+)", result.stderr.replace("127.0.0.1", ""))
    assert decimals and all(len(digits) <= 3 for digits in decimals), result.stderr
    summary = [line for line in result.stderr.splitlines() if line.startswith("attempt ")]
    assert len(summary) == 2, result.stderr


# ----------------------------------------------------------------- lifecycle serve


class _Served:
    """``lifecycle serve`` in a subprocess of this test: its printed URLs, and its end."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "providers.cli", "serve", "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=_env(),
        )
        assert self.proc.stdout is not None
        self.banner: dict[str, str] = {}
        try:
            for line in self.proc.stdout:
                name, sep, value = line.strip().partition("=")
                if sep:
                    self.banner[name] = value
                if line.startswith("control:"):
                    break
            assert "OPENAI_BASE_URL" in self.banner, self.banner
        except BaseException:
            self.stop()
            raise

    def json(self, path: str, body: object = None) -> tuple[int, object]:
        import urllib.error
        import urllib.request

        url = self.banner["ANTHROPIC_BASE_URL"] + path
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, method="POST" if data else "GET")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            with error:
                return error.code, json.loads(error.read())

    def stop(self) -> int:
        self.proc.terminate()
        try:
            return self.proc.wait(timeout=10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            for pipe in (self.proc.stdout, self.proc.stderr):
                if pipe is not None:
                    pipe.close()


def test_serve_prints_each_sdks_base_url_and_replays_scripted_faults_to_the_sdks() -> None:
    import anthropic
    import openai

    served = _Served("--script", "http:529,stall_after:1", "--script-for", "gpt-keyed", "http:404")
    try:
        anthropic_url = served.banner["ANTHROPIC_BASE_URL"]
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", anthropic_url)
        assert served.banner["OPENAI_BASE_URL"] == anthropic_url + "/v1"
        messages = [{"role": "user", "content": "Hi"}]

        # The default script: the first request of any SDK gets the 529...
        claude = anthropic.Anthropic(base_url=anthropic_url, api_key="test", max_retries=0)
        with pytest.raises(anthropic.APIStatusError) as overloaded:
            claude.messages.create(model="claude-x", max_tokens=8, messages=messages)
        assert overloaded.value.status_code == 529
        # ...the second stalls after its first event.
        gpt = openai.OpenAI(
            base_url=served.banner["OPENAI_BASE_URL"], api_key="test", max_retries=0, timeout=1.0
        )
        roots = [cls.__module__.split(".")[0] for cls in type(gpt._client).__mro__]
        httpx = sys.modules[next(root for root in roots if root in ("httpx", "httpx2"))]
        chunks = []
        # A read timeout while iterating: openai 3.x wraps it, earlier majors let the HTTP
        # library's own exception through.
        with pytest.raises((openai.APITimeoutError, httpx.ReadTimeout)):
            for chunk in gpt.chat.completions.create(model="gpt-x", messages=messages, stream=True):
                chunks.append(chunk)
        assert any(chunk.choices and chunk.choices[0].delta.content for chunk in chunks)

        # A script set over HTTP, for a key the SDK sends in the x-loopback-key header.
        status, reply = served.json(
            "/_loopback/script", {"key": "agent-1", "script": ["http:503", "healthy"]}
        )
        assert (status, reply) == (200, {"key": "agent-1", "pending": ["http:503", "healthy"]})
        keyed = gpt.with_options(default_headers={"x-loopback-key": "agent-1"})
        with pytest.raises(openai.APIStatusError) as unavailable:
            keyed.chat.completions.create(model="gpt-x", messages=messages)
        assert unavailable.value.status_code == 503
        answer = keyed.chat.completions.create(model="gpt-x", messages=messages)
        assert answer.choices[0].message.content
        # --script-for: a model name is a key too.
        with pytest.raises(openai.NotFoundError):
            gpt.chat.completions.create(model="gpt-keyed", messages=messages)

        claude.close()
        gpt.close()
        stats: object = None
        for _ in range(50):  # another process: its counters can only be polled
            _, stats = served.json("/_loopback/stats")
            if isinstance(stats, dict) and stats["open"] == 0:
                break
            time.sleep(0.1)
        assert isinstance(stats, dict)
        assert stats["requests"] == 5
        assert stats["open"] == 0 and stats["opened"] == stats["closed"] >= 2
    finally:
        assert served.stop() == 0


def test_serve_refuses_a_body_the_api_would_refuse_unless_told_not_to_validate() -> None:
    chat_history_sent_to_anthropic = {
        "model": "claude-x",
        "max_tokens": 8,
        "messages": [{"role": "user", "content": "Hi"}, {"role": "tool", "content": "x"}],
    }
    for option, status in ((), 400), (("--no-validate",), 200):
        served = _Served(*option)
        try:
            answered, reply = served.json("/v1/messages", chat_history_sent_to_anthropic)
        finally:
            assert served.stop() == 0
        assert answered == status, reply
        if status == 400:
            assert isinstance(reply, dict) and reply["error"]["type"] == "invalid_request_error"
            assert "messages.1.role: 'tool' is not one of" in reply["error"]["message"]


@pytest.mark.parametrize(
    ("option", "says"),
    [
        (["--script", "stal_after:1"], "unknown fault"),
        (["--script", "http:700"], "200..599"),
        (["--script-for", "k1", "pings:-1"], "k1: 'pings:-1': interval must be > 0"),
    ],
)
def test_serve_refuses_a_bad_script_as_a_usage_error(option: list[str], says: str) -> None:
    result = _python("-m", "providers.cli", "serve", "--port", "0", *option)
    assert result.returncode == 2
    assert "usage: lifecycle serve" in result.stderr and says in result.stderr
