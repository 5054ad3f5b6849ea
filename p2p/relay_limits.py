"""What a Suanli relay lets its users hold (pure: no libp2p, no trio; ``now_s`` is passed in).

A bootstrap host is a circuit relay v2 HOP (libp2p/specs relay/circuit-v2.md) for private nodes.
py-libp2p's HOP handler takes a reservation's peer id from the request and has only global limits
(docs/LIBP2P.md item 33), so ``p2p.relay`` asks this policy first, with the connection's authenticated
peer and its IP address, and hands the request to py-libp2p only when the policy admits it.

Rule 1: a reservation belongs to the peer that asked for it on its own connection (never to an id in
the request); one per peer (a second RESERVE renews it), ``reservations_per_ip`` per address,
``reservations`` in all. Expired ones are forgotten on every call, so the table never holds more than
``reservations`` entries.
Rule 2: a circuit counts against its source and its destination peer (``circuits_per_peer`` each),
the source's address (``circuits_per_ip``) and ``circuits`` in all, from CONNECT until it ends.
Rule 3: a circuit carries at most ``circuit_bytes`` (both directions together) for at most
``circuit_duration_s``; py-libp2p's relay loop enforces both, with the values set from these limits.
The defaults carry a negotiation (a few KiB), a job's control stream (logs and receipts) and small
inputs, and keep a relay cheap: 128 reservations x a few hundred bytes, 64 circuits x at most
``circuit_bytes`` in flight.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

KIB = 1024


@dataclass(frozen=True)
class RelayLimits:
    reservations: int = 128
    reservations_per_ip: int = 8
    reservation_ttl_s: int = 3600
    circuits: int = 64
    circuits_per_peer: int = 4
    circuits_per_ip: int = 16
    circuit_duration_s: int = 600
    circuit_bytes: int = 4096 * KIB

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"relay limit {name} must be a whole number >= 1, not {value!r}")


@dataclass
class _Reservation:
    ip: str
    expires_s: float


@dataclass
class RelayPolicy:
    """Who holds a reservation and which circuits are open; every admit says yes (None) or why not."""

    limits: RelayLimits = field(default_factory=RelayLimits)
    reservations: dict[str, _Reservation] = field(default_factory=dict)
    circuits: dict[int, tuple[str, str, str]] = field(default_factory=dict)  # id -> (src, src_ip, dst)
    refused: dict[str, int] = field(default_factory=dict)  # reason -> count
    circuits_total: int = 0  # circuits admitted over the relay's life
    _next_circuit: int = 0

    def _expire(self, now_s: float) -> None:
        for peer in [p for p, r in self.reservations.items() if r.expires_s <= now_s]:
            del self.reservations[peer]

    def _refuse(self, reason: str) -> str:
        self.refused[reason] = self.refused.get(reason, 0) + 1
        return reason

    def admit_reservation(self, peer: str, ip: str, now_s: float) -> str | None:
        """Rule 1: None and the reservation is held (or renewed) until ``now_s`` + ttl; else why not."""
        self._expire(now_s)
        held = self.reservations.get(peer)
        if held is None:
            if len(self.reservations) >= self.limits.reservations:
                return self._refuse("reservations")
            if sum(1 for r in self.reservations.values() if r.ip == ip) >= self.limits.reservations_per_ip:
                return self._refuse("reservations_per_ip")
        self.reservations[peer] = _Reservation(ip, now_s + self.limits.reservation_ttl_s)
        return None

    def has_reservation(self, peer: str, now_s: float) -> bool:
        self._expire(now_s)
        return peer in self.reservations

    def drop_reservation(self, peer: str) -> None:
        self.reservations.pop(peer, None)

    def admit_circuit(self, src: str, src_ip: str, dst: str, now_s: float) -> tuple[int | None, str | None]:
        """Rule 2: ``(circuit id, None)`` to go ahead (end it with ``end_circuit``), or ``(None, why not)``."""
        if not self.has_reservation(dst, now_s):
            return None, self._refuse("no_reservation")
        if len(self.circuits) >= self.limits.circuits:
            return None, self._refuse("circuits")
        for peer in (src, dst):
            if sum(1 for c in self.circuits.values() if peer in (c[0], c[2])) >= self.limits.circuits_per_peer:
                return None, self._refuse("circuits_per_peer")
        if sum(1 for c in self.circuits.values() if c[1] == src_ip) >= self.limits.circuits_per_ip:
            return None, self._refuse("circuits_per_ip")
        self._next_circuit += 1
        self.circuits_total += 1
        self.circuits[self._next_circuit] = (src, src_ip, dst)
        return self._next_circuit, None

    def end_circuit(self, circuit: int) -> None:
        self.circuits.pop(circuit, None)

    def status(self, now_s: float) -> dict[str, object]:
        self._expire(now_s)
        return {"reservations": len(self.reservations), "circuits": len(self.circuits),
                "circuits_total": self.circuits_total, "refused": dict(self.refused)}


CONTROL_RESERVE_BYTES = 64 * KIB  # a negotiation, a job's control messages, logs and receipts


def needs_direct(bulk_bytes: int, relay_allows_bytes: int) -> str | None:
    """Why a job cannot run over a relayed connection that allows ``relay_allows_bytes`` (None: it can).

    The image archive and inputs (``bulk_bytes``) and ``CONTROL_RESERVE_BYTES`` for the rest must fit.
    """
    if relay_allows_bytes <= 0 or bulk_bytes + CONTROL_RESERVE_BYTES <= relay_allows_bytes:
        return None
    return (f"needs a direct connection: hole punching failed, relay allows {relay_allows_bytes // KIB} KiB "
            f"and the job sends {bulk_bytes // KIB} KiB")


# flag -> (RelayLimits field, what it bounds), for `suanli bootstrap` (node.cli)
FLAGS = {
    "--relay-reservations": ("reservations", "reservations held at once, in all"),
    "--relay-reservations-per-ip": ("reservations_per_ip", "reservations held at once by one IP address"),
    "--relay-reservation-seconds": ("reservation_ttl_s", "how long a reservation lasts before renewal"),
    "--relay-circuits": ("circuits", "relayed connections at once, in all"),
    "--relay-circuits-per-peer": ("circuits_per_peer", "relayed connections at once to or from one peer"),
    "--relay-circuits-per-ip": ("circuits_per_ip", "relayed connections at once from one IP address"),
    "--relay-circuit-seconds": ("circuit_duration_s", "how long one relayed connection may last"),
    "--relay-circuit-bytes": ("circuit_bytes", "bytes one relayed connection may carry, both ways"),
}


def add_flags(parser: argparse.ArgumentParser) -> None:
    """``--no-relay`` and one flag per limit (defaults: ``RelayLimits()``)."""
    parser.add_argument("--no-relay", action="store_true",
                        help="do not act as a circuit relay for private nodes (on by default)")
    defaults = RelayLimits()
    for flag, (name, what) in FLAGS.items():
        parser.add_argument(flag, type=int, dest=f"relay_{name}", default=getattr(defaults, name), metavar="N",
                            help=f"{what} (default {getattr(defaults, name)})")


def limits_from(args: argparse.Namespace) -> RelayLimits | None:
    """The limits the flags set, or None with ``--no-relay``; ValueError names a bad one."""
    if getattr(args, "no_relay", False):
        return None
    return RelayLimits(**{name: getattr(args, f"relay_{name}") for name, _ in FLAGS.values()})
