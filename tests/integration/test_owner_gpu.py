"""The foreign-GPU signal on a REAL GPU (issue 18): a CUDA process started outside Docker while the owner
watch's reader polls at the default ``poll_ms`` is seen within a second, and decides ``owner_active``.

Marked ``gpu``: it skips (with NVML's reason) where there is no NVIDIA driver. The CUDA process is
test_sandbox_gpu's child (libcuda through ctypes, no toolkit). Run it with
``pytest -m gpu -s tests/integration/test_owner_gpu.py`` and quote what it prints.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from node.owner_prefs import OwnerPrefs
from node.owner_state import AVAILABLE, OWNER_ACTIVE, decide
from node.owner_watch import SignalReader
from sandbox.gpus import gpu_inventory

pytestmark = pytest.mark.gpu


def _cuda_child() -> str:
    spec = importlib.util.spec_from_file_location("_sandbox_gpu", Path(__file__).with_name("test_sandbox_gpu.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(module.CUDA_CHILD)


def test_a_cuda_process_outside_our_jobs_is_seen_within_a_second():
    inv = gpu_inventory()
    if not inv.gpus:
        pytest.skip(f"no NVIDIA GPU here: {inv.reason}")
    prefs = OwnerPrefs(idle_s=0)  # only the GPU is watched: the device machine's terminals are not the owner
    reader = SignalReader(prefs, (), [g.uuid for g in inv.gpus], list, set)
    try:
        now = time.time()
        before = decide(prefs, reader.read(now, time.monotonic()), datetime.fromtimestamp(now).astimezone())
        assert reader.nvml_problem is None and before.state == AVAILABLE, before
        child = subprocess.Popen([sys.executable, "-c", _cuda_child(), "10"], stdout=subprocess.PIPE, text=True)
        try:
            line = child.stdout.readline().split() if child.stdout else []
            assert line and line[0] == "ready", f"the CUDA child did not start: {line}"
            ready = time.monotonic()  # its context and memory exist from here
            verdict, seen_after_s = before, None
            for _ in range(40):  # 10 s at most, at the default poll_ms
                now = time.time()
                verdict = decide(prefs, reader.read(now, time.monotonic()), datetime.fromtimestamp(now).astimezone())
                if verdict.state == OWNER_ACTIVE:
                    seen_after_s = time.monotonic() - ready
                    break
                time.sleep(prefs.poll_ms / 1000)
        finally:
            child.kill()
            child.wait(10)
    finally:
        reader.close()
    print(f"foreign CUDA process (pid {child.pid}) seen {seen_after_s} s after its context was ready: {verdict}")
    assert seen_after_s is not None and seen_after_s <= 1.0
    assert "GPU process" in verdict.reason and verdict.gpu_in_use
