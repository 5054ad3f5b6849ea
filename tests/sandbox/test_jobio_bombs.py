"""Tar archives from strangers: sparse files and size claims that would expand in memory are refused."""

from __future__ import annotations

import io
import tarfile

import pytest

from p2p.errors import SandboxError
from sandbox.jobio import read_tar_files


def _tar(members):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def test_plain_files_are_read():
    info = tarfile.TarInfo("a/b.txt")
    info.size = 3
    assert read_tar_files(_tar([(info, b"abc")]), what="the inputs") == {"a/b.txt": b"abc"}


def test_a_sparse_member_is_refused():
    info = tarfile.TarInfo("bomb")
    info.type = tarfile.GNUTYPE_SPARSE
    info.size = 0
    data = _tar([(info, b"")])
    with pytest.raises(SandboxError, match="sparse"):
        read_tar_files(data, what="the inputs")


def test_members_claiming_more_than_the_archive_holds_are_refused():
    info = tarfile.TarInfo("big")
    info.size = 10_000
    data = bytearray(_tar([(info, b"x" * 10_000)]))
    truncated = bytes(data[:2048]) + bytes(1024)  # header says 10,000 bytes; far fewer are there
    with pytest.raises(SandboxError):
        read_tar_files(truncated, what="the inputs")
