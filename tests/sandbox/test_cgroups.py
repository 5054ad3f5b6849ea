"""Locating and parsing a container's cgroup counters, v1 and v2 (pure).

The v1 texts are as read on the CI machine (Docker 20.10, cgroupfs driver, hybrid v1 + unified);
the v2 texts are the layout of a systemd-driver host (Docker 24+, kernel >= 5.19).
"""

from __future__ import annotations

import pytest

from sandbox.cgroups import locate, parse_v1, parse_v2, reading_from_stats

CID = "2efceffc65434f6827587949e6b5f7677a979d93d15d4017eccf107a13a3e56d"

MOUNTS_V1 = """31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
PROC_V1 = "\n".join(f"{i}:{c}:/docker/{CID}" for i, c in
                    enumerate(["cpu", "cpuacct", "cpuset", "memory", "pids"], 1)) + f"\n0::/docker/{CID}\n"
MOUNTS_COMBINED = MOUNTS_V1.replace("rw,cpu\n", "rw,cpu,cpuacct\n").replace(
    "33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct\n", "").replace(
    "/sys/fs/cgroup/cpu ", "/sys/fs/cgroup/cpu,cpuacct ")
PROC_COMBINED = f"2:cpu,cpuacct:/docker/{CID}\n4:memory:/docker/{CID}\n8:pids:/docker/{CID}\n"
MOUNTS_V2 = "25 20 0:22 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
PROC_V2 = f"0::/system.slice/docker-{CID}.scope\n"


@pytest.mark.parametrize("proc, mounts, version, cpu_path, peak_path", [
    (PROC_V1, MOUNTS_V1, 1, f"/sys/fs/cgroup/cpuacct/docker/{CID}/cpuacct.usage",
     f"/sys/fs/cgroup/memory/docker/{CID}/memory.max_usage_in_bytes"),
    (PROC_COMBINED, MOUNTS_COMBINED, 1, f"/sys/fs/cgroup/cpu,cpuacct/docker/{CID}/cpuacct.usage",
     f"/sys/fs/cgroup/memory/docker/{CID}/memory.max_usage_in_bytes"),
    (PROC_V2, MOUNTS_V2, 2, f"/sys/fs/cgroup/system.slice/docker-{CID}.scope/cpu.stat",
     f"/sys/fs/cgroup/system.slice/docker-{CID}.scope/memory.peak"),
    (f"0::/docker/{CID}\n", MOUNTS_V2, 2, f"/sys/fs/cgroup/docker/{CID}/cpu.stat",
     f"/sys/fs/cgroup/docker/{CID}/memory.peak"),
])
def test_locate(proc, mounts, version, cpu_path, peak_path):
    paths = locate(proc, mounts)
    assert paths.version == version
    assert paths.files["cpu"] == cpu_path and paths.files["mem_peak"] == peak_path


def test_locate_nothing_mounted():
    assert locate(PROC_V2, "") is None


@pytest.mark.parametrize("parse, texts, expected", [
    (parse_v1, {"cpu": "23256477\n", "mem_current": "3825664\n", "mem_peak": "4083712\n",
                "oom": "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n", "pids": "3\n"},
     (23256477, 3825664, 4083712, 1, 3)),
    (parse_v1, {"cpu": "5\n", "mem_current": "7\n", "mem_peak": None, "oom": None, "pids": None},
     (5, 7, None, None, None)),
    (parse_v2, {"cpu": "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n", "mem_current": "4096\n",
                "mem_peak": "8192\n", "oom": "low 0\nhigh 0\nmax 2\noom 1\noom_kill 1\n", "pids": "2\n"},
     (1_500_000, 4096, 8192, 1, 2)),
    (parse_v2, {"cpu": "usage_usec 10\n", "mem_current": "1\n", "mem_peak": None},
     (10_000, 1, None, None, None)),
])
def test_parse(parse, texts, expected):
    r = parse(texts)
    assert (r.cpu_usage_ns, r.mem_current_bytes, r.mem_peak_bytes, r.oom_kills, r.pids_current) == expected


@pytest.mark.parametrize("parse", [parse_v1, parse_v2])
def test_parse_gone_cgroup_is_none(parse):
    assert parse({"cpu": None, "mem_current": None}) is None


def test_stats_document():
    doc = {"cpu_stats": {"cpu_usage": {"total_usage": 123_000_000}},
           "memory_stats": {"usage": 10, "max_usage": 20}, "pids_stats": {"current": 4}}
    r = reading_from_stats(doc)
    assert (r.cpu_usage_ns, r.mem_current_bytes, r.mem_peak_bytes, r.pids_current) == (123_000_000, 10, 20, 4)
    assert reading_from_stats({"cpu_stats": {}, "memory_stats": {}}) is None


def test_counter_files_are_read_whole_and_a_missing_one_is_none(tmp_path):
    from sandbox.cgroups import _read

    small, large = tmp_path / "cpuacct.usage", tmp_path / "memory.stat"
    small.write_text("123456789\n")
    large.write_text("".join(f"key{i} {i}\n" for i in range(20_000)))  # over one read's 64 KiB
    assert _read(str(small)) == "123456789\n"
    assert _read(str(large)) == large.read_text()
    assert _read(str(tmp_path / "gone")) is None
