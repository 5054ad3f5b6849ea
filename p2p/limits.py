"""Inbound limits of a node's host (pure): how many connections and streams strangers may hold.

Anyone who can reach the listen port can open connections, and every connection can open streams;
each stream that is part-way through a frame holds memory (its bytes so far, and up to a Yamux
window of unread data). These limits bound how much of that a peer, an IP address and everyone
together can hold at once (issue 13 M1: 6 identities x 250 half-sent frames grew a provider from
170 to 584 MiB in 30 s, and ``max_connections`` had to be unreachable, docs/LIBP2P.md item 4).

Rule 1: a stream is admitted only while its peer, its IP address and the whole node are each below
their limit; it holds one slot of each until it ends (``release``). A stream refused is reset at
once, before protocol negotiation, so it never holds a buffer.
Rule 2: an inbound connection is admitted only while its IP address and the whole node hold fewer
inbound connections (established or still in their handshake) than their limits; connections the
node dialled itself are not counted, so a buyer or agent dialling many providers still accepts
connections. Per peer, py-libp2p keeps one connection (``max_connections_per_peer=1``).
Rule 3: a frame that has started must be complete within ``frame_timeout_s`` (``p2p.framing``), so a
half-sent frame holds its slot and its bytes for a bounded time.
The memory bound this gives is stated by ``inbound_memory_bound`` and measured in
``tests/p2p/test_limits.py`` (docs/OVERLAY.md, "Inbound limits").
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

# What one inbound stream can hold, beyond its objects: py-libp2p's Yamux receive window (unread
# bytes, enforced by p2p.workarounds.enforce_yamux_window) plus one read chunk of p2p.framing.
# A window starts at 256 KiB and py-libp2p's auto-tuning doubles it while the reader keeps up, to
# 16 MiB (go-yamux's maximum): a peer may then send 16 MiB that wait for a reader that has slowed
# down (an upload while the provider writes to disk). enforce_yamux_window caps the auto-tuned
# window at YAMUX_WINDOW_BYTES, and the bound below counts the cap. 1 MiB rather than 256 KiB:
# a window limits a stream to window / RTT (at 50 ms, 20 MiB/s instead of 5 MiB/s for an image
# upload); on 127.0.0.1 a 64 MiB transfer ran at 180 MiB/s capped at 1 MiB, 150 MiB/s at 256 KiB and
# 190 MiB/s uncapped (docs/OVERLAY.md).
YAMUX_WINDOW_BYTES = 1024 * 1024
READ_CHUNK_BYTES = 64 * 1024
# Objects of one stream and its trio tasks (NetStream, YamuxStream, FramedStream, handler frames):
# about 20 KiB measured with tracemalloc; 64 KiB leaves room.
STREAM_OVERHEAD_BYTES = 64 * 1024


@dataclass(frozen=True)
class InboundLimits:
    # Defaults: a buyer may run 50 jobs on one provider (bench/e2e.py does), each one stream, beside
    # its negotiations, gossip and DHT streams; 256 streams in all bound strangers to 352 MiB
    # (inbound_memory_bound at 256 KiB frames and 1 MiB windows). A bootstrap serving more peers, or a benchmark of many
    # nodes on one address, raises them (HostConfig.limits).
    streams_per_peer: int = 64
    streams_per_ip: int = 128
    streams_total: int = 256
    connections_per_ip: int = 64
    connections_total: int = 256

    def __post_init__(self) -> None:
        for name in ("streams_per_peer", "streams_per_ip", "streams_total", "connections_per_ip",
                     "connections_total"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")


# A bootstrap serves DHT and gossip to every peer of the network (one gossip stream and a few DHT
# streams each) and runs no jobs: fewer streams per peer, many more peers. Bound: 1,408 MiB.
BOOTSTRAP_LIMITS = InboundLimits(streams_per_peer=16, streams_per_ip=256, streams_total=1024,
                                 connections_per_ip=128, connections_total=1024)


def inbound_memory_bound(limits: InboundLimits, max_frame_bytes: int) -> int:
    """Most bytes strangers' inbound streams can make this node hold at once: each admitted stream
    holds at most one frame in progress, one read chunk past it, an unread Yamux window (at most
    ``YAMUX_WINDOW_BYTES``, the cap on auto-tuning), and its objects."""
    per_stream = max_frame_bytes + READ_CHUNK_BYTES + YAMUX_WINDOW_BYTES + STREAM_OVERHEAD_BYTES
    return limits.streams_total * per_stream


@dataclass
class InboundGate:
    """Counts of what strangers hold now; the shell asks before admitting and tells on release."""

    limits: InboundLimits = field(default_factory=InboundLimits)
    _peer_streams: Counter[str] = field(default_factory=Counter)
    _ip_streams: Counter[str] = field(default_factory=Counter)
    _streams: int = 0
    refused_streams: int = 0
    refused_connections: int = 0

    # -- streams (Rule 1) -----------------------------------------------------------------------
    def admit_stream(self, peer: str, ip: str) -> str | None:
        """Take a slot for a stream from ``peer`` at ``ip``; the reason it is refused, or None."""
        reason = None
        if self._peer_streams[peer] >= self.limits.streams_per_peer:
            reason = f"peer holds {self.limits.streams_per_peer} streams"
        elif self._ip_streams[ip] >= self.limits.streams_per_ip:
            reason = f"address {ip} holds {self.limits.streams_per_ip} streams"
        elif self._streams >= self.limits.streams_total:
            reason = f"{self.limits.streams_total} inbound streams open"
        if reason is not None:
            self.refused_streams += 1
            return reason
        self._peer_streams[peer] += 1
        self._ip_streams[ip] += 1
        self._streams += 1
        return None

    def release_stream(self, peer: str, ip: str) -> None:
        for counts, key in ((self._peer_streams, peer), (self._ip_streams, ip)):
            counts[key] -= 1
            if counts[key] <= 0:
                del counts[key]
        self._streams = max(0, self._streams - 1)

    def streams(self) -> int:
        return self._streams

    # -- connections (Rule 2) -------------------------------------------------------------------
    def admit_connection(self, ip: str, held_by_ip: int, held_total: int) -> str | None:
        """May one more connection from ``ip`` start its handshake, given the inbound connections
        held now (established plus handshakes in progress)? The reason it may not, or None."""
        reason = None
        if held_by_ip >= self.limits.connections_per_ip:
            reason = f"address {ip} holds {self.limits.connections_per_ip} connections"
        elif held_total >= self.limits.connections_total:
            reason = f"{self.limits.connections_total} connections open"
        if reason is not None:
            self.refused_connections += 1
        return reason
