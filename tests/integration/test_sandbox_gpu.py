"""GPU inventory and per-process GPU metering against a REAL NVIDIA GPU and a real CUDA process.

Marked `gpu`: it skips cleanly (with NVML's reason) on machines without an NVIDIA driver, such as CI.
Where a GPU is present it needs nothing but the driver: the CUDA process is a child Python that
drives libcuda through ctypes and JIT-loads a tiny PTX spin kernel (no toolkit, no torch, no image).
Run it with `pytest -m gpu -s tests/integration/test_sandbox_gpu.py` and quote what it prints.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from sandbox.gpus import gpu_inventory, nvml_session, process_records
from sandbox.metering import Meter
from sandbox.nvml import foreign_pids, job_gpu_reading, newest_stamp

pytestmark = pytest.mark.gpu

CUDA_CHILD = r'''
import ctypes, os, sys, time
PTX = b"""
.version 7.0
.target sm_50
.address_size 64
.visible .entry spin(.param .u64 out, .param .u32 n)
{
  .reg .pred %p;
  .reg .b32 %r<5>;
  .reg .b64 %rd<3>;
  ld.param.u64 %rd1, [out];
  ld.param.u32 %r1, [n];
  mov.u32 %r2, 0;
  mov.u32 %r3, 12345;
LOOP:
  mul.lo.u32 %r3, %r3, 1664525;
  add.u32 %r3, %r3, 1013904223;
  add.u32 %r2, %r2, 1;
  setp.lt.u32 %p, %r2, %r1;
  @%p bra LOOP;
  cvta.to.global.u64 %rd2, %rd1;
  st.global.u32 [%rd2], %r3;
  ret;
}
\0"""
cuda = ctypes.CDLL("libcuda.so.1")
def ok(rc, what):
    if rc != 0:
        sys.exit(f"{what} failed: CUresult {rc}")
ok(cuda.cuInit(0), "cuInit")
dev, ctx, mod, fn = ctypes.c_int(), ctypes.c_void_p(), ctypes.c_void_p(), ctypes.c_void_p()
ok(cuda.cuDeviceGet(ctypes.byref(dev), 0), "cuDeviceGet")
ok(cuda.cuCtxCreate_v2(ctypes.byref(ctx), 0, dev), "cuCtxCreate")
buf = ctypes.c_uint64()
ok(cuda.cuMemAlloc_v2(ctypes.byref(buf), ctypes.c_size_t(512 << 20)), "cuMemAlloc")
ok(cuda.cuModuleLoadData(ctypes.byref(mod), ctypes.c_char_p(PTX)), "cuModuleLoadData")
ok(cuda.cuModuleGetFunction(ctypes.byref(fn), mod, b"spin"), "cuModuleGetFunction")
out, n = ctypes.c_uint64(buf.value), ctypes.c_uint32(1 << 20)
args = (ctypes.c_void_p * 2)(ctypes.cast(ctypes.byref(out), ctypes.c_void_p),
                             ctypes.cast(ctypes.byref(n), ctypes.c_void_p))
print("ready", os.getpid(), flush=True)
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    ok(cuda.cuLaunchKernel(fn, 4096, 1, 1, 256, 1, 1, 0, None, args, None), "cuLaunchKernel")
    ok(cuda.cuCtxSynchronize(), "cuCtxSynchronize")
print("done", flush=True)
'''


def test_inventory_and_per_process_metering_on_a_real_gpu():
    inv = gpu_inventory()
    if not inv.gpus:
        pytest.skip(f"no NVIDIA GPU here: {inv.reason}")
    for g in inv.gpus:
        print("inventory:", g)
        assert g.uuid.startswith(("GPU-", "MIG-")) and g.name and g.driver_version
        assert g.memory_total_bytes and g.memory_total_bytes > 1 << 30
    child = subprocess.Popen([sys.executable, "-c", CUDA_CHILD, "8"], stdout=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline().split()
        if not line or line[0] != "ready":
            child.kill()
            pytest.fail(f"the CUDA child did not start: {line} (exit {child.wait(10)})")
        pid = int(line[1])
        assert pid == child.pid
        uuids = [g.uuid for g in inv.gpus]
        meter = Meter()
        t0 = time.monotonic()
        meter.event("start", 0)
        since = int(time.time() * 1_000_000)
        seen_pid = False
        with nvml_session() as reason:
            assert reason is None
            for _ in range(6):  # bounded: six polls, about a second apart
                time.sleep(1.0)
                devices = process_records(uuids, since)
                reading = job_gpu_reading(devices, {pid}, since)
                since = newest_stamp(devices, since)
                sample = meter.observe(int((time.monotonic() - t0) * 1000), gpu=reading)
                seen_pid |= reading.mem_bytes > 0
                print(f"poll: mem={reading.mem_bytes} B sm={reading.sm_pct}% energy={reading.energy_mj} mJ "
                      f"foreign={sorted(foreign_pids(devices, {pid}))} → {sample}")
    finally:
        child.kill()
        child.wait(10)
    assert seen_pid, "NVML never listed the CUDA child's host PID"
    assert sample.gpu_mem_peak_bytes >= 512 << 20  # the child's 512 MiB allocation, plus its context
    assert sample.gpu_sm_pct_ms > 0, "the busy child never showed SM utilisation"
    if reading.energy_mj is not None:  # some consumer boards do not support the energy counter
        assert sample.energy_mj > 0
