"""Log noise and exception-safe stream handlers and topic validators (items 1, 2, 12, 25)."""

from __future__ import annotations

import logging
from typing import Any

import trio
from libp2p.abc import INetStream
from libp2p.peer.id import ID

from p2p.workarounds._shape import StreamHandler, SyncValidator, log


# --- item 25: a flood of log noise --------------------------------------------------------------
# "Failed to read DHT message from stream" fires on every normal close, plus spurious ERRORs; the
# `libp2p` logger has no handler, so its WARNINGs reach stderr through logging's last resort.
def quiet_libp2p_logging(level: int = logging.ERROR) -> None:
    """Keep libp2p's own loggers at ``level`` (ERROR) and off stderr unless the app logs them."""
    lib_logger = logging.getLogger("libp2p")
    lib_logger.setLevel(level)
    # libp2p.utils.logging sets propagate=False on import, so its ERRORs never reach the app's
    # handlers and go to logging.lastResort (stderr) instead. Propagate to the app; the NullHandler
    # keeps records off lastResort when the app installed no handler at all.
    lib_logger.propagate = True
    if not any(isinstance(h, logging.NullHandler) for h in lib_logger.handlers):
        lib_logger.addHandler(logging.NullHandler())
    # Some modules pin their own level (network/auto_connector.py: INFO every 30 s); raise them too.
    for name, child in list(logging.root.manager.loggerDict.items()):
        if name.startswith("libp2p.") and isinstance(child, logging.Logger) and 0 < child.level < level:
            child.setLevel(level)


# --- item 1: an exception in any stream handler kills the whole host ----------------------------
def safe_stream_handler(handler: StreamHandler, protocol: str) -> StreamHandler:
    """Wrap a stream handler so that its exception resets that stream and never ends the host."""

    async def guarded(stream: INetStream) -> None:
        try:
            await handler(stream)
        except Exception as exc:  # the per-stream boundary (STYLE 2); trio.Cancelled passes through
            peer = _stream_peer(stream)
            log.warning("handler for %s failed on a stream from %s: %r", protocol, peer, exc)
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                try:
                    await stream.reset()
                except Exception:  # already broken: nothing left to release
                    pass

    guarded.__name__ = f"safe_{getattr(handler, '__name__', 'handler')}"
    return guarded


def _stream_peer(stream: INetStream) -> str:
    try:
        return stream.muxed_conn.peer_id.to_base58()
    except Exception:
        return "?"


# --- item 2: an exception in a pubsub topic validator kills the node ----------------------------
# --- item 12: async validators deliver duplicates -> Suanli only uses sync validators -----------
def safe_validator(validator: SyncValidator, topic: str) -> SyncValidator:
    """Wrap a synchronous topic validator: any exception means "invalid", never a dead node."""

    def guarded(forwarder: ID, msg: Any) -> bool:
        try:
            return bool(validator(forwarder, msg))
        except Exception as exc:
            log.info("validator for %s raised on a message from %s: %r", topic, forwarder, exc)
            return False

    return guarded
