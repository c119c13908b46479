"""``python -m dogbreeds``: the ``dogbreeds`` command (``dogbreeds/cli.py``)."""

import sys

from dogbreeds.cli import main

sys.exit(main())
