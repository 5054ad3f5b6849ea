"""`suanli run --disk SIZE` through the real CLI against a provider found over the overlay (issue 13 H4):
the size is in the proposal, and an offer without that much free disk is explained, not tried."""

from __future__ import annotations

import json
import sys
from contextlib import asynccontextmanager
from dataclasses import replace

import pytest
import trio

from node.overlay import provider_overlay
from node.provider import open_provider
from node.testing import local_setup
from p2p.identity import generate_key

pytestmark = pytest.mark.docker


@asynccontextmanager
async def provider_on_overlay(tmp_path, disk_mib):
    overlay = provider_overlay()
    setup = replace(local_setup(tmp_path / "p", generate_key()), disk_mib=disk_mib)
    async with open_provider(setup, handlers=overlay.handlers, topics=overlay.topics,
                             announce=overlay.announce) as runtime:
        overlay.attach(runtime)
        async with trio.open_nursery() as nursery:
            await nursery.start(overlay.serve, runtime)
            yield runtime
            nursery.cancel_scope.cancel()


async def _run_cli(*args):
    proc = await trio.run_process([sys.executable, "-m", "node.cli", *args], capture_stdout=True,
                                  capture_stderr=True, check=False)
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


async def test_disk_goes_into_the_proposal_and_a_short_offer_is_explained(tmp_path, demo_image):
    async with provider_on_overlay(tmp_path, disk_mib=4096) as runtime:
        boot = runtime.node.addrs()[0]
        common = ("--local", "--bootstrap", boot, "--data-dir", str(tmp_path / "buyer"), "--image", demo_image,
                  "--wait", "2", "--cpus", "0.5", "--memory", "128m")
        with trio.fail_after(120):
            code, out, err = await _run_cli("run", "--dry-run", "--json", *common, "--disk", "2g", "--", "true")
            assert code == 0, err
            assert json.loads(out)["would_propose"]["disk_mib"] == 2048
            code, out, err = await _run_cli("run", *common, "--disk", "5g", "--", "true")
    assert code == 3, (out, err)
    assert "needs 5120 MiB disk, 4096 free" in err
