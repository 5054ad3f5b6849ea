"""node.joblog: the buyer's stored copy of a job's output (format, bound, permissions, cut records)."""

from __future__ import annotations

import stat

from node import joblog
from node.joblog import MAX_LOG_BYTES, TRUNCATED, keeper, log_path, read_records

AG = bytes(range(32))


def test_lines_come_back_exactly_with_their_streams(tmp_path):
    keep = keeper(tmp_path, AG)
    lines = [("stdout", b"plain"), ("stderr", b"with\nnewline"), ("stdout", b""), ("stdout", bytes(range(256)))]
    for stream, data in lines:
        keep(stream, data)
    path = log_path(tmp_path, AG)
    assert list(read_records(path)) == lines
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_the_file_is_bounded_and_says_where_it_stopped(tmp_path):
    keep = keeper(tmp_path, AG)
    chunk = b"x" * 60_000
    for _ in range(MAX_LOG_BYTES // len(chunk) + 10):
        keep("stdout", chunk)
    path = log_path(tmp_path, AG)
    assert path.stat().st_size <= MAX_LOG_BYTES
    records = list(read_records(path))
    assert records[-1] == ("stderr", TRUNCATED)
    assert all(r == ("stdout", chunk) for r in records[:-1])


def test_a_cut_record_at_the_end_is_skipped(tmp_path):
    keep = keeper(tmp_path, AG)
    keep("stdout", b"whole")
    path = log_path(tmp_path, AG)
    with open(path, "ab") as fh:
        fh.write(joblog.encode_record("stdout", b"cut short")[:-3])
    assert list(read_records(path)) == [("stdout", b"whole")]


def test_a_log_that_cannot_be_written_never_fails_the_job(tmp_path):
    (tmp_path / "logs").write_text("a file where the directory belongs")
    keep = keeper(tmp_path, AG)
    keep("stdout", b"lost, and the job goes on")
    keep("stdout", b"again")
