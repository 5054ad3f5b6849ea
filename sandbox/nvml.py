"""NVML records → GPU inventory and per-job GPU readings (pure).

sandbox.gpus (the only module that imports pynvml) turns NVML answers into plain records of the same
shape as the recordings in tests/fixtures/nvml/: a dict per device keyed by the pynvml function name,
where a call NVML could not answer holds ``{"error": "NVMLError_..."}``. This module reads them.

Rule 1: one unsupported query gives None for that field, never a crash and never a guessed value.
Rule 2: NVML reports host PIDs (the driver ignores PID namespaces); a PID belongs to a job when its
/proc/<pid>/cgroup names the job's container id.
Rule 3: nvmlDeviceGetProcessUtilization returns one sample per process that had non-zero utilisation
since `lastSeenTimeStamp`; a process absent from it, or NVMLError_NotFound for the whole call, is 0 %.
A sample not newer than the previous poll is stale and counts 0 % too.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sandbox.metering import GpuReading
from sandbox.spec import GpuInfo

_CONTAINER_ID = re.compile(r"(?:docker[-/]|/)([0-9a-f]{64})(?:\.scope)?\b")


@dataclass(frozen=True)
class Inventory:
    """The GPUs this machine can offer, or an empty list and why."""

    gpus: tuple[GpuInfo, ...]
    reason: str | None = None  # set when gpus is empty because NVML is absent or failed


def answered(value: Any) -> Any:
    """The value of one NVML query, or None where the call raised (Rule 1)."""
    return None if isinstance(value, Mapping) and "error" in value else value


def _int(value: Any) -> int | None:
    value = answered(value)
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def _str(value: Any) -> str | None:
    value = answered(value)
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    return value if isinstance(value, str) else None


def gpu_info(device: Mapping[str, Any], record: Mapping[str, Any]) -> GpuInfo:
    memory = answered(device.get("nvmlDeviceGetMemoryInfo"))
    cc = answered(device.get("nvmlDeviceGetCudaComputeCapability"))
    mig = answered(device.get("nvmlDeviceGetMigMode"))
    return GpuInfo(
        index=int(device.get("index", 0)),
        uuid=_str(device.get("nvmlDeviceGetUUID")) or "",
        name=_str(device.get("nvmlDeviceGetName")),
        memory_total_bytes=_int(memory.get("total")) if isinstance(memory, Mapping) else None,
        compute_capability=(int(cc[0]), int(cc[1])) if isinstance(cc, Sequence) and len(cc) == 2 else None,
        driver_version=_str(record.get("driver_version")),
        cuda_driver_version=_int(record.get("cuda_driver_version")),
        power_limit_mw=_int(device.get("nvmlDeviceGetPowerManagementLimit")),
        mig_mode=_int(mig[0]) if isinstance(mig, Sequence) and mig else None,
    )


def inventory(record: Mapping[str, Any]) -> Inventory:
    """The inventory in an NVML record; a record with a top-level error gives no GPUs and its reason."""
    if "error" in record:
        return Inventory((), str(record["error"]))
    gpus = tuple(gpu_info(d, record) for d in record.get("devices") or [])
    usable = tuple(g for g in gpus if g.uuid)  # a GPU without a UUID cannot be requested (plan Rule 2)
    if not usable:
        return Inventory((), "NVML answered but reported no GPU with a UUID")
    return Inventory(usable)


def container_id_of(proc_cgroup: str) -> str | None:
    """The 64-hex container id in a /proc/<pid>/cgroup text (cgroupfs or systemd driver), or None."""
    match = _CONTAINER_ID.search(proc_cgroup)
    return match[1] if match else None


def process_sm_pct(utilisation: Any, pids: Collection[int], since_us: int) -> int:
    """Σ SM % over `pids` of samples newer than `since_us` (Rule 3); the max sample per PID."""
    samples = answered(utilisation)
    if not isinstance(samples, Sequence):
        return 0
    best: dict[int, int] = {}
    for s in samples:
        pid, stamp, sm = s.get("pid"), s.get("timeStamp", 0), s.get("smUtil", 0)
        if pid in pids and stamp > since_us:
            best[pid] = max(best.get(pid, 0), int(sm))
    return sum(best.values())


def process_memory_bytes(device: Mapping[str, Any], pids: Collection[int]) -> int:
    total = 0
    for key in ("compute_procs", "graphics_procs"):
        for proc in answered(device.get(key)) or []:
            used = proc.get("usedGpuMemory")
            if proc.get("pid") in pids and isinstance(used, int):
                total += used
    return total


def job_gpu_reading(devices: Sequence[Mapping[str, Any]], pids: Collection[int],
                    since_us: int) -> GpuReading:
    """The job's GPU use from one poll of its GPUs (`devices`: one per-device sample record each)."""
    energies = [_int(d.get("energy_mJ")) for d in devices]
    energy = None if not energies or any(e is None for e in energies) else sum(e for e in energies if e)
    return GpuReading(
        mem_bytes=sum(process_memory_bytes(d, pids) for d in devices),
        sm_pct=sum(process_sm_pct(d.get("nvmlDeviceGetProcessUtilization"), pids, since_us)
                   for d in devices),
        energy_mj=energy,
    )


def newest_stamp(devices: Sequence[Mapping[str, Any]], since_us: int) -> int:
    """The `lastSeenTimeStamp` to pass on the next poll."""
    stamps = [int(s.get("timeStamp", 0)) for d in devices
              for s in (answered(d.get("nvmlDeviceGetProcessUtilization")) or [])]
    return max([since_us, *stamps])


def foreign_pids(devices: Sequence[Mapping[str, Any]], ours: Collection[int]) -> set[int]:
    """GPU processes that belong to no job of ours: the owner is using the machine."""
    seen = {p.get("pid") for d in devices for key in ("compute_procs", "graphics_procs")
            for p in (answered(d.get(key)) or [])}
    return {pid for pid in seen if isinstance(pid, int) and pid not in ours}
