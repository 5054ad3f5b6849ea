"""Issue 13 pure cores: the job's disk in the plan (H4), the log rate limit and the log body decoder
(M5), which /io/out entries are handed back (L4). Tables, no Docker."""

from __future__ import annotations

import tarfile

import pytest

from p2p.errors import SandboxError
from sandbox.disk import disk_support_problem
from sandbox.jobio import LogFrames, LogRateLimit, output_entry_problem
from sandbox.plan import check_disk_room, default_disk_mib, disk_reserve_bytes, plan_container
from sandbox.spec import EngineFacts, ProviderPolicy, SandboxJob

IMAGE = "sha256:" + "ab" * 32
RUNC = EngineFacts("1.41", frozenset({"runc"}), 1, "cgroupfs")
MIB = 1 << 20


def plan(spec, policy):
    return plan_container(spec, policy, RUNC, image_env=[], free_gpus=(), node_id="n", agreement_id="cd" * 32,
                          job_key="k1")


# -- H4: disk ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("disk_mib, outcome", [
    (1024, 1024 * MIB),
    (1, 16 * MIB),            # the floor: mkfs leaves nothing below 16 MiB
])
def test_the_plan_sizes_the_disk(disk_mib, outcome):
    p = plan(SandboxJob(IMAGE, ("true",), disk_mib=disk_mib), ProviderPolicy(disk_dir="/var/lib/suanli/disks"))
    assert p.disk_bytes == outcome and p.disk_file == "/var/lib/suanli/disks/suanli-io-k1.ext4"


GIB = 1 << 30


@pytest.mark.parametrize("fs, reserve", [
    (4 * GIB, GIB),            # a small disk: at least 1 GiB
    (20 * GIB, GIB),           # 5 % = 1 GiB
    (100 * GIB, 5 * GIB),      # 5 %
    (2000 * GIB, 100 * GIB),
])
def test_the_provider_keeps_a_reserve_of_1_gib_or_5_percent(fs, reserve):
    assert disk_reserve_bytes(fs) == reserve


@pytest.mark.parametrize("need, free, fs, ok", [
    (GIB, 10 * GIB, 100 * GIB, True),           # 10 free - 5 reserve = 5 usable
    (5 * GIB, 10 * GIB, 100 * GIB, True),       # exactly the usable space
    (5 * GIB + 1, 10 * GIB, 100 * GIB, False),  # one byte into the reserve
    (10 * GIB, 10 * GIB, 100 * GIB, False),     # all that is free: the provider's SQLite would find 0 bytes
    (1, GIB, 4 * GIB, False),                   # free is all reserve
    (1, 0, 4 * GIB, False),
    (512 * MIB, 2 * GIB, 4 * GIB, True),
])
def test_a_job_or_upload_must_leave_the_reserve_free(need, free, fs, ok):
    if ok:
        check_disk_room(need, free, fs, what="the job's disk")
        return
    with pytest.raises(SandboxError, match="the job's disk needs .* MiB of disk, but this provider has") as caught:
        check_disk_room(need, free, fs, what="the job's disk")
    assert caught.value.reason == "disk_full" and caught.value.fields["actual"] == max(0, free - disk_reserve_bytes(fs))


