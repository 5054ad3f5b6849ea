"""Provider capacity reservations (pure): many buyers race for the last GPU, exactly one wins.

Rule 1: ``reserve`` succeeds only if the request fits in what is free *now*, and takes it at once, so
two reservations can never hold the same GPU, core or MiB (of memory or of disk).
Rule 2: a reservation is held for a provider-signed agreement until the buyer countersigns
(``confirm``) or ``hold_until_ms`` passes (``expire`` releases it); a confirmed one is released when the
job ends (``release``).
GPUs are allocated by UUID; the free capacity advertised in the next offer comes from ``free()``.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Allocation:
    gpu_uuids: tuple[str, ...]
    cpu_millis: int
    memory_mib: int
    disk_mib: int = 0


@dataclass
class _Hold:
    allocation: Allocation
    hold_until_ms: int | None  # None once confirmed
    owner: bytes = b""


@dataclass
class CapacityLedger:
    gpu_uuids: tuple[str, ...]
    cpu_millis: int
    memory_mib: int
    max_jobs: int
    disk_mib: int = 0  # scratch disk for the jobs' /io filesystems (sandbox.disk)
    _holds: dict[bytes, _Hold] = field(default_factory=dict)

    def free(self) -> Allocation:
        used_gpus = {u for h in self._holds.values() for u in h.allocation.gpu_uuids}
        return Allocation(
            gpu_uuids=tuple(u for u in self.gpu_uuids if u not in used_gpus),
            cpu_millis=self.cpu_millis - sum(h.allocation.cpu_millis for h in self._holds.values()),
            memory_mib=self.memory_mib - sum(h.allocation.memory_mib for h in self._holds.values()),
            disk_mib=self.disk_mib - sum(h.allocation.disk_mib for h in self._holds.values()))

    def reserve(self, key: bytes, gpu_uuids: tuple[str, ...], cpu_millis: int, memory_mib: int,
                hold_until_ms: int, owner: bytes = b"", disk_mib: int = 0) -> Allocation | None:
        """Take the resources for ``key`` (an agreement id), or None when they are not all free."""
        if key in self._holds or len(self._holds) >= self.max_jobs:
            return None
        free = self.free()
        if (not set(gpu_uuids) <= set(free.gpu_uuids) or cpu_millis > free.cpu_millis
                or memory_mib > free.memory_mib or disk_mib > free.disk_mib):
            return None
        allocation = Allocation(tuple(gpu_uuids), cpu_millis, memory_mib, disk_mib)
        self._holds[key] = _Hold(allocation, hold_until_ms, owner)
        return allocation

    def confirm(self, key: bytes, now_ms: int) -> Allocation | None:
        hold = self._holds.get(key)
        if hold is None or (hold.hold_until_ms is not None and hold.hold_until_ms <= now_ms):
            self._holds.pop(key, None)
            return None
        hold.hold_until_ms = None
        return hold.allocation

    def release(self, key: bytes) -> None:
        self._holds.pop(key, None)

    def expire(self, now_ms: int) -> list[bytes]:
        gone = [k for k, h in self._holds.items() if h.hold_until_ms is not None and h.hold_until_ms <= now_ms]
        for k in gone:
            del self._holds[k]
        return gone

    def unconfirmed_by(self, owner: bytes) -> int:
        """Bids ``owner`` holds and has not countersigned yet (a per-peer limit, market.deal)."""
        return sum(1 for h in self._holds.values() if h.owner == owner and h.hold_until_ms is not None)

    def held(self) -> int:
        """Reservations held, confirmed or not."""
        return len(self._holds)

    def running(self) -> int:
        return sum(1 for h in self._holds.values() if h.hold_until_ms is None)
