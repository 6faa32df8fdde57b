"""The ``lifecycle`` command: ``demo``, ``report``, ``run``, ``serve``, ``diagram``.

It lives in ``providers`` because it wires the provider-neutral engine to real
adapters; ``lifecycle`` itself never imports ``providers``.

Only argparse is imported up front: each command imports what it needs when it runs,
so ``--help``, ``--version`` and ``serve`` never pay for the SDKs (seconds each).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..loopback import ServerFault

__all__ = ["build_parser", "main"]

DISTRIBUTION = "stream-lifecycle"


class _VersionAction(argparse.Action):
    """``--version``, read from the installed distribution only when asked for
    (importlib.metadata would cost every ``--help`` tens of milliseconds)."""

    def __init__(self, option_strings: Sequence[str], dest: str, help: str) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        from importlib.metadata import version

        print(f"{parser.prog} {version(DISTRIBUTION)}")
        parser.exit()


def _script(text: str) -> tuple[ServerFault, ...]:
    """A ``--script`` value, parsed while the arguments are, so a bad one is a usage error."""
    from ..loopback import ScriptError, parse_script

    try:
        return parse_script(text)
    except ScriptError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


class _KeyedScriptAction(argparse.Action):
    """``--script-for KEY SCRIPT``, repeatable: a list of (key, faults)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        key, text = values
        try:
            faults = _script(text)
        except argparse.ArgumentTypeError as exc:
            raise argparse.ArgumentError(self, f"{key}: {exc}") from None
        setattr(namespace, self.dest, [*getattr(namespace, self.dest, []), (key, faults)])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lifecycle",
        description="A state-machine-driven lifecycle engine for LLM streaming calls.",
        epilog="`lifecycle diagram` is for maintainers of stream-lifecycle itself.",
    )
    parser.add_argument(
        "--version", action=_VersionAction, help="print the installed version and exit"
    )
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", help="the command to run"
    )

    demo = commands.add_parser(
        "demo", help="run the real SDKs through a gallery of faults on a loopback server"
    )
    demo.add_argument(
        "--diagrams",
        default="demo-diagrams",
        help="folder for one per-run diagram per scenario (default: %(default)s)",
    )
    demo.add_argument(
        "--stale",
        type=float,
        default=0.5,
        help="seconds without progress before a stream counts as stalled, also used as the "
        "first-token deadline (default: %(default)s)",
    )
    demo.add_argument(
        "--record",
        metavar="FILE",
        default=None,
        help="record every run and breaker change as JSON lines (see `lifecycle report`)",
    )
    demo.add_argument(
        "--concurrent",
        action="store_true",
        help="run the scenarios at once, plus a burst of runs that opens a route's breaker",
    )
    demo.add_argument(
        "--watch",
        action="store_true",
        help="show the runs in flight and the breakers live (implies --concurrent)",
    )

    report = commands.add_parser(
        "report", help="summarize a recording made with --record or lifecycle.record"
    )
    report.add_argument("file", metavar="FILE", help="the JSON-lines recording")
    report.add_argument(
        "--diagrams", metavar="DIR", default=None, help="write one Mermaid diagram per run here"
    )

    run = commands.add_parser(
        "run",
        help="stream from a real provider with the same lifecycle",
        description="Stream one answer from a real provider with the same lifecycle as the "
        "demo. The key comes from ANTHROPIC_API_KEY or OPENAI_API_KEY; the SDKs also "
        "honour ANTHROPIC_BASE_URL and OPENAI_BASE_URL (e.g. a `lifecycle serve` server).",
    )
    run.add_argument(
        "--provider",
        choices=("anthropic", "openai"),
        required=True,
        help="which SDK and wire API: Anthropic Messages or OpenAI Chat Completions",
    )
    run.add_argument("--model", required=True, help="the provider's model name")
    run.add_argument(
        "--max-tokens",
        type=int,
        default=1024,
        help="the answer's token limit (default: %(default)s)",
    )
    run.add_argument(
        "--stale",
        type=float,
        default=60.0,
        help="seconds without progress after the first token before the stream counts as "
        "stalled and is retried (default: %(default)s)",
    )
    run.add_argument(
        "--first-token",
        type=float,
        default=120.0,
        help="seconds allowed until the first token (default: %(default)s)",
    )
    run.add_argument("prompt", help="the user message to send")

    serve = commands.add_parser(
        "serve",
        help="run the loopback provider server in the foreground, with scripted faults",
        description="Serve recorded Anthropic and OpenAI streams on 127.0.0.1, with faults, "
        "for testing an agent in any language. Prints each SDK's base URL once listening. "
        "Each request takes the next fault of its key's script: its x-loopback-key header "
        "if it sends one, else its model if that is a scripted key, else the default "
        "script; a script that runs out means healthy. Scripts can also be set while serving: POST "
        '{"key": "k1", "script": "http:529,healthy"} to /_loopback/script; '
        "GET /_loopback/stats counts connections and requests.",
        epilog="script steps, comma-separated, each optionally COUNT*step: healthy, "
        "stall_before_headers, stall_after_headers, stall_after:N, pings:SECONDS, "
        "drop_after:N, http:STATUS, malformed:N; other fields as :field=value "
        "(e.g. healthy:drip=0.05, pings:0.2:after_events=1). Example: "
        "--script '2*http:529,stall_after:1'",
    )
    serve.add_argument(
        "--port", type=int, default=0, help="port on 127.0.0.1 (default: 0, a free port)"
    )
    serve.add_argument(
        "--script",
        metavar="SCRIPT",
        type=_script,
        default=None,
        help="the default script: faults for requests that match no scripted key",
    )
    serve.add_argument(
        "--script-for",
        nargs=2,
        action=_KeyedScriptAction,
        metavar=("KEY", "SCRIPT"),
        default=[],
        help="a script for one key (an x-loopback-key header value or a model name); repeatable",
    )
    serve.add_argument(
        "--no-validate",
        dest="validate",
        action="store_false",
        help="accept any JSON request body (by default a body the real API would refuse "
        "is answered 400 invalid_request_error, naming the problems)",
    )

    diagram = commands.add_parser(
        "diagram",
        help="maintainers: regenerate diagrams/ from the machine, or --check them",
        description="For maintainers of stream-lifecycle: write the committed diagrams "
        "from the state machines, or check that they are current.",
    )
    diagram.add_argument(
        "--check", action="store_true", help="exit 1 naming each file that differs from the machine"
    )
    diagram.add_argument("--dir", default=None, help="diagrams folder (default: ./diagrams)")
    return parser


