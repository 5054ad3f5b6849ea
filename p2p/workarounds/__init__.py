"""Every workaround for a defect of py-libp2p 0.8.1 that Suanli relies on, in one package.

Each item names the defect by its number in docs/LIBP2P.md (or docs/INTEROP.md for go-libp2p),
says what goes wrong without it, and has a regression test in
``tests/p2p/test_workarounds.py`` that fails if the workaround is removed. When py-libp2p is upgraded,
re-run those tests first: a workaround whose defect is fixed upstream can then be deleted here, and
nowhere else.

Modules, split by concern (each patches or configures py-libp2p; none is pure):

- ``_shape``      the verified version, handler types, ``_require_parameters`` (checks an internal's shape)
- ``handlers``    log noise, exception-safe stream handlers and topic validators
- ``connections`` inbound limits, notifees, dialling, listeners, stale addresses, closing a host
- ``yamux``       Noise and Yamux only, the receive window kept, window updates batched, lean frame I/O
- ``kad``         Kademlia's ADD_PROVIDER echo and inbound limit, the size of identify/KAD messages
- ``pubsub``      GossipSub and Pubsub defaults, the validation cache, the sweeper thread

Callers import from ``p2p.workarounds`` (this module re-exports every public name).

Rule 1: nothing outside ``p2p/`` patches or configures py-libp2p around a defect; it calls these.
Rule 2: this module imports libp2p, so offline commands must never import it (or ``p2p.host``).

Structural workarounds that are a matter of order, not of code, live in ``p2p.host.open_host`` and
are listed here so that this page is the complete map:

- item 3 (a pubsub stream before the Pubsub service started kills the host) and item 31 / issue 7
  (no identify-push for handlers added after connecting): ``open_host`` starts Pubsub, GossipSub and
  the DHT and registers every handler, validator and subscription before it dials anyone.
- item 5 (leaving ``host.run()`` closes nothing): ``open_host`` calls ``close_host`` inside ``run()``,
  before it stops the Pubsub and DHT services (a stream reaching a stopped Pubsub raised inside the
  swarm and ended the host at shutdown: found here).
- item 17 (``find_providers`` stops at the first local record and returns duplicates) and item 18
  (routing tables do not fill; ``refresh_routing_table`` takes 13-40 s): ``p2p.dht.find_providers``
  always asks the network, and ``p2p.dht.serve_routing_refresh`` does self-lookups after joining.
- item 21 (``read_varint_prefixed_bytes`` fails on large messages): ``p2p.framing`` has its own loop.

Defects found while building this (beyond docs/LIBP2P.md's list), each with its regression test:
- Pubsub's validation cache lets anyone censor an offer by republishing its bytes (``_NoValidationCache``).
- ``Swarm.close()`` sleeps 0.2 s per connection, one after another (``close_host``).
- ``libp2p.utils.logging`` sets ``propagate=False`` and ``auto_connector`` pins INFO
  (``quiet_libp2p_logging``).
- Yamux credits the peer's window after almost every read, doubling the frames of small-message
  streams (``batch_window_updates``).
- Yamux keeps bytes sent past a stream's window, and auto-tunes windows up to 16 MiB, far past what
  ``p2p.limits`` counts per stream (``enforce_yamux_window``, ``cap_yamux_window``; tests in
  ``tests/p2p/test_limits.py``).
- TCP listeners set SO_REUSEPORT, so another local process can bind our port and take part of our
  connections (``own_listen_ports``; issue 17 item 8).
- Internals replaced or reconfigured here are checked by parameter names first
  (``_require_parameters``), so a py-libp2p upgrade that reshapes one fails when a host is built.
- Every frame costs more trips through trio's scheduler and more formatting than it needs: a 2-byte
  socket read per Noise message, debug strings built with logging off, a checkpoint after each
  write, one write per frame when many streams write at once (``lean_frame_io``).
- The swarm's auto-connector dials every known peer towards 200 connections (``no_auto_dial``).
- The swarm retries every failed dial three times (0.7 s per departed peer a lookup names) (``dial_once``).
- A TCP listener half-way through closing makes ``host.get_addrs()`` raise EBADF, which libp2p's
  identify handler calls (``skip_closed_listeners``).
- Not worked around, documented: GossipSub's per-peer outbound queue (32 RPCs, as go) rejects what a
  publisher outruns in a loop without checkpoints; publish offers one at a time.
"""

from __future__ import annotations

from p2p.workarounds._shape import LIBP2P_VERSION, StreamHandler, SyncValidator, _require_parameters
from p2p.workarounds.connections import (
    LIFETIME_INBOUND_CAP,
    QuietNotifee,
    close_host,
    connection_config,
    dial_once,
    forget_peer_addrs,
    gate_inbound,
    no_auto_dial,
    own_listen_ports,
    skip_closed_listeners,
)
from p2p.workarounds.handlers import quiet_libp2p_logging, safe_stream_handler, safe_validator
from p2p.workarounds.kad import (
    KAD_INBOUND_STREAMS,
    LIBP2P_MESSAGE_BYTES,
    limit_identify_messages,
    silence_add_provider_echo,
    widen_kad_inbound_limit,
)
from p2p.workarounds.pubsub import (
    SUBSCRIPTION_CHANNEL_SIZE,
    new_pubsub,
    offer_message_id,
    stop_pubsub_threads,
)
from p2p.workarounds.yamux import (
    READ_AHEAD_BYTES,
    _write_frame,
    batch_window_updates,
    cap_yamux_window,
    enforce_yamux_window,
    lean_frame_io,
    noise_only,
    yamux_only,
)

__all__ = [
    "KAD_INBOUND_STREAMS", "LIBP2P_MESSAGE_BYTES", "LIBP2P_VERSION", "LIFETIME_INBOUND_CAP",
    "READ_AHEAD_BYTES", "SUBSCRIPTION_CHANNEL_SIZE", "QuietNotifee", "StreamHandler", "SyncValidator",
    "_require_parameters", "_write_frame", "batch_window_updates", "cap_yamux_window", "close_host",
    "connection_config", "dial_once", "enforce_yamux_window", "forget_peer_addrs", "gate_inbound",
    "lean_frame_io", "limit_identify_messages", "new_pubsub", "no_auto_dial", "noise_only",
    "offer_message_id", "own_listen_ports", "quiet_libp2p_logging", "safe_stream_handler",
    "safe_validator", "silence_add_provider_echo", "skip_closed_listeners", "stop_pubsub_threads",
    "widen_kad_inbound_limit", "yamux_only",
]
