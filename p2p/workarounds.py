"""Every workaround for a defect of py-libp2p 0.8.1 that Suanli relies on, in one place.

Each item names the defect by its number in docs/LIBP2P.md (or docs/INTEROP.md for go-libp2p),
says what goes wrong without it, and has a regression test in
``tests/p2p/test_workarounds.py`` that fails if the workaround is removed. When py-libp2p is upgraded,
re-run those tests first: a workaround whose defect is fixed upstream can then be deleted here, and
nowhere else.

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

import hashlib
import inspect
import logging
import socket as stdlib_socket
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import libp2p
import libp2p.kad_dht.kad_dht as _kad_module
import libp2p.pubsub.pubsub as _pubsub_module
import libp2p.stream_muxer.yamux.yamux as _yamux_module
import libp2p.transport.tcp.tcp as _tcp_module
import libp2p.utils.varint as _varint_module
import trio
from libp2p.abc import IHost, INetStream, INotifee
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as _new_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.io.exceptions import ConnectionClosedError
from libp2p.io.trio import TrioTCPStream
from libp2p.kad_dht.common import PROTOCOL_ID as KAD_PROTOCOL_ID
from libp2p.kad_dht.kad_dht import KadDHT
from libp2p.kad_dht.pb.kademlia_pb2 import Message as KadMessage
from libp2p.network.config import ConnectionConfig, RetryConfig
from libp2p.network.connection.exceptions import RawConnError
from libp2p.network.exceptions import SwarmException
from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, PROTOCOL_ID_V12, GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.rcmgr import Direction
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.exceptions import MuxedConnUnavailable
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux, YamuxStream
from libp2p.transport.tcp.tcp import TCPListener, _multiaddr_from_socket
from multiaddr import Multiaddr

from p2p.errors import LocalProtocolError
from p2p.framing import DEFAULT_MAX_FRAME_BYTES, encode_frame
from p2p.limits import YAMUX_WINDOW_BYTES, InboundGate

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
            f"p2p/workarounds.py", expected=parameters, actual=actual, name=name)
    return target


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


# --- item 4: permanent inbound lockout after 250 connections in a node's lifetime ---------------
# The swarm's inbound limiter has max_connections - min_connections = 250 tokens and a token is only
# released when the swarm stops, so connection 251 onward is refused forever. A huge max_connections
# makes the limiter unreachable. (``gate_inbound`` now ends each connection's handler, and so returns
# its token, when the connection closes; p2p.limits bounds connections per IP and in all.)
# --- item 7: every dial stalls 250 ms (happy-eyeballs delay) unless one connection per peer ------
LIFETIME_INBOUND_CAP = 1_000_000


def connection_config() -> ConnectionConfig:
    return ConnectionConfig(max_connections=LIFETIME_INBOUND_CAP, max_connections_per_peer=1)


# --- issue 13 M1: inbound connections and streams had no working limit --------------------------
# With item 4's limiter made unreachable, and rcmgr's stream limit global (10,000) and not per peer,
# anyone could hold any number of connections and streams: 6 identities x 250 half-sent frames grew
# a provider by 414 MiB. ``gate_inbound`` puts ``p2p.limits.InboundGate`` in front of both: a stream
# is counted from the moment the muxer hands it over (before protocol negotiation) until its handler
# returns, and refused with a reset; a connection is counted from the start of its handshake, and
# refused by closing the socket before any Noise work.
#
# Items 4 and 24 as well: the swarm's handler of an inbound connection waits for the swarm to stop
# (its "intentional barrier"), so one task and its objects (8 KiB measured) outlived every inbound
# connection, and so did a token of the swarm's inbound limiter. The handler is now cancelled when its
# connection is gone: tasks no longer grow with connection churn (tests/p2p/test_limits.py).
#
# Only inbound connections count against the inbound limits: a buyer or agent that dials many
# providers (possibly on one address) must still accept a provider's or a peer's connection.
def gate_inbound(host: IHost, gate: InboundGate) -> None:
    swarm: Any = host.get_network()
    handle_stream = _require_parameters(swarm, "common_stream_handler", ("net_stream",))
    upgrade = _require_parameters(swarm, "upgrade_inbound_raw_conn", ("raw_conn", "maddr"))
    handle_connection = _require_parameters(swarm, "_handle_inbound_connection", ("read_write_closer", "maddr"))
    handshakes: Counter[str] = Counter()
    handlers: dict[int, trio.CancelScope] = {}  # id(the listener's stream) -> its handler's scope
    by_conn: dict[Any, trio.CancelScope] = {}  # muxed connection -> its handler's scope

    async def released_connection(read_write_closer: Any, maddr: Any) -> None:
        with trio.CancelScope() as scope:
            handlers[id(read_write_closer)] = scope
            try:
                await handle_connection(read_write_closer, maddr)
            finally:
                del handlers[id(read_write_closer)]
                for conn in [c for c, s in by_conn.items() if s is scope]:
                    del by_conn[conn]

    class _Release(QuietNotifee):
        async def disconnected(self, network: Any, conn: Any) -> None:
            scope = by_conn.pop(getattr(conn, "muxed_conn", None), None)
            if scope is not None:
                scope.cancel()

    async def gated_stream(stream: INetStream) -> None:
        peer, ip = _stream_peer(stream), _remote_ip(stream.muxed_conn)
        reason = gate.admit_stream(peer, ip)
        if reason is not None:
            log.info("refused a stream from %s at %s: %s", peer, ip, reason)
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                try:
                    await stream.reset()
                except Exception:  # already broken: nothing to release
                    pass
            return
        try:
            await handle_stream(stream)
        finally:
            gate.release_stream(peer, ip)

    async def gated_upgrade(raw_conn: Any, maddr: Any) -> Any:
        ip = _remote_ip(raw_conn)
        held_by_ip = handshakes[ip]
        held_total = sum(handshakes.values())
        for conns in list(swarm.connections.values()):
            for conn in conns:
                if getattr(conn, "direction", None) == Direction.INBOUND:  # the swarm sets it (add_conn)
                    held_total += 1
                    held_by_ip += _remote_ip(conn.muxed_conn) == ip
        reason = gate.admit_connection(ip, held_by_ip, held_total)
        if reason is not None:
            log.info("refused a connection from %s: %s", ip, reason)
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                try:
                    await raw_conn.close()
                except Exception:
                    pass
            raise SwarmException(f"inbound connection refused: {reason}")
        handshakes[ip] += 1
        try:
            muxed = await upgrade(raw_conn, maddr)
        finally:
            handshakes[ip] -= 1
            if handshakes[ip] <= 0:
                del handshakes[ip]
        scope = handlers.get(id(getattr(raw_conn, "stream", None)))
        if scope is not None:
            by_conn[muxed] = scope
            if getattr(muxed, "is_closed", False):  # gone already: no disconnect will come
                scope.cancel()
        return muxed

    swarm.common_stream_handler = gated_stream
    swarm.upgrade_inbound_raw_conn = gated_upgrade
    swarm._handle_inbound_connection = released_connection
    swarm.register_notifee(_Release())


class QuietNotifee(INotifee):
    """A notifee that ignores every event; subclasses override the ones they need."""

    async def connected(self, network: Any, conn: Any) -> None:
        return None

    async def disconnected(self, network: Any, conn: Any) -> None:
        return None

    async def opened_stream(self, network: Any, stream: Any) -> None:
        return None

    async def closed_stream(self, network: Any, stream: Any) -> None:
        return None

    async def listen(self, network: Any, multiaddr: Any) -> None:
        return None

    async def listen_close(self, network: Any, multiaddr: Any) -> None:
        return None


def _remote_ip(conn: Any) -> str:
    try:
        address = conn.get_remote_address()
    except Exception:
        address = None
    return str(address[0]) if address else "?"


# --- found here (issue 13 M1): Yamux keeps what a peer sends beyond the receive window ----------
# The reader logs "peer exceeded receive window" and appends the bytes anyway, so a peer that
# ignores flow control can grow one stream's buffer without limit. go-yamux treats it as a protocol
# error and closes the connection; so does this: a stream's buffer never holds more than its window.
class _WindowedBuffer(bytearray):
    conn: Yamux
    stream_id: int

    def extend(self, data: Any) -> None:
        stream = self.conn.streams.get(self.stream_id)
        window = min(stream.target_recv_window, YAMUX_WINDOW_BYTES) if stream is not None else YAMUX_WINDOW_BYTES
        if len(self) + len(data) > window:
            self.conn.event_shutting_down.set()
            raise RawConnError(f"peer {self.conn.peer_id} sent {len(self) + len(data) - window} bytes "
                               f"beyond the receive window of stream {self.stream_id}")
        super().extend(data)


class _WindowedBuffers(dict):  # type: ignore[type-arg]
    def __init__(self, conn: Yamux) -> None:
        super().__init__()
        self.conn = conn

    def __setitem__(self, stream_id: int, buf: bytearray) -> None:
        windowed = _WindowedBuffer(buf)
        windowed.conn = self.conn
        windowed.stream_id = stream_id
        super().__setitem__(stream_id, windowed)


_yamux_init = Yamux.__init__


def _windowed_init(self: Yamux, *args: Any, **kwargs: Any) -> None:
    _yamux_init(self, *args, **kwargs)
    buffers = _WindowedBuffers(self)
    for stream_id, buf in self.stream_buffers.items():
        buffers[stream_id] = buf
    self.stream_buffers = buffers


# Found in review (issue 13 M1): py-libp2p's auto-tuning doubles a stream's window while its reader
# keeps up, to MAX_WINDOW_SIZE = 16 MiB (go-yamux's maximum), so a peer could leave 16 MiB per stream
# waiting for a reader that has slowed down: 64 times what p2p.limits counted. The module global is
# read at call time (YamuxStream._apply_autotune_epoch, and the reader's guard against oversized
# frames, whose 64 KiB frames stay far below), so capping it caps every window; the cap is
# p2p.limits.YAMUX_WINDOW_BYTES, which inbound_memory_bound counts.
def cap_yamux_window() -> None:
    _require_parameters(YamuxStream, "_apply_autotune_epoch", ("self", "buffered"))
    start = getattr(_yamux_module, "DEFAULT_WINDOW_SIZE", None)
    if not isinstance(getattr(_yamux_module, "MAX_WINDOW_SIZE", None), int) or not isinstance(start, int) \
            or start > YAMUX_WINDOW_BYTES:  # a window that starts above the cap would cut honest peers off
        raise LocalProtocolError(f"py-libp2p {libp2p.__version__}: Yamux's window constants changed "
                                 f"(verified on {LIBP2P_VERSION})", expected=YAMUX_WINDOW_BYTES, actual=start)
    _yamux_module.MAX_WINDOW_SIZE = YAMUX_WINDOW_BYTES


def enforce_yamux_window() -> None:
    cap_yamux_window()
    if Yamux.__init__ is not _windowed_init:
        Yamux.__init__ = _windowed_init  # type: ignore[method-assign]


# --- found here: the swarm's auto-connector dials every peer it has heard of, towards 200 connections --
# py-libp2p's AutoConnector aims at the midpoint of its watermarks (100 and 300) and, while a node has
# fewer than ``min_connections`` (50: every Suanli node), re-dials peers from the peerstore every 10 s
# and after every disconnect: departed buyers, providers a lookup named, peers that are stopping. An
# operator's daemon would hold up to 200 connections it has no use for, and each failed dial logs an
# ERROR. Suanli connects on purpose: joining and re-joining the bootstrap peers, DHT lookups and
# routing-table refreshes, negotiations and jobs. So the auto-connector never dials; the pruner, which
# trims above the high watermark, is untouched.
async def _no_auto_dial() -> None:
    return None


def no_auto_dial(host: IHost) -> None:
    host.get_network().auto_connector.maybe_connect = _no_auto_dial  # type: ignore[attr-defined]


# --- found here: the swarm retries every failed dial three times, 0.7 s in all -----------------------
# Swarm._dial_with_retry tries an address again after 0.1, 0.2 and 0.4 s, whatever the failure
# (a refused connection included). A DHT lookup names departed peers (client-mode buyers stay in
# servers' routing tables, item 15), so a standalone ``suanli run`` spent 0.7 s on each one before its
# offer collection could end: offers found 0.2 s after joining when no departed peer was named, 0.9 to
# 1.5 s when one was (measured with bench/e2e.py's network). Every caller that dials already retries
# where a retry helps: joining (``connect_attempts``, jittered back-off), negotiation (the next
# candidate), lookups (the other peers), offer collection (the agent's next refresh). So the swarm
# dials each address once (``new_host`` takes no retry config: it is set on the swarm it built).
def dial_once(host: IHost) -> None:
    host.get_network().retry_config = RetryConfig(max_retries=0)  # type: ignore[attr-defined]


# --- item 6: the default host accepts /plaintext/2.0.0 (unauthenticated peer ids), TLS, secio ----
# Also issue 7: py-libp2p's TLS certificate is rejected by js-libp2p, so Noise is the only choice.
def noise_only(key_pair: KeyPair) -> dict[TProtocol, Any]:
    return {
        NOISE_PROTOCOL_ID: NoiseTransport(key_pair, noise_privkey=_new_x25519_key_pair().private_key)
    }


def yamux_only() -> dict[TProtocol, Any]:
    """Yamux only: the default also offers mplex, which go-libp2p dropped (interop section)."""
    batch_window_updates()
    lean_frame_io()
    return {TProtocol(YAMUX_PROTOCOL_ID): Yamux}


# --- found here: Yamux sends a WINDOW_UPDATE after (almost) every read ------------------------------
# py-libp2p credits the peer's window after each read unless a full half-window is due ("release on
# read", and a "partial slack" rule that fires on any read even with that knob off), so a stream that
# trades small messages (a receipt, then its countersignature, every second) carries one window update
# per message: twice the frames, each one encrypted, written, received and parsed on both sides (about
# 15 % of a round trip's CPU, measured). go-yamux credits once half the window has been consumed; this
# restores that rule and keeps py-libp2p's window auto-tuning (its target still doubles for fast bulk
# transfers). Flow control is unchanged: a sender never has less than half a window of credit.
async def _credit_half_windows(self: YamuxStream, *, bytes_read: int = 0) -> None:
    # Nothing due (almost every read): decided without taking window_lock, so a read costs no extra
    # pass through the scheduler. Safe in trio: every holder of window_lock changes the window in
    # one synchronous step, so what is read here is never half-updated; the check is repeated
    # under the lock before anything changes.
    if _window_consumed(self)[0] < self.target_recv_window // 2:
        return
    async with self.window_lock:
        consumed, buffered = _window_consumed(self)
        if consumed < self.target_recv_window // 2:
            return
        self.recv_window += consumed
        increment = consumed + self._apply_autotune_epoch(buffered)
    await self.send_window_update(increment, skip_lock=True)


def _window_consumed(stream: YamuxStream) -> tuple[int, int]:
    """(window consumed since the last credit, bytes still buffered for the reader)."""
    buffered = len(stream.conn.stream_buffers.get(stream.stream_id, b""))
    return int(stream.target_recv_window - (stream.recv_window + buffered)), buffered


def batch_window_updates() -> None:
    YamuxStream._auto_tune_and_send_window_update = _credit_half_windows  # type: ignore[method-assign]


# --- found here: each frame takes more trips through the scheduler than it needs ----------------------
# Measured on the provider's receipt loop (one receipt out, one countersignature in, per job-second):
# - TrioTCPStream.read(n) asks the socket for exactly n bytes, and Noise reads a 2-byte length before
#   each message body: two recv calls, two lock acquisitions and four scheduler passes per message.
#   ``_read_ahead`` asks for what is there (up to 64 KiB) and keeps the rest for the next read; a read
#   served from what is kept does not wait, like SecureSession.read serving its own buffer.
# - Yamux._write_frame builds a debug line for every frame (unpacking the header it just packed,
#   naming its flags) even with debug logging off, and checkpoints once more after the write has
#   already passed four checkpoints. And frames of many streams written at once (a provider's
#   receipts, all issued on the same metering tick) queue on the connection's write lock and go out
#   one by one: one encryption, one send and three scheduler passes each. ``_write_frame`` keeps one
#   writer at a time and the frames' order, and the writer that holds the lock sends every frame
#   queued behind it in the same write (a Noise message carries any bytes of the Yamux stream);
#   the writers of those frames then return, or raise what the write raised. A writer cancelled
#   before its frame was taken leaves nothing behind, as before; one cancelled while another writer
#   is already sending its frame raises Cancelled although the frame goes out (before, it would not
#   have been sent, and the stream's window would have been charged for it all the same).
# Together about 10 % of a round trip's CPU on both sides, and 8 % more with 50 streams writing at
# once (tests: the round trip is unchanged).
READ_AHEAD_BYTES = 64 * 1024


async def _read_ahead(self: TrioTCPStream, n: int | None = None) -> bytes:
    kept = _take_kept(self, n)
    if kept is not None:
        return kept
    async with self.read_lock:
        if n is not None and n == 0:
            return b""
        kept = _take_kept(self, n)  # another reader may have kept some while this one waited
        if kept is not None:
            return kept
        try:
            data = await self.stream.receive_some(None if n is None else max(n, READ_AHEAD_BYTES))
        except trio.BrokenResourceError as error:  # as the original: the peer reset the connection
            raise ConnectionClosedError(f"TCP connection reset by remote peer: {error}",
                                        transport="tcp") from error
        except trio.ClosedResourceError:  # as the original: closed here, read as EOF
            return b""
        if n is not None and len(data) > n:
            self.__dict__["_suanli_kept"] = bytearray(data[n:])
            return data[:n]
        return data


def _take_kept(stream: TrioTCPStream, n: int | None) -> bytes | None:
    kept: bytearray | None = stream.__dict__.get("_suanli_kept")
    if not kept or n == 0:
        return None
    if n is None or n >= len(kept):
        stream.__dict__["_suanli_kept"] = None
        return bytes(kept)
    out = bytes(kept[:n])
    del kept[:n]
    return out


class _QueuedFrame:
    __slots__ = ("data", "outcome")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.outcome: BaseException | bool | None = None  # None: queued; True: written; else: the error


async def _write_frame(self: Yamux, data: bytes) -> None:
    queue: list[_QueuedFrame] | None = self.__dict__.get("_suanli_frames")
    if queue is None:
        queue = self.__dict__["_suanli_frames"] = []
    frame = _QueuedFrame(data)
    queue.append(frame)
    try:
        async with self._write_lock:
            if frame.outcome is None:  # not yet sent by an earlier holder: send it and all queued since
                batch = queue[:]
                queue.clear()
                try:
                    await self.secured_conn.write(data if len(batch) == 1 else b"".join(f.data for f in batch))
                except Exception as exc:
                    for f in batch:
                        f.outcome = exc
                    raise
                except BaseException:  # the holder was cancelled mid-write: the others' frames are lost
                    for f in batch:
                        f.outcome = MuxedConnUnavailable("the write carrying this frame was abandoned")
                    raise
                for f in batch:
                    f.outcome = True
    except BaseException:
        if frame.outcome is None and frame in queue:  # cancelled before anyone took it: not written
            queue.remove(frame)
        raise
    if frame.outcome is not True:
        assert isinstance(frame.outcome, BaseException)
        raise frame.outcome


_LEAN_FRAME_IO: list[bool] = []  # applied once per process (a test may wrap the methods afterwards)


def lean_frame_io() -> None:
    if _LEAN_FRAME_IO:
        return
    TrioTCPStream.read = _read_ahead  # type: ignore[method-assign]
    Yamux._write_frame = _write_frame  # type: ignore[method-assign]
    _LEAN_FRAME_IO.append(True)


# --- found here: a TCP listener half-way through closing makes host.get_addrs() raise ---------------
# TCPListener.close() closes its sockets, and forgets them only after an await. A task that asks for the
# host's addresses in between gets OSError EBADF: libp2p's identify handler does exactly that (it waits
# for ``host.get_addrs()`` to be non-empty), so an identify request answered during shutdown raised out
# of the handler and out of the host instead of the host stopping cleanly (seen with 21 hosts stopping
# at once in one process). A closed socket has no address: ``get_addrs`` skips it.
def _open_listener_addrs(self: TCPListener) -> tuple[Multiaddr, ...]:
    return tuple(_multiaddr_from_socket(listener.socket) for listener in self.listeners
                 if listener.socket.fileno() != -1)


def skip_closed_listeners() -> None:
    TCPListener.get_addrs = _open_listener_addrs  # type: ignore[method-assign]

# --- found here (issue 17 item 8): listeners share their port with any other process --------------
# py-libp2p sets SO_REUSEPORT (and SO_REUSEADDR) on every TCP listen socket and on hole-punch dial
# sockets (``_set_reuse_flags``, for DCUtR's simultaneous open from the listen port). On Linux a second
# process that also sets SO_REUSEPORT (a second py-libp2p node, any program) could then bind the same
# port, and the kernel split incoming connections between the two: seen with two ``suanli bootstrap
# --listen /ip4/127.0.0.1/tcp/P``, both "listening". Suanli does no hole punching: SO_REUSEADDR alone
# (a restart may still bind a port with connections in TIME_WAIT), so the second bind fails with
# EADDRINUSE and p2p.listen says so.
def _reuse_address_only(sock: Any) -> None:
    try:
        sock.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_REUSEADDR, 1)
    except OSError:
        pass


def own_listen_ports() -> None:
    if _tcp_module._set_reuse_flags is not _reuse_address_only:
        _require_parameters(_tcp_module, "_set_reuse_flags", ("sock",))
        _tcp_module._set_reuse_flags = _reuse_address_only


# --- item 23: reconnecting to a restarted peer (same id, new port) fails --------------------------
# connect() dials the peerstore's addresses (the dead one first, one per transport), then a 60 s
# negative cache refuses further attempts.
def forget_peer_addrs(host: IHost, peer_id: ID) -> None:
    """Drop stale addresses and the negative-cache entry of ``peer_id`` before dialing it afresh."""
    if peer_id in host.get_network().connections:
        return  # connected: the addresses in use are good
    try:
        host.get_peerstore().clear_addrs(peer_id)
    except Exception:  # unknown peer: nothing to clear
        pass
    host.get_network().unblock_peer(peer_id)


# --- issue 7 / docs/INTEROP.md: py replies to ADD_PROVIDER ------------------------------------
# go-libp2p-kad-dht sends ADD_PROVIDER fire-and-forget on a reused stream; py's echo is read as the
# answer to go's next request, every later answer is one behind, and go later panics. Suanli's KAD
# handler passes the stock one a stream whose writes drop the ADD_PROVIDER echo.
class _NoAddProviderEcho:
    """A stream proxy that swallows complete ADD_PROVIDER response frames written to it."""

    def __init__(self, stream: INetStream) -> None:
        self._stream = stream
        self._pending = bytearray()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    async def write(self, data: bytes) -> None:
        # The handler writes varint(len) and the message as two writes; hold bytes until a whole
        # frame is present, then forward or drop it.
        self._pending += data
        while True:
            frame = _split_varint_frame(self._pending)
            if frame is None:
                return
            whole, body = frame
            del self._pending[:whole]
            if not _is_add_provider(body):
                await self._stream.write(_frame_bytes(body))


def _split_varint_frame(buf: bytearray) -> tuple[int, bytes] | None:
    length = shift = 0
    for i, byte in enumerate(buf[:10]):
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            end = i + 1 + length
            if len(buf) < end:
                return None
            return end, bytes(buf[i + 1:end])
    return None


def _frame_bytes(body: bytes) -> bytes:
    return encode_frame(body)  # the one uvarint framing, shared by Kademlia and our protocols


def _is_add_provider(body: bytes) -> bool:
    try:
        msg = KadMessage()
        msg.ParseFromString(body)
    except Exception:
        return False
    return bool(msg.type == KadMessage.MessageType.ADD_PROVIDER)


# --- item 18: the DHT serves at most 12 inbound KAD streams and resets the rest -----------------
# A stream holds its slot until the asker closes it, so 25 buyers looking up at once (or a round of
# concurrent refreshes) get most of their queries reset at every server (bench/overlay.py at N=25:
# find_providers found as few as 1 of 25 providers). Suanli's lookups are bounded (p2p.dht).
KAD_INBOUND_STREAMS = 128

# --- issue 13 M1: py-libp2p's own protocols buffer large half-sent messages ------------------------
# The Kademlia server reads messages of up to 4 MiB, Pubsub RPCs and identify(-push) messages of up to
# 1 MiB, as they arrive
# and with no deadline, so one stream with a half-sent message held up to 4 MiB: 16 times what
# p2p.limits counts per stream. Suanli's DHT messages (provider records, peer lists) and gossip RPCs
# (signed offers) are a few KiB, so both are held to the frame size of our own protocols, and the
# bound of p2p.limits holds for every inbound stream.
LIBP2P_MESSAGE_BYTES = DEFAULT_MAX_FRAME_BYTES


def widen_kad_inbound_limit(dht: KadDHT) -> None:
    dht._inbound_limiter = trio.CapacityLimiter(KAD_INBOUND_STREAMS)
    _kad_module.MAX_DHT_MESSAGE_SIZE = LIBP2P_MESSAGE_BYTES  # read by the inbound handler only


def limit_identify_messages() -> None:
    """Identify and identify-push read messages of up to 1 MiB (the reader's default length)."""
    # The defaults are rewritten by position: check the parameters they belong to first.
    reader = _require_parameters(_varint_module, "read_length_prefixed_protobuf",
                                 ("stream", "use_varint_format", "max_length"))
    if reader.__defaults__ != (True, LIBP2P_MESSAGE_BYTES):
        reader.__defaults__ = (True, LIBP2P_MESSAGE_BYTES)


def silence_add_provider_echo(host: IHost, dht: KadDHT) -> None:
    """Serve KAD through the stock handler, minus its ADD_PROVIDER reply (and exception-safe)."""

    async def handle(stream: INetStream) -> None:
        await dht.handle_stream(_NoAddProviderEcho(stream))  # type: ignore[arg-type]

    host.set_stream_handler(KAD_PROTOCOL_ID, safe_stream_handler(handle, str(KAD_PROTOCOL_ID)))


# --- GossipSub defaults: items 8, 9, 11, 14, 26 and the validation cache -----------------------
# item 8: spam protection silently drops a publisher's messages beyond 10 msg/s, own publishes too.
# item 9: "adaptive gossip" turns a 1 s heartbeat into 30 s on a healthy idle network.
# item 11: a subscription queue of 32 messages; a busy consumer silently loses the rest.
SUBSCRIPTION_CHANNEL_SIZE = 1024


def offer_message_id(msg: Any) -> bytes:
    """item 14: the default id is from+seqno, so a republished identical payload is a new message."""
    return hashlib.sha256(msg.data).digest()


class _NoValidationCache:
    """Found here (beyond docs/LIBP2P.md's list): Pubsub caches each validator verdict by message id
    for 300 s, ahead of the validator. With content ids (item 14) anyone who republishes a provider's
    signed offer under their own peer id gets it cached as invalid (signer != publisher), and the
    provider's own copy is then refused from the cache: an offer can be censored by its bytes alone.
    A valid verdict is likewise replayed after its offer expired. Validators here are cheap: no cache."""

    def get(self, msg_id: bytes) -> None:
        return None

    def put(self, msg_id: bytes, result: Any) -> None:
        return None

    def clear_expired(self) -> None:
        return None


def new_pubsub(host: IHost, *, heartbeat_interval_s: int = 1) -> tuple[Pubsub, GossipSub]:
    """A GossipSub router and Pubsub with the defaults above fixed; not started yet."""
    _pubsub_module.SUBSCRIPTION_CHANNEL_SIZE = max(
        _pubsub_module.SUBSCRIPTION_CHANNEL_SIZE, SUBSCRIPTION_CHANNEL_SIZE)
    router = GossipSub(
        protocols=[PROTOCOL_ID_V12, PROTOCOL_ID_V11],
        # D=4 (3..8) rather than go's 6: each duplicate delivery costs ~30 ms of CPU here (item 10);
        # bench/overlay.py at N=50 on 2 cores: p95 propagation 1.8 s.
        degree=4, degree_low=3, degree_high=8,
        heartbeat_initial_delay=0.5,
        heartbeat_interval=heartbeat_interval_s,
        adaptive_gossip_enabled=False,
        spam_protection_enabled=False,
    )
    pubsub = Pubsub(host, router, strict_signing=True, msg_id_constructor=offer_message_id,
                    max_inbound_rpc_size=LIBP2P_MESSAGE_BYTES)  # issue 13 M1
    pubsub.validation_cache = _NoValidationCache()  # type: ignore[assignment]
    return pubsub, router


# --- item 26: every Pubsub starts a LastSeenCache sweeper thread that outlives shutdown ----------
def stop_pubsub_threads(pubsub: Pubsub) -> None:
    pubsub.seen_messages.stop()


# --- item 5: leaving host.run() closes nothing (port still accepts, peers keep the connection) ---
async def close_host(host: IHost, timeout_s: float = 5.0) -> None:
    """Close listeners and connections; must be awaited inside ``host.run()``."""
    with trio.CancelScope(shield=True), trio.move_on_after(timeout_s):
        # Found here: Swarm.close() closes connections one after another, and each close sleeps
        # 0.2 s (SwarmConn.close and Yamux.close each `await trio.sleep(0.1)`), so a bootstrap with
        # 100 peers took 20 s to stop. Close them side by side first; host.close() then finds none.
        network = host.get_network()
        async with trio.open_nursery() as nursery:
            for conns in list(network.connections.values()):
                for conn in list(conns):
                    nursery.start_soon(_close_quietly, conn)
        await host.close()


async def _close_quietly(conn: Any) -> None:
    try:
        await conn.close()
    except Exception as exc:  # a broken connection is closed enough
        log.debug("closing %r: %r", conn, exc)
