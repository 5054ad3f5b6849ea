"""`suanli bootstrap --relay-*`: the relay's limits from flags (p2p.relay_limits); a bad one is one line, exit 2."""

from __future__ import annotations

import subprocess
import sys

from node.cli import build_parser
from p2p.relay_limits import RelayLimits, limits_from


def test_flags_set_the_limits_and_no_relay_turns_it_off():
    parser = build_parser()
    args = parser.parse_args(["bootstrap", "--key", "k", "--relay-circuits", "8", "--relay-circuit-bytes", "131072"])
    assert limits_from(args) == RelayLimits(circuits=8, circuit_bytes=131072)
    assert limits_from(parser.parse_args(["bootstrap", "--key", "k"])) == RelayLimits()
    assert limits_from(parser.parse_args(["bootstrap", "--key", "k", "--no-relay"])) is None


def test_a_bad_limit_is_one_line_and_exit_2(tmp_path):
    key = tmp_path / "boot.key"
    made = subprocess.run([sys.executable, "-m", "node.cli", "keys", "new", "--out", str(key)], capture_output=True,
                          text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    done = subprocess.run([sys.executable, "-m", "node.cli", "bootstrap", "--key", str(key), "--relay-circuits", "0"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "relay limit circuits must be a whole number >= 1" in done.stderr
