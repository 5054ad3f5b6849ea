"""The buyer's Python API (node.buyer, issue 14 item 3), as the README shows it: a checked BuyRequest,
``run_once`` against a real provider on 127.0.0.1 with real Docker, the job's output, the countersigned
receipts and the summary collected, and the evidence in the buyer's database auditing clean."""

from __future__ import annotations

import pytest
import trio
from cli_helpers import assert_audits_clean, provider_on_overlay

from node.buyer import Collected, run_once
from node.buyrequest import BuyRequest
from p2p.identity import generate_key

pytestmark = pytest.mark.docker


async def test_a_python_program_buys_a_job(tmp_path, demo_image):
    home = tmp_path / "buyer"
    request = BuyRequest.build(["sh", "-c", "echo hi; exit 3"], image=demo_image, cpus=0.5, memory="128m",
                               wait=2)
    console = Collected()
    async with provider_on_overlay(tmp_path) as runtime:
        with trio.fail_after(120):
            code = await run_once(request, generate_key(), home, [runtime.node.addrs()[0]], console, local=True)
    doc = console.document
    assert code == 3 and doc["exit_code"] == 3 and doc["exit_source"] == "job", (doc, console.notes)
    assert console.logs == [("stdout", b"hi")]
    assert console.receipts and console.receipts[-1].record.state == "final"
    assert doc["amount_micros"] == console.receipts[-1].record.amount_micros
    assert_audits_clean(home / "buyer.db", runtime.setup.data_dir / "node.db")
