"""The buyer's own maximum exposure through the real CLI (issue 13, H3): `suanli run --max-exposure`
and `max_exposure_micros` in `<data dir>/buyer.toml` refuse offers whose exposure cap is higher, and
say so; the provider here (node.testing.FAST_TERMS) states a cap of 1000 micro-credits."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import trio
from cli_helpers import provider_on_overlay, run_cli_async

from node.testing import FAST_TERMS

CAP = FAST_TERMS.receipts.exposure_cap_micros


@pytest.mark.docker
async def test_offers_above_the_buyers_max_exposure_are_refused_and_explained(tmp_path, demo_image):
    home = tmp_path / "buyer"
    home.mkdir()
    (home / "buyer.toml").write_text(f"max_exposure_micros = {CAP - 1}\n")
    async with provider_on_overlay(tmp_path) as runtime:
        boot = runtime.node.addrs()[0]
        common = ("--local", "--bootstrap", boot, "--data-dir", str(home), "--image", demo_image, "--wait", "2",
                  "--cpus", "0.5", "--memory", "128m")
        with trio.fail_after(120):
            by_file = await run_cli_async("run", *common, "--", "true")
            by_flag = await run_cli_async("run", *common, "--max-exposure", str(CAP - 1), "--", "true")
            allowed = await run_cli_async("run", "--dry-run", "--json", *common, "--max-exposure", str(CAP), "--",
                                          "true")
    for code, out, err in (by_file, by_flag):
        assert code == 126, (out, err)  # node.exitcodes.EXIT_NO_PROVIDER
        assert f"exposure cap {CAP} > your max exposure {CAP - 1}" in err
    code, out, err = allowed
    assert code == 0, err
    doc = json.loads(out)["would_propose"]
    assert doc["exposure_cap_micros"] == CAP and doc["max_exposure_micros"] == CAP


@pytest.mark.parametrize("flag, toml", [("-1", None), (str(10 ** 13), None), (None, "max_exposure_micros = -5\n"),
                                        (None, "max_exposure_micros = 'lots'\n"), (None, "max_exposure = 1\n"),
                                        (None, "not toml [\n")])
def test_an_out_of_range_max_exposure_is_one_line(tmp_path, flag, toml):
    home = tmp_path / "buyer"
    home.mkdir()
    if toml is not None:
        (home / "buyer.toml").write_text(toml)
    args = [sys.executable, "-m", "node.cli", "run", "--local", "--no-agent", "--data-dir", str(home), "--image",
            "sha256:" + "ab" * 32, "--wait", "0", "--bootstrap",
            "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWJg7uBnNy1R3HdXQF3Tn36XvPayG4tjAjDw9UV95ETbbf"]
    if flag is not None:
        args += ["--max-exposure", flag]
    proc = subprocess.run([*args, "--", "true"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 125, (proc.stdout, proc.stderr)  # node.exitcodes.EXIT_SUANLI
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "max_exposure" in proc.stderr or "max-exposure" in proc.stderr or "buyer.toml" in proc.stderr
