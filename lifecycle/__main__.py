"""``python -m lifecycle``: the ``lifecycle`` command.

The command lives in ``providers.cli`` because it wires the engine to the real adapters,
and ``lifecycle`` never imports ``providers`` at import time (the engine stays
provider-neutral). This module is only executed, never imported by the package, and it
imports the command inside ``main`` so that even importing it keeps that promise.
"""

from __future__ import annotations

import sys


def main() -> int:
    from providers.cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