def _serve(
    *,
    port: int,
    default: tuple[ServerFault, ...] | None,
    keyed: Sequence[tuple[str, tuple[ServerFault, ...]]],
    validate: bool = True,
) -> int:
    from ..loopback import LoopbackServer, format_script

    server = LoopbackServer(port=port, validate=validate)
    scripts: list[tuple[str | None, tuple[ServerFault, ...]]] = [(None, default)] if default else []
    scripts += keyed
    for key, faults in scripts:
        server.script(key, faults)

    def announce(server: LoopbackServer) -> None:
        # "listening on" first: parent processes read that line for the URL.
        print(f"listening on {server.url}")
        print(f"ANTHROPIC_BASE_URL={server.anthropic_base_url}")
        print(f"OPENAI_BASE_URL={server.openai_base_url}")
        for key, _ in scripts:
            pending = format_script(server.pending(key))
            print(f"script {'(default)' if key is None else repr(key)}: {pending} (then healthy)")
        print(f"control: POST {server.script_url}, GET {server.stats_url}", flush=True)

    server.serve_forever(announce=announce)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        from ._demo import run_demo

        return run_demo(
            diagrams_dir=args.diagrams,
            stale=args.stale,
            record=args.record,
            watch=args.watch,
            concurrent=args.concurrent,
        )
    if args.command == "report":
        from lifecycle.record import report_command

        return report_command(args.file, diagrams=args.diagrams, out=sys.stdout, err=sys.stderr)
    if args.command == "run":
        from ._real_run import run_real

        return run_real(
            provider=args.provider,
            model=args.model,
            prompt=args.prompt,
            max_tokens=args.max_tokens,
            stale=args.stale,
            first_token=args.first_token,
        )
    if args.command == "serve":
        return _serve(
            port=args.port, default=args.script, keyed=args.script_for, validate=args.validate
        )
    if args.command == "diagram":
        from ._diagram_files import diagram_command

        return diagram_command(check=args.check, directory=args.dir)
    parser.error(f"unknown command {args.command}")
    return 2
