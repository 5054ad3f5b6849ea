"""`suanli run --disk SIZE`: the job's /io size goes into the proposal (issue 13 H4)."""

from __future__ import annotations

import pytest

from node.cli import build_parser
from node.commands.run import parse_disk_mib
from p2p.errors import SuanliError


@pytest.mark.parametrize("text, mib", [("1g", 1024), ("256m", 256), ("16M", 16), ("20G", 20480), ("64MiB", 64)])
def test_disk_sizes(text, mib):
    assert parse_disk_mib(text) == mib


@pytest.mark.parametrize("text", ["", "5", "15m", "1t", "lots", "-1g", "100k", "1048577g", "9" * 30 + "g"])
def test_bad_disk_sizes_are_one_line(text):
    with pytest.raises(SuanliError, match="--disk"):
        parse_disk_mib(text)


def test_the_default_is_one_gib():
    args = build_parser().parse_args(["run", "--image", "sha256:" + "a" * 64, "--", "true"])
    assert parse_disk_mib(args.disk) == 1024
