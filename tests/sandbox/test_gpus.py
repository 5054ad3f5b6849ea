"""sandbox.gpus without a GPU: pynvml's own return types become plain records, and no NVIDIA
driver gives an empty inventory with a reason (this CI machine has none)."""

from __future__ import annotations

import pynvml
import pytest

from sandbox.gpus import _plain, gpu_inventory, inventory_record
from sandbox.nvml import job_gpu_reading


def test_pynvml_structs_and_friendly_objects_become_records():
    memory = pynvml.c_nvmlMemory_t()
    memory.total, memory.free, memory.used = 150_754_820_096, 1, 2
    sample = pynvml.c_nvmlProcessUtilizationSample_t()
    sample.pid, sample.timeStamp, sample.smUtil = 436, 1_795_672_284_454_076, 98
    proc = pynvml.nvmlFriendlyObject({"pid": 436, "usedGpuMemory": 3_332_374_528,
                                      "gpuInstanceId": 0xFFFFFFFF, "computeInstanceId": 0xFFFFFFFF})
    assert _plain(memory) == {"total": 150_754_820_096, "free": 1, "used": 2}
    device = {"compute_procs": _plain([proc]), "nvmlDeviceGetProcessUtilization": _plain([sample]),
              "energy_mJ": _plain(12_651_043)}
    reading = job_gpu_reading([device], {436}, since_us=0)
    assert (reading.mem_bytes, reading.sm_pct, reading.energy_mj) == (3_332_374_528, 98, 12_651_043)


def test_machine_without_nvidia_gives_empty_inventory_and_reason():
    record = inventory_record()
    if "error" not in record:
        pytest.skip("this machine has a working NVIDIA driver")
    inv = gpu_inventory()
    assert inv.gpus == () and "NVIDIA" in inv.reason
