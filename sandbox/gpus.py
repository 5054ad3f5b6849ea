"""The only module that imports pynvml: NVML answers → plain records (parsed by sandbox.nvml).

Blocking and synchronous; the trio shells call it through `trio.to_thread.run_sync`.
Rule 1: every NVML call is wrapped: one that raises gives ``{"error": "NVMLError_..."}`` in the record
(→ None after parsing), never an exception; a machine without the NVIDIA library or driver gives a
record ``{"error": reason}`` and so an empty inventory with that reason.
Rule 2: the records have the shape of tests/fixtures/nvml/ (recorded on a real H200), so the code that
reads them is tested against real data on machines without a GPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

try:  # nvidia-ml-py provides the module `pynvml`
    import pynvml
except ImportError:  # pragma: no cover - the dependency is declared; a broken install still works
    pynvml = None

from sandbox.metering import GpuReading
from sandbox.nvml import Inventory, container_id_of, inventory, job_gpu_reading, newest_stamp

_INVENTORY_CALLS = ("nvmlDeviceGetName", "nvmlDeviceGetUUID", "nvmlDeviceGetCudaComputeCapability",
                    "nvmlDeviceGetPowerManagementLimit", "nvmlDeviceGetMigMode",
                    "nvmlDeviceGetTotalEnergyConsumption", "nvmlDeviceGetComputeMode")


def _plain(value: Any) -> Any:
    """A pynvml ctypes struct or list of them → dicts and lists of plain values."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "_fields_"):
        return {name: _plain(getattr(value, name)) for name, *_ in value._fields_}
    if pynvml is not None and isinstance(value, pynvml.nvmlFriendlyObject):  # process lists
        return {name: _plain(v) for name, v in vars(value).items()}
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value


def _ask(fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return _plain(fn(*args))
    except pynvml.NVMLError as exc:  # Rule 1
        return {"error": f"{type(exc).__name__}: {exc}"}


@contextmanager
def nvml_session() -> Iterator[str | None]:
    """nvmlInit/nvmlShutdown; yields None when NVML is usable, else the reason it is not."""
    if pynvml is None:
        yield "the nvidia-ml-py package is not installed"
        return
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        yield f"no NVIDIA driver or GPU on this machine (NVML: {type(exc).__name__}: {exc})"
        return
    try:
        yield None
    finally:
        pynvml.nvmlShutdown()


def inventory_record() -> dict[str, Any]:
    """What NVML says about every GPU, as a record (Rule 2)."""
    with nvml_session() as reason:
        if reason is not None:
            return {"error": reason}
        record: dict[str, Any] = {
            "driver_version": _ask(pynvml.nvmlSystemGetDriverVersion),
            "cuda_driver_version": _ask(pynvml.nvmlSystemGetCudaDriverVersion),
            "devices": [],
        }
        count = _ask(pynvml.nvmlDeviceGetCount)
        for index in range(count if isinstance(count, int) else 0):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            device: dict[str, Any] = {"index": index}
            for name in _INVENTORY_CALLS:
                device[name] = _ask(getattr(pynvml, name), handle)
            device["nvmlDeviceGetMemoryInfo"] = _ask(pynvml.nvmlDeviceGetMemoryInfo, handle)
            record["devices"].append(device)
        return record


def gpu_inventory() -> Inventory:
    """The GPUs of this machine (empty, with a reason, where there is no NVIDIA GPU)."""
    return inventory(inventory_record())


def _per_device(uuids: Sequence[str], read: Callable[[Any], dict[str, Any]]) -> list[dict[str, Any]]:
    """``{"uuid": ..., **read(handle)}`` for each GPU, or its ``error`` when NVML cannot find it."""
    out = []
    for uuid in uuids:
        try:
            handle = pynvml.nvmlDeviceGetHandleByUUID(uuid)
        except pynvml.NVMLError as exc:
            out.append({"uuid": uuid, "error": f"{type(exc).__name__}: {exc}"})
            continue
        out.append({"uuid": uuid, **read(handle)})
    return out


def process_records(uuids: Sequence[str], since_us: int) -> list[dict[str, Any]]:
    """One per-device sample record for each GPU in `uuids` (same keys as the timeline recording).

    Call inside `nvml_session()`; `since_us` is the lastSeenTimeStamp of the previous poll.
    """
    return _per_device(uuids, lambda handle: {
        "t": time.time(),
        "compute_procs": _ask(pynvml.nvmlDeviceGetComputeRunningProcesses, handle),
        "graphics_procs": _ask(pynvml.nvmlDeviceGetGraphicsRunningProcesses, handle),
        "nvmlDeviceGetProcessUtilization": _ask(pynvml.nvmlDeviceGetProcessUtilization, handle, since_us),
        "energy_mJ": _ask(pynvml.nvmlDeviceGetTotalEnergyConsumption, handle),
    })


def temperature_records(uuids: Sequence[str]) -> list[dict[str, Any]]:
    """Each GPU's core temperature in °C under the key the recordings use (``nvmlDeviceGetTemperature``), or
    an ``error`` (call inside ``nvml_session()``): the owner's GPU temperature ceiling (node.owner_signals)."""
    return _per_device(uuids, lambda handle: {
        "nvmlDeviceGetTemperature": _ask(pynvml.nvmlDeviceGetTemperature, handle, pynvml.NVML_TEMPERATURE_GPU)})


def pid_container_id(pid: int) -> str | None:
    """The container id of host PID `pid` (nvml Rule 2), or None (gone, or not in a container)."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            return container_id_of(f.read())
    except OSError:
        return None


class JobGpuProbe:
    """Per-job GPU readings: NVML per-process data for the job's GPUs and host PIDs. Blocking.

    Holds an NVML session from `open()` to `close()`; call each method in a worker thread.
    """

    def __init__(self, uuids: Sequence[str], container_id: str) -> None:
        self.uuids, self.container_id = tuple(uuids), container_id
        self.since_us = int(time.time() * 1_000_000)  # samples from before the job are stale
        self._session: Any = None

    def open(self) -> str | None:
        self._session = nvml_session()
        return self._session.__enter__()

    def close(self) -> None:
        if self._session is not None:
            self._session.__exit__(None, None, None)
            self._session = None

    def read(self) -> GpuReading:
        devices = process_records(self.uuids, self.since_us)
        pids = {p.get("pid") for d in devices for key in ("compute_procs", "graphics_procs")
                for p in (d.get(key) if isinstance(d.get(key), list) else [])}
        ours = {pid for pid in pids if isinstance(pid, int) and pid_container_id(pid) == self.container_id}
        reading = job_gpu_reading(devices, ours, self.since_us)
        self.since_us = newest_stamp(devices, self.since_us)
        return reading
