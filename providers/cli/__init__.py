"""The ``lifecycle`` command and the applications behind it: the demo, the report, a
real run against the providers' APIs, the loopback server and the diagram writer.

They live in ``providers`` (not in ``lifecycle``) because they wire the provider-neutral
engine to this package's adapters and loopback server, and ``lifecycle`` never imports
``providers``; they import only the public faces of ``lifecycle``.
"""

from ._main import build_parser, main

__all__ = ["build_parser", "main"]
