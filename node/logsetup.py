"""Logging for the long-running commands: one line per event on stderr, libp2p kept quiet."""

from __future__ import annotations

import logging
import sys


def configure(verbose: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    # py-libp2p logs every normal stream close as an error (research item 25).
    logging.getLogger("libp2p").setLevel(logging.DEBUG if verbose else logging.CRITICAL)
