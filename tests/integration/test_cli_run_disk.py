"""`suanli run --disk SIZE` through the real CLI against a provider found over the overlay (issue 13 H4):
the size is in the proposal, and an offer without that much free disk is explained, not tried."""

from __future__ import annotations

import json

import pytest
import trio
from cli_helpers import provider_on_overlay, run_cli_async

pytestmark = pytest.mark.docker


async def test_disk_goes_into_the_proposal_and_a_short_offer_is_explained(tmp_path, demo_image):
    async with provider_on_overlay(tmp_path, disk_mib=4096) as runtime:
        boot = runtime.node.addrs()[0]
        common = ("--local", "--bootstrap", boot, "--data-dir", str(tmp_path / "buyer"), "--image", demo_image,
                  "--wait", "2", "--cpus", "0.5", "--memory", "128m")
        with trio.fail_after(120):
            code, out, err = await run_cli_async("run", "--dry-run", "--json", *common, "--disk", "2g", "--", "true")
            assert code == 0, err
            assert json.loads(out)["would_propose"]["disk_mib"] == 2048
            code, out, err = await run_cli_async("run", *common, "--disk", "5g", "--", "true")
    assert code == 126, (out, err)  # node.exitcodes.EXIT_NO_PROVIDER
    assert "needs 5120 MiB disk, 4096 free" in err
