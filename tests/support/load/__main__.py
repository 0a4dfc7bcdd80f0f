"""``python -m tests.support.load dag-run|run-symbol``: see ``tests.support.load.driver``."""

import sys

from .driver import main

if __name__ == "__main__":
    sys.exit(main())