@pytest.mark.parametrize("free, fs, budgets, mib", [
    (100 * GIB, 200 * GIB, 18 * GIB, (100 - 10 - 18) * 1024 // 2),  # half of what the reserve and budgets leave
    (20 * GIB, 40 * GIB, 18 * GIB, (20 - 2 - 18) * 1024 // 2),
    (10 * GIB, 40 * GIB, 18 * GIB, 0),                               # nothing to offer, never negative
])
def test_the_default_disk_offer_leaves_the_reserve_and_the_image_budgets(free, fs, budgets, mib):
    assert default_disk_mib(free, fs, budgets) == mib


@pytest.mark.parametrize("euid, tools, needle", [
    (1000, {"losetup", "mkfs.ext4"}, "must run as root"),
    (0, {"losetup"}, "mkfs.ext4 not found"),
    (0, set(), "losetup and mkfs.ext4 not found"),
    (0, {"losetup", "mkfs.ext4"}, None),
])
def test_a_provider_that_cannot_make_job_disks_says_why_in_one_line(euid, tools, needle):
    problem = disk_support_problem(euid, lambda name: f"/sbin/{name}" if name in tools else None)
    if needle is None:
        assert problem is None
    else:
        assert needle in problem and "\n" not in problem and "docs/SANDBOX.md" in problem


def test_without_a_disk_dir_io_is_a_plain_volume_and_a_policy_limit_still_applies():
    p = plan(SandboxJob(IMAGE, ("true",), disk_mib=4096), ProviderPolicy())
    assert (p.disk_bytes, p.disk_file) == (0, None)
    with pytest.raises(SandboxError, match="disk_mib=4096, above this provider's limit 2048"):
        plan(SandboxJob(IMAGE, ("true",), disk_mib=4096), ProviderPolicy(max_disk_mib=2048))


def test_the_owner_lock_is_labelled():
    p = plan(SandboxJob(IMAGE, ("true",)), ProviderPolicy(owner_lock="/d/provider.lock"))
    assert p.labels["suanli.owner"] == "/d/provider.lock"


# -- M5: the log rate limit --------------------------------------------------------------------------------

def test_a_burst_then_the_rate():
    limit = LogRateLimit(100, 300)
    assert [limit.admit(100, 0.0) for _ in range(4)] == [True, True, True, False]
    assert limit.admit(100, 0.5) is False  # 50 bytes refilled
    assert limit.admit(100, 1.0) is True   # 100
    assert limit.admit(1000, 100.0) is False  # never more than the burst at once
    assert (limit.admitted_bytes, limit.dropped_bytes, limit.dropped_lines) == (400, 1200, 3)
    assert limit.note() == "1200 bytes of logs dropped: rate limit 100 B/s"


def test_over_any_window_at_most_rate_times_t_plus_burst():
    limit = LogRateLimit(1000, 5000)
    admitted = sum(40 for i in range(100_000) if limit.admit(40, i * 0.0001))  # 10 s of a flood
    assert admitted <= 1000 * 10 + 5000 and admitted >= 1000 * 9
    assert LogRateLimit(1, 1).note() is None


@pytest.mark.parametrize("rate, burst", [(0, 1), (1, 0), (-5, 10)])
def test_a_limit_needs_a_positive_rate_and_burst(rate, burst):
    with pytest.raises(SandboxError):
        LogRateLimit(rate, burst)


def _frame(data: bytes, stream: int = 1) -> bytes:
    return bytes([stream, 0, 0, 0]) + len(data).to_bytes(4, "big") + data


def _chunked(body: bytes, size: int) -> bytes:
    out = b"".join(b"%x\r\n" % len(body[i:i + size]) + body[i:i + size] + b"\r\n" for i in range(0, len(body), size))
    return out + b"0\r\n\r\n"


@pytest.mark.parametrize("chunk, feed", [(7, 1), (7, 5), (1000, 3), (3, 4096)])
def test_log_frames_undo_chunking_and_stream_framing_however_split(chunk, feed):
    body = _frame(b"hello\n") + _frame(b"err\n", 2) + _frame(b"x" * 300 + b"\n") + _frame(b"")
    wire = _chunked(body, chunk)
    frames, out = LogFrames(), b""
    for i in range(0, len(wire), feed):
        out += frames.feed(wire[i:i + feed])
    assert out == b"hello\nerr\n" + b"x" * 300 + b"\n" and frames.ended


@pytest.mark.parametrize("wire", [b"zz\r\n", b"1" * 100])
def test_malformed_log_bodies_end_the_stream_without_raising(wire):
    frames = LogFrames()
    assert frames.feed(wire) == b"" and frames.ended


# -- L4: /io/out entries -------------------------------------------------------------------------------

def _member(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


@pytest.mark.parametrize("member, problem", [
    (_member("out/a.txt", tarfile.REGTYPE), None),
    (_member("out", tarfile.DIRTYPE), None),
    (_member("out/sub", tarfile.DIRTYPE), None),
    (_member("out/l", tarfile.SYMTYPE, "/etc/passwd"), "a symbolic link (to '/etc/passwd')"),
    (_member("out/h", tarfile.LNKTYPE, "out/a.txt"), "a hard link"),
    (_member("out/c", tarfile.CHRTYPE), "a device or fifo"),
    (_member("out/p", tarfile.FIFOTYPE), "a device or fifo"),
    (_member("etc/x", tarfile.REGTYPE), "outside out/"),
    (_member("out/../../x", tarfile.REGTYPE), "a path that leaves out/"),
])
def test_which_output_entries_are_handed_back(member, problem):
    assert output_entry_problem(member) == problem
