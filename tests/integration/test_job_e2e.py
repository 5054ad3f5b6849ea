"""One job end to end in one process: real hosts on 127.0.0.1, real Docker, real SQLite, both sides'
databases audited."""

from __future__ import annotations

import io
import tarfile

import pytest
import trio

from market.service import negotiate_with, now_ms
from node.buyer_job import BuyerHooks, JobFailed, pack_dir, run_job
from node.provider import open_provider
from node.testing import local_setup, make_proposal
from p2p.identity import generate_key
from p2p.testing import loopback_config, open_host
from settlement.astore import open_store
from settlement.audit import audit, read_inputs

pytestmark = pytest.mark.docker

async def test_a_job_runs_is_billed_and_both_databases_audit_clean(tmp_path, demo_image):
    provider_key, buyer = generate_key(), generate_key()
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "x.txt").write_bytes(b"input bytes\n" * 100)
    lines, statuses = [], []
    hooks = BuyerHooks(on_log=lambda s, d: lines.append((s, d)), on_status=lambda p, d: statuses.append(p))
    command = ["sh", "-c", "echo $GREETING; wc -l < /io/in/x.txt; echo oops >&2; cp /io/in/x.txt /io/out/y.txt;"
               " sleep 2; echo bye"]
    async with open_provider(local_setup(tmp_path / "provider", provider_key)) as runtime:
        async with open_host(loopback_config(buyer, bootstrap=(runtime.node.addrs()[0],))) as client, \
                open_store(tmp_path / "buyer.db") as store:
            with trio.fail_after(60):
                deal = await negotiate_with(client, provider_key.peer_id, buyer,
                                            make_proposal(buyer, runtime.offer, demo_image, command))
                await store.put_agreement(deal.agreement)
                outcome = await run_job(client, buyer, store, deal, pack_dir(inputs), None, hooks, trio.Event(),
                                        now_ms())
        assert runtime.services.active == {}
    assert outcome.exit_code == 0 and outcome.reason == "completed"
    assert [d for s, d in lines if s == "stdout"] == [b"hello", b"100", b"bye"]
    assert (b"oops" in [d for s, d in lines if s == "stderr"])
    with tarfile.open(fileobj=io.BytesIO(outcome.outputs)) as tar:
        names = tar.getnames()
        assert any(n.endswith("y.txt") for n in names)
    final = outcome.last
    assert final.state == "final" and final.reason == "completed" and 2000 <= final.metered_ms <= 6000
    assert len(outcome.receipts) >= 3 and "running" in statuses
    results = audit(read_inputs([tmp_path / "provider" / "node.db", tmp_path / "buyer.db"]))
    (result,) = results
    assert result.report.ok, result.report.findings
    assert result.report.amount_micros == final.amount_micros and result.report.state == "final:completed"


async def test_unknown_image_fails_clearly_and_the_chain_closes(tmp_path, docker_client):
    provider_key, buyer = generate_key(), generate_key()
    async with open_provider(local_setup(tmp_path / "provider", provider_key)) as runtime:
        async with open_host(loopback_config(buyer, bootstrap=(runtime.node.addrs()[0],))) as client, \
                open_store(tmp_path / "buyer.db") as store:
            with trio.fail_after(60):
                deal = await negotiate_with(client, provider_key.peer_id, buyer,
                                            make_proposal(buyer, runtime.offer, "sha256:" + "0" * 64, ["true"]))
                with pytest.raises(JobFailed, match="image"):
                    await run_job(client, buyer, store, deal, b"", None, BuyerHooks(), trio.Event(), now_ms())
    (result,) = audit(read_inputs([tmp_path / "provider" / "node.db"]))
    assert result.report.ok and result.report.amount_micros == 0


async def test_image_shipped_over_the_overlay_when_the_provider_lacks_it(tmp_path, docker_client):
    import platform
    import uuid

    from p2p.envelope import sign_record
    from p2p.market_records import JobSpec
    from sandbox.archive import LayerEntry, image_archive, layer_tar
    from sandbox.images import read_busybox

    busybox = read_busybox()
    marker = uuid.uuid4().hex.encode()  # a fresh image each run: the provider cannot have it yet
    entries = [LayerEntry("bin", "dir"), LayerEntry("bin/busybox", "file", 0o755, data=busybox),
               LayerEntry("bin/sh", "symlink", 0o777, target="busybox"),
               LayerEntry("marker", "file", 0o644, data=marker)]
    entries += [LayerEntry(d, "dir", 0o755, 65534, 65534) for d in ("io", "io/in", "io/out")]
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    archive, digests = image_archive(layer_tar(entries), {"User": "65534:65534", "Env": ["PATH=/bin"]},
                                     architecture=arch)
    image_id = digests.config_digest
    progress = []
    provider_key, buyer = generate_key(), generate_key()
    try:
        async with open_provider(local_setup(tmp_path / "provider", provider_key)) as runtime:
            async with open_host(loopback_config(buyer, bootstrap=(runtime.node.addrs()[0],))) as client, \
                    open_store(tmp_path / "buyer.db") as store:
                base = make_proposal(buyer, runtime.offer, image_id, ["sh", "-c", "cat /marker; echo; sleep 1"]).record
                job = JobSpec(image_id, bytes.fromhex(digests.archive_sha256.split(":")[1]), base.job.command, {},
                              None)
                from dataclasses import replace

                signed = sign_record(replace(base, job=job), buyer)
                with trio.fail_after(120):
                    deal = await negotiate_with(client, provider_key.peer_id, buyer, signed)
                    lines = []
                    hooks = BuyerHooks(on_log=lambda s, d: lines.append(d),
                                       on_progress=lambda k, done, total: progress.append((k, done, total)))
                    outcome = await run_job(client, buyer, store, deal, b"", archive, hooks, trio.Event(), now_ms())
        assert outcome.exit_code == 0 and lines == [marker]
        assert progress and progress[-1] == ("image", len(archive), len(archive))
    finally:
        try:
            docker_client.api.remove_image(image_id, force=True)
        except Exception:
            pass


@pytest.mark.parametrize("command, expected", [
    (["echo", "hi"], [("stdout", b"hi")]),
    (["sh", "-c", "printf 'no newline at the end'"], [("stdout", b"no newline at the end")]),
    (["sh", "-c", "echo out; echo err >&2"], [("stderr", b"err"), ("stdout", b"out")]),
])
async def test_a_job_that_exits_at_once_loses_no_output(tmp_path, demo_image, command, expected):
    provider_key, buyer = generate_key(), generate_key()
    lines = []
    async with open_provider(local_setup(tmp_path / "provider", provider_key)) as runtime:
        async with open_host(loopback_config(buyer, bootstrap=(runtime.node.addrs()[0],))) as client, \
                open_store(tmp_path / "buyer.db") as store:
            with trio.fail_after(60):
                deal = await negotiate_with(client, provider_key.peer_id, buyer,
                                            make_proposal(buyer, runtime.offer, demo_image, command))
                hooks = BuyerHooks(on_log=lambda s, d: lines.append((s, d)))
                outcome = await run_job(client, buyer, store, deal, b"", None, hooks, trio.Event(), now_ms())
    assert outcome.exit_code == 0 and sorted(lines) == expected
