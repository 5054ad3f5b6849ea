"""GPU inventory and per-process GPU metering against REAL NVML recordings of an H200.

The fixtures in tests/fixtures/nvml/ were recorded on a real NVIDIA H200 (driver 580.159.04); see the
README there. Nothing here invents NVML answers except where a table says so explicitly.
"""

from __future__ import annotations

import pytest

from sandbox.metering import Meter
from sandbox.nvml import (
    answered,
    container_id_of,
    foreign_pids,
    inventory,
    job_gpu_reading,
    newest_stamp,
    process_sm_pct,
)

CID = "2efceffc65434f6827587949e6b5f7677a979d93d15d4017eccf107a13a3e56d"


def test_inventory_from_idle_recording(nvml_recording):
    inv = inventory(nvml_recording("h200_idle.json"))
    assert inv.reason is None
    (g,) = inv.gpus
    assert g.index == 0 and g.uuid == "GPU-00000000-1111-2222-3333-444444444444"
    assert g.name == "NVIDIA H200" and g.memory_total_bytes == 150_754_820_096
    assert g.compute_capability == (9, 0) and g.driver_version == "580.159.04"
    assert g.cuda_driver_version == 13000 and g.power_limit_mw == 700_000 and g.mig_mode == 0


def test_one_unsupported_query_gives_none_not_a_crash(nvml_recording):
    record = nvml_recording("h200_idle.json")
    device = record["devices"][0]
    for key in ("nvmlDeviceGetName", "nvmlDeviceGetMemoryInfo", "nvmlDeviceGetCudaComputeCapability",
                "nvmlDeviceGetPowerManagementLimit", "nvmlDeviceGetMigMode"):
        device[key] = {"error": "NVMLError_NotSupported: Not Supported"}
    record["cuda_driver_version"] = {"error": "NVMLError_NotSupported: Not Supported"}
    (g,) = inventory(record).gpus
    assert (g.name, g.memory_total_bytes, g.compute_capability, g.power_limit_mw, g.mig_mode,
            g.cuda_driver_version) == (None,) * 6
    assert g.uuid and g.driver_version == "580.159.04"


@pytest.mark.parametrize("record, reason_part", [
    ({"error": "no NVIDIA driver or GPU on this machine (NVML: NVMLError_LibraryNotFound)"}, "no NVIDIA"),
    ({"driver_version": "580.159.04", "devices": []}, "no GPU"),
])
def test_no_gpu_gives_empty_inventory_and_reason(record, reason_part):
    inv = inventory(record)
    assert inv.gpus == () and reason_part in inv.reason


def test_busy_recording_attributes_memory_and_sm_to_the_process(nvml_recording):
    device = nvml_recording("h200_busy.json")["devices"][0]
    sample = {"compute_procs": device["nvmlDeviceGetComputeRunningProcesses"],
              "nvmlDeviceGetProcessUtilization": device["process_utilization"],
              "energy_mJ": device["nvmlDeviceGetTotalEnergyConsumption"]}
    reading = job_gpu_reading([sample], {422}, since_us=0)
    assert (reading.mem_bytes, reading.sm_pct, reading.energy_mj) == (1_184_890_880, 87, 4_665_339)
    assert job_gpu_reading([sample], {999}, since_us=0).mem_bytes == 0


def test_notfound_means_zero_percent(nvml_recording):
    idle = nvml_recording("h200_idle.json")["devices"][0]["process_utilization"]
    assert answered(idle) is None
    assert process_sm_pct(idle, {1, 2, 3}, 0) == 0


def test_timeline_absent_and_stale_samples_count_zero(nvml_recording):
    rec = nvml_recording("h200_two_processes_timeline.json")
    timeline = rec["timeline"]
    busy, idle = rec["busy_pid_seen_by_parent"], rec["idle_pid_seen_by_parent"]
    first = timeline[5]  # the first poll with both processes
    since = int(timeline[4]["t"] * 1_000_000)
    # The busy process's sample there is from 10 s earlier (before the poll window): stale, 0 %.
    assert process_sm_pct(first["nvmlDeviceGetProcessUtilization"], {busy}, since) == 0
    assert process_sm_pct(first["nvmlDeviceGetProcessUtilization"], {idle}, since) == 2
    later = timeline[8]
    since = int(timeline[7]["t"] * 1_000_000)
    assert process_sm_pct(later["nvmlDeviceGetProcessUtilization"], {busy}, since) == 98
    # The idle process holds memory but is absent from the utilisation list: 0 %.
    assert process_sm_pct(later["nvmlDeviceGetProcessUtilization"], {idle}, since) == 0
    assert job_gpu_reading([later], {idle}, since).mem_bytes == 2_961_178_624


def test_timeline_metered_end_to_end(nvml_recording):
    """Replay the recording through the meter as the runner would, once a second."""
    rec = nvml_recording("h200_two_processes_timeline.json")
    timeline = rec["timeline"]
    busy = rec["busy_pid_seen_by_parent"]
    meter = Meter()
    t0 = timeline[0]["t"]
    meter.event("start", 0)
    since = int(t0 * 1_000_000)
    sample = None
    for poll in timeline:
        now_ms = round((poll["t"] - t0) * 1000)
        sample = meter.observe(now_ms, gpu=job_gpu_reading([poll], {busy}, since))
        since = newest_stamp([poll], since)
    assert sample.gpu_mem_peak_bytes == 3_332_374_528
    # Fourteen ~1 s polls: 89 %, twelve at 98 %, 92 % → about 13.7 SM-seconds at 100 %
    # (pct·ms: 1 s at 100 % = 100 000).
    assert 1_300_000 <= sample.gpu_sm_pct_ms <= 1_450_000
    assert sample.energy_mj == timeline[-1]["energy_mJ"] - timeline[0]["energy_mJ"]
    assert sample.energy_mj == 10_066_390
    assert sample.wall_ms == round((timeline[-1]["t"] - t0) * 1000)


@pytest.mark.parametrize("text, expected", [
    (f"12:pids:/docker/{CID}\n0::/docker/{CID}\n", CID),  # cgroupfs (v1 and v2)
    (f"0::/system.slice/docker-{CID}.scope\n", CID),  # systemd driver
    (f"0::/kubepods/besteffort/pod1/{CID}\n", CID),
    ("0::/user.slice/user-1000.slice/session-2.scope\n", None),  # the owner's own process
    ("0::/\n", None),
])
def test_host_pid_to_container(text, expected):
    assert container_id_of(text) == expected


def test_foreign_processes_are_the_owners(nvml_recording):
    poll = nvml_recording("h200_two_processes_timeline.json")["timeline"][8]
    assert foreign_pids([poll], {436}) == {437}
    assert foreign_pids([poll], {436, 437}) == set()
