"""``python -m sdekit train ...`` / ``python -m sdekit sample ...`` (see :mod:`sdekit.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
