"""Each activity signal as a pure rule over readings (node.owner_signals), and its thin reader on this machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from node import owner_signals as sig

TIMELINE = Path(__file__).parent.parent / "fixtures" / "nvml" / "h200_two_processes_timeline.json"


@pytest.mark.parametrize("now, last, idle, used", [
    (100.0, None, 300, False),  # no terminal here: not watched
    (100.0, 99.0, 300, True),
    (400.0, 100.0, 300, False),  # exactly idle_s ago: idle
    (399.9, 100.0, 300, True),
    (100.0, 101.0, 0, False),  # idle_s = 0: input never counts
    (100.0, 105.0, 10, True),  # a clock step backwards counts as now
])
def test_input_rule_edges(now, last, idle, used):
    assert (sig.input_use(now, last, idle) is not None) is used


@pytest.mark.parametrize("pct, ceiling, used", [(None, 25, False), (80.0, 0, False), (25.0, 25, False),
                                                (25.1, 25, True), (100.0, 99, True)])
def test_cpu_rule_edges(pct, ceiling, used):
    assert (sig.cpu_use(pct, ceiling) is not None) is used


@pytest.mark.parametrize("temp, ceiling, used", [(None, 80, False), (90, 0, False), (79, 80, False), (80, 80, True)])
def test_temperature_rule_edges(temp, ceiling, used):
    assert (sig.temperature_use(temp, ceiling) is not None) is used


def test_battery_rule_and_parser():
    assert sig.battery_use(True, False) == "running on battery"
    assert sig.battery_use(True, True) is None and sig.battery_use(None, False) is None
    assert sig.battery_from([]) is None  # a desktop: not watched
    assert sig.battery_from([{"type": "Mains", "online": "0"}]) is None
    bat = {"type": "Battery", "status": "Discharging"}
    assert sig.battery_from([bat, {"type": "Mains", "online": "0"}]) is True
    assert sig.battery_from([bat, {"type": "Mains", "online": "1"}]) is False
    assert sig.battery_from([{"type": "Battery", "status": "Charging"}]) is False


def test_proc_stat_and_other_programs_cpu():
    prev = sig.parse_proc_stat("cpu  100 0 100 1000 50 0 0 0 0 0\ncpu0 ...")
    assert prev == (200, 1250)
    cur = (prev[0] + 300, prev[1] + 400)  # 300 of 400 jiffies busy
    assert sig.other_cpu_pct(prev, cur, ours_us=0, cores=4) == 75.0
    assert sig.other_cpu_pct(prev, cur, ours_us=2_000_000, cores=4) == 25.0  # 200 jiffies were our jobs'
    assert sig.other_cpu_pct(prev, cur, ours_us=9_000_000, cores=4) == 0.0
    assert sig.other_cpu_pct(prev, prev, ours_us=0, cores=4) is None


def test_exclusive_apps_by_comm_and_long_names():
    procs = [("bash", "/bin/bash"), ("steam", "/usr/bin/steam"), ("VeryLongGameNam", "/opt/VeryLongGameName.x86")]
    assert sig.matching_apps(["steam", "obs"], procs) == {"steam"}
    assert sig.matching_apps(["VeryLongGameName.x86"], procs) == {"VeryLongGameName.x86"}
    assert sig.matching_apps(["VeryLongGameNameOther"], procs) == frozenset()  # same 15 chars, other argv[0]
    assert sig.app_use(frozenset({"steam"}), ["steam"]) == "steam is running (an exclusive application)"
    assert sig.app_use(frozenset(), ["steam"]) is None


def test_foreign_gpu_rule_over_the_recorded_nvml_timeline():
    timeline = json.loads(TIMELINE.read_text())["timeline"]
    containers = {436: "a" * 64}  # pid 436 runs in our job's container; 437 is someone else's
    seen = [sig.foreign_gpu_from([entry], containers.get, {"a" * 64}) for entry in timeline]
    assert seen[0] == frozenset() and sig.gpu_use(seen[0]) is None  # nothing on the GPU yet
    first = next(i for i, s in enumerate(seen) if s)
    assert seen[first] == {437} and "pid 437" in (sig.gpu_use(seen[first]) or "")
    assert all(s == {437} for s in seen[first:])
    assert sig.foreign_gpu_from([timeline[-1]], containers.get, ()) == {436, 437}  # no job: both foreign
    assert sig.foreign_gpu_from([], containers.get, ()) is None  # no GPU: not watched


def test_reader_sees_a_pseudo_terminal_read():
    """Rule 2 on this machine: input read from a pty moves its access time (first key after 8 s quiet)."""
    master, slave = os.openpty()
    try:
        path = os.ttyname(slave)
        os.utime(path, (time.time() - 60, time.time() - 60))
        before = sig.read_last_input((path,))
        assert before is not None and before < time.time() - 50
        os.write(master, b"ls\n")
        os.read(slave, 16)
        after = sig.read_last_input((path,))
        assert after is not None and after >= time.time() - 2
    finally:
        os.close(master)
        os.close(slave)


def test_readers_on_this_machine_never_fail(tmp_path):
    assert sig.read_proc_stat() is not None
    assert sig.read_battery(str(tmp_path / "none")) is None
    assert sig.read_cgroup_usage_us([str(tmp_path / "gone" / "cpu.stat")]) == 0
    (tmp_path / "cpu.stat").write_text("usage_usec 1500\nuser_usec 1000\n")
    (tmp_path / "cpuacct.usage").write_text("2000000\n")
    assert sig.read_cgroup_usage_us([str(tmp_path / "cpu.stat"), str(tmp_path / "cpuacct.usage")]) == 3500


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rpartition(")")[2].split()[0]


def test_read_running_finds_a_process_by_its_name_and_not_once_it_exited(tmp_path):
    exe = tmp_path / "suanli-owner-ex"
    exe.write_bytes(Path(sys.executable).read_bytes())
    exe.chmod(0o755)
    proc = subprocess.Popen([str(exe), "-c", "import time; time.sleep(30)"])
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not sig.read_running(["suanli-owner-ex"]):
            time.sleep(0.05)
        assert sig.read_running(["suanli-owner-ex", "nothing-like-it"]) == {"suanli-owner-ex"}
        proc.kill()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and _state(proc.pid) != "Z":
            time.sleep(0.05)
        assert sig.read_running(["suanli-owner-ex"]) == frozenset()  # exited, not yet reaped: a zombie
    finally:
        proc.kill()
        proc.wait()
    assert sig.read_running(["suanli-owner-ex"]) == frozenset()


def test_the_hottest_gpu_from_real_h200_recordings():
    """The temperature reader's pure part over NVML as recorded on an H200 (35 °C idle, 57 °C busy): the
    owner's ceiling of 50 °C counts the busy machine as in use and the idle one not."""
    fixtures = TIMELINE.parent
    idle = json.loads((fixtures / "h200_idle.json").read_text())["devices"]
    busy = json.loads((fixtures / "h200_busy.json").read_text())["devices"]
    assert (sig.hottest_gpu_c(idle), sig.hottest_gpu_c(busy)) == (35, 57)
    assert sig.temperature_use(sig.hottest_gpu_c(idle), 50) is None
    assert sig.temperature_use(sig.hottest_gpu_c(busy), 50) == "GPU at 57 °C (gpu_max_temp_c = 50)"
    failed = [{"uuid": "GPU-1", "error": "NVMLError_GpuIsLost: GPU is lost"}]
    assert sig.hottest_gpu_c(failed + busy) == 57 and sig.hottest_gpu_c(failed) is None
