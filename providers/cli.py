"""The ``lifecycle`` command: ``demo``, ``report``, ``run``, ``serve``, ``diagram``.

It lives in ``providers`` because it wires the provider-neutral engine to real
adapters; ``lifecycle`` itself never imports ``providers``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lifecycle",
        description="A state-machine-driven lifecycle engine for LLM streaming calls.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo", help="run the real SDKs through a gallery of faults on a loopback server"
    )
    demo.add_argument(
        "--diagrams",
        default="demo-diagrams",
        help="folder for one per-run diagram per scenario (default: %(default)s)",
    )
    demo.add_argument("--stale", type=float, default=0.5, help="stale/first_token seconds")
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

    run = commands.add_parser("run", help="stream from a real provider with the same lifecycle")
    run.add_argument("--provider", choices=("anthropic", "openai"), required=True)
    run.add_argument("--model", required=True)
    run.add_argument("--max-tokens", type=int, default=1024)
    run.add_argument("--stale", type=float, default=60.0)
    run.add_argument("--first-token", type=float, default=120.0)
    run.add_argument("prompt")

    serve = commands.add_parser("serve", help="run the loopback provider server in the foreground")
    serve.add_argument("--port", type=int, default=0)

    diagram = commands.add_parser(
        "diagram", help="write diagrams/ from the machine (or --check that they are current)"
    )
    diagram.add_argument(
        "--check", action="store_true", help="exit 1 naming each file that differs from the machine"
    )
    diagram.add_argument("--dir", default=None, help="diagrams folder (default: ./diagrams)")
    return parser


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
        from ._report import report_command

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
        from .loopback import LoopbackServer

        LoopbackServer(port=args.port).serve_forever()
        return 0
    if args.command == "diagram":
        from ._diagram_files import diagram_command

        return diagram_command(check=args.check, directory=args.dir)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
