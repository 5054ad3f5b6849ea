"""Issue 19, a real workload: examples/wordstats in the Debian python3 image (sandbox.pyimage), through
real processes (a bootstrap node, a provider, ``suanli run``) with real Docker and real SQLite on
127.0.0.1. The buyer sends the example folder as its inputs and runs ``python3 /io/in/wordstats.py``;
the outputs that come back are the ones the same script computes here over the same files, and both
sides' databases audit clean.

The image comes from the session's cache (tests/sandbox/test_pyimage.py builds it fresh once per session
in the same folder; whichever runs first builds it). Under CI (SUANLI_REQUIRE_DOCKER=1) this runs, never
skips. The image is removed at the end when this session loaded it; every process is stopped.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cli_helpers as _h
import pytest

from sandbox import pyimage

pytestmark = [pytest.mark.docker, pytest.mark.slow]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "wordstats"
SESSION_CACHE = "python-image-cache"  # the same folder as tests/sandbox/test_pyimage.py's


@pytest.fixture(scope="module")
def python_image_id(tmp_path_factory, docker_client):
    import docker.errors

    from sandbox.images import local_image_id

    cache = tmp_path_factory.getbasetemp() / SESSION_CACHE
    built = pyimage.build_python_archive(cache)  # the ids, before anything is loaded
    ids = frozenset(d for d in (built.image_id, built.manifest_digest) if d)
    present_before = local_image_id(docker_client, ids) is not None
    image_id = pyimage.ensure_python_image(docker_client, cache)
    yield image_id
    if not present_before:
        try:
            docker_client.images.remove(image_id, force=True)
        except docker.errors.APIError:
            pass  # already removed


def test_wordstats_runs_in_the_sandbox_and_its_outputs_are_right(python_image_id, tmp_path):
    inputs, outputs, expected = tmp_path / "in", tmp_path / "out", tmp_path / "expected"
    shutil.copytree(EXAMPLE, inputs, ignore=shutil.ignore_patterns("__pycache__"))
    (inputs / "sample" / "binary.dat").write_bytes(b"\xff\xfe\x00not text")
    here = subprocess.run([sys.executable, str(inputs / "wordstats.py"), "--inputs", str(inputs), "--outputs",
                           str(expected)], capture_output=True, text=True, timeout=60)
    assert here.returncode == 0, here.stderr
    procs = _h.Processes()
    try:
        boot = _h.start_bootstrap(procs, tmp_path)
        config = tmp_path / "provider.toml"
        config.write_text(_h.PROVIDER_TOML.format(
            data_dir=tmp_path / "provider", bootstrap=boot, cpu_price=40, interval_ms=1000,
            countersign_timeout_ms=3000, grace_ms=3000, exposure_cap_micros=1000))
        provider = procs.start("provider", [*_h.suanli(), "provide", "--config", str(config), "--json"])
        assert provider.json_line("provider ready")["event"] == "ready"
        done = _h.run_cli("run", "--no-agent", "--bootstrap", boot, "--local", "--image", python_image_id,
                          "--data-dir", str(tmp_path / "buyer"), "--cpus", "0.5", "--memory", "256m",
                          "--max-price", "1000", "--max-duration", "120", "--wait", "5",
                          "--input", str(inputs), "--output", str(outputs), "--",
                          "python3", "/io/in/wordstats.py", timeout_s=300)
        assert done.returncode == 0, done.stderr
    finally:
        procs.stop_all()
    assert done.stdout.splitlines() == here.stdout.splitlines()
    report = json.loads((outputs / "report.json").read_text())
    assert report == json.loads((expected / "report.json").read_text())
    assert sorted(p.name for p in outputs.iterdir()) == ["report.json", "top_words.csv"]
    assert set(report["files"]) == {"sample/compute.txt", "sample/fox.txt", "sample/poem.txt"}
    assert set(report["skipped"]) == {"sample/binary.dat"}
    fox = (inputs / "sample" / "fox.txt").read_bytes()
    assert report["files"]["sample/fox.txt"] == {"bytes": len(fox), "lines": 2, "words": 16,
                                                 "sha256": hashlib.sha256(fox).hexdigest()}
    assert report["top_words"][0] == {"word": "the", "count": 7}
    with open(outputs / "top_words.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["word", "count"] and rows[1] == ["the", "7"]
    assert [r[0] for r in rows[1:]] == [w["word"] for w in report["top_words"]]
    _h.assert_audits_clean(tmp_path / "buyer" / "buyer.db", tmp_path / "provider" / "node.db")


def test_the_python_demo_runs_the_example_and_audits_clean(python_image_id, tmp_path_factory):
    """``suanli demo --image python`` (the README's workload): the example in the python image, on a local
    network of real processes, its outputs written and the audit clean. It reads the image from this
    session's cache, so nothing is built twice."""
    import json
    import os
    import subprocess

    env = {**os.environ, "SUANLI_IMAGE_CACHE": str(tmp_path_factory.getbasetemp() / SESSION_CACHE)}
    done = subprocess.run([*_h.suanli(), "demo", "--image", "python", "--json", "--clean"], capture_output=True,
                          text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    doc = json.loads(done.stdout)
    assert doc["ok"] and doc["image"] == python_image_id and doc["audit"] == "ok" and doc["findings"] == 0, doc
    assert doc["run"]["exit_code"] == 0 and sorted(doc["run"]["outputs"]) == ["report.json", "top_words.csv"]
