"""Shared by the workarounds: the verified py-libp2p version, handler types, and the shape check
every workaround that replaces an internal runs first (``_require_parameters``)."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import libp2p
from libp2p.abc import INetStream
from libp2p.peer.id import ID

from p2p.errors import LocalProtocolError

log = logging.getLogger("suanli.p2p.workarounds")

LIBP2P_VERSION = "0.8.1"
if libp2p.__version__ != LIBP2P_VERSION:  # pragma: no cover - a packaging error, not a runtime path
    log.warning("py-libp2p %s is installed; these workarounds were verified on %s: re-run "
                "tests/p2p/test_workarounds.py", libp2p.__version__, LIBP2P_VERSION)

StreamHandler = Callable[[INetStream], Awaitable[None]]
SyncValidator = Callable[[ID, Any], bool]


def _require_parameters(owner: Any, name: str, parameters: tuple[str, ...]) -> Any:
    """``owner.name``, after checking that it exists and takes ``parameters`` (by name, in order).

    A workaround that replaces or reconfigures a py-libp2p internal checks its shape first, so that
    an upgrade which renames, removes or reshapes it fails loudly here, when the host is built,
    instead of a replacement being installed where nothing calls it or defaults landing on the
    wrong parameters. (Raised, not asserted: asserts vanish under -O.)"""
    target = getattr(owner, name, None)
    actual = tuple(inspect.signature(target).parameters) if callable(target) else None
    if actual != parameters:
        raise LocalProtocolError(
            f"py-libp2p {libp2p.__version__}: {name} is not the one the workaround was written for "
            f"(verified on {LIBP2P_VERSION}); re-run tests/p2p/test_workarounds.py and update "
            f"p2p/workarounds/", expected=parameters, actual=actual, name=name)
    return target
