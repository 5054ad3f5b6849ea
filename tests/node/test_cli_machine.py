"""`suanli gpus` and `suanli image inspect` through the real console script."""

from __future__ import annotations

import json
import subprocess
import sys

from sandbox.images import build_demo_archive


def _suanli(*args):
    return subprocess.run([sys.executable, "-m", "node.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=60)


def test_gpus_reports_the_inventory_or_why_there_is_none():
    proc = _suanli("gpus", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert isinstance(doc["gpus"], list)
    assert doc["gpus"] or doc["reason"]  # a machine without NVIDIA says why


def test_image_inspect_prints_the_pinned_ids(tmp_path):
    data, digests = build_demo_archive()
    archive = tmp_path / "demo.tar"
    archive.write_bytes(data)
    proc = _suanli("image", "inspect", archive)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["config_digest"] == digests.config_digest and doc["sha256_check"] is True
    missing = _suanli("image", "inspect", tmp_path / "nope.tar")
    assert missing.returncode == 2 and missing.stderr.startswith("suanli: error:")
