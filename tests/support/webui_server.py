"""The old import path of the fake WebUI, kept so that ``tests.support.webui_server`` and
``python -m tests.support.webui_server`` keep working; the code is in ``tests/support/webui/``."""

import sys

from .webui import *  # noqa: F403
from .webui import __all__  # noqa: F401
from .webui.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
