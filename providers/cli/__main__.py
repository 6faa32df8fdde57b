"""``python -m providers.cli``: the ``lifecycle`` command."""

import sys

from ._main import main

sys.exit(main())
