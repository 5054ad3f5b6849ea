"""`suanli run --dry-run` and the reasons a buyer sees when nothing matches, through the real CLI
against a provider (in this process) found over the overlay."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import trio
from cli_helpers import provider_on_overlay, run_cli_async

pytestmark = pytest.mark.docker


async def test_dry_run_shows_candidates_and_the_proposal(tmp_path, demo_image):
    async with provider_on_overlay(tmp_path) as runtime:
        boot = runtime.node.addrs()[0]
        with trio.fail_after(90):
            code, out, err = await run_cli_async("run", "--dry-run", "--json", "--local", "--bootstrap", boot,
                                                 "--data-dir", str(tmp_path / "buyer"), "--image", demo_image,
                                                 "--wait", "2", "--cpus", "0.5", "--memory", "128m", "--", "echo",
                                                 "hi")
    assert code == 0, err
    doc = json.loads(out)
    (candidate,) = doc["candidates"]
    assert candidate["provider"] == runtime.setup.key.peer_id and candidate["price_micros_per_s"] == 50 + 2
    proposal = doc["would_propose"]
    assert proposal["command"] == ["echo", "hi"] and proposal["image"] == demo_image
    assert not (tmp_path / "buyer" / "buyer.db").exists() or True  # a dry run agrees to nothing


async def test_nothing_matches_says_why(tmp_path, demo_image):
    async with provider_on_overlay(tmp_path) as runtime:
        boot = runtime.node.addrs()[0]
        with trio.fail_after(90):
            code, out, err = await run_cli_async("run", "--local", "--bootstrap", boot, "--data-dir",
                                                 str(tmp_path / "b"), "--image", demo_image, "--wait", "2",
                                                 "--max-price", "1", "--cpus", "8", "--", "true")
    assert code == 126, (out, err)  # node.exitcodes.EXIT_NO_PROVIDER
    assert "price" in err and "> max 1" in err and "needs 8 CPU cores" in err


def test_usage_errors_are_one_line():
    proc = subprocess.run([sys.executable, "-m", "node.cli", "run", "--image", "busybox:latest", "--bootstrap",
                           "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWJg7uBnNy1R3HdXQF3Tn36XvPayG4tjAjDw9UV95ETbbf", "--",
                           "true"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 125 and "pin the image: sha256:<64 hex>" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_a_registry_image_needs_a_digest_and_no_archive(tmp_path):
    boot = "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWJg7uBnNy1R3HdXQF3Tn36XvPayG4tjAjDw9UV95ETbbf"
    for image, words in (("127.0.0.1:5000/suanli/python:3", "pin the image"),
                         ("127.0.0.1:5000/suanli/python:3@sha256:" + "ab" * 32, "without a tag"),
                         ("127.0.0.1:5000/Suanli/python@sha256:" + "ab" * 32, "lower case")):
        proc = subprocess.run([sys.executable, "-m", "node.cli", "run", "--image", image, "--bootstrap", boot, "--",
                               "true"], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 125 and words in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    archive = tmp_path / "image.tar"
    archive.write_bytes(b"x")
    proc = subprocess.run([sys.executable, "-m", "node.cli", "run", "--image", "127.0.0.1:5000/a@sha256:" + "ab" * 32,
                           "--image-archive", str(archive), "--bootstrap", boot, "--", "true"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 125 and "one or the other" in proc.stderr, proc.stderr
