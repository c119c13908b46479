"""Where the checkout is, for tests that run its files as scripts or read them."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the checkout
