"""Logging for the long-running commands: one line per event on stderr, libp2p kept quiet.

Rule 1 (issue 17 item 1): py-libp2p configures its own logger when it is imported
(``libp2p.utils.logging.setup_logging``: level WARNING, no handler, ``propagate = False``), which
undoes a level set before the import, and a record with no handler goes to Python's last-resort
handler, straight to stderr. So ``configure`` imports libp2p first, then takes its logger back: our
handler, and nothing below CRITICAL unless ``-v`` (py-libp2p logs every normal stream close and every
failed dial of a peer that has left as a warning or an error, docs/LIBP2P.md item 25).
Rule 2: ``LIBP2P_DEBUG`` set means the user asked for py-libp2p's own logging: it is left alone.
Rule 3: levels alone do not hold: ``p2p.host`` sets libp2p's logger back to ERROR when a host opens
(``p2p.workarounds.quiet_libp2p_logging``). So our handler itself drops the network stack's records
below CRITICAL unless ``-v``, whoever sets their levels afterwards.
"""

from __future__ import annotations

import logging
import os
import sys

QUIET_LOGGERS = ("libp2p", "multiaddr", "aioquic")  # third-party loggers of the network stack


def configure(verbose: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    if not verbose and not os.environ.get("LIBP2P_DEBUG"):
        handler.addFilter(_drop_network_stack_noise)  # Rule 3
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    quiet_libp2p(verbose)


def _drop_network_stack_noise(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.CRITICAL or not record.name.startswith(QUIET_LOGGERS)


def quiet_libp2p(verbose: bool = False) -> None:
    """Rule 1 (after importing libp2p, which resets its logger) unless Rule 2."""
    if os.environ.get("LIBP2P_DEBUG"):
        return
    import libp2p  # noqa: F401 - its import runs setup_logging, which must come before what follows

    for name in QUIET_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True  # to our handler, formatted as ours, instead of the last-resort handler
        logger.setLevel(logging.DEBUG if verbose else logging.CRITICAL)
    # a child logger with a level of its own (auto_connector sets INFO) would still pass its records
    # up: reset them all, so only the parent's level counts
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger) and name.startswith("libp2p."):
            logger.setLevel(logging.NOTSET)
