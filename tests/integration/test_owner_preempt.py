"""Owner first (issue 18) with a real provider, real Docker and the real buyer: typing on a pseudo-terminal
that the test opens while a job runs pauses the job within a second; the job is stopped with an
``owner_preempt`` final receipt after the notice, or resumes when the owner leaves within it. Paused
seconds are never billed, and both databases audit clean.

The watch is pointed at the test's own terminal (``ProviderSetup.owner_devices``): the machine's other
terminals belong to whoever else is using it, and would make the test depend on them."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace

import pytest
import trio

from market.negotiation import BUSY
from market.service import NegotiationRefused, negotiate_with, now_ms
from node.buyer_job import BuyerHooks, run_job
from node.owner_prefs import OwnerPrefs
from node.provider import open_provider
from node.testing import local_setup, make_proposal
from p2p.identity import generate_key
from p2p.testing import loopback_config, open_host
from settlement.astore import open_store
from settlement.audit import audit, read_inputs

pytestmark = pytest.mark.docker


class Terminal:
    """A pseudo-terminal whose input the test types and reads back, as a shell would."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        self.path = os.ttyname(self.slave)
        quiet = time.time() - 60  # quiet for a minute: the first key moves the access time (owner_signals Rule 2)
        os.utime(self.path, (quiet, quiet))

    def type(self, text: bytes = b"ls\n") -> float:
        at = time.time()
        os.write(self.master, text)
        os.read(self.slave, 64)
        return at

    def close(self) -> None:
        os.close(self.master)
        os.close(self.slave)


async def owner_comes_back(runtime, terminal: Terminal) -> None:
    """Once a job of ``runtime`` runs (60 s at most), the owner types on the watched terminal 1.5 s later."""
    for _ in range(600):
        if any(job.phase == "running" for job in runtime.services.active.values()):
            break
        await trio.sleep(0.1)
    await trio.sleep(1.5)
    terminal.type()


@contextmanager
def owner_programs(commands: list[list[str]]) -> Iterator[Callable[[], float]]:
    """``start()`` launches the owner's programs (outside any container) and returns when it did; each is
    killed on exit, whatever happened."""
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> float:
        procs.extend(subprocess.Popen(command) for command in commands)
        return time.time()

    try:
        yield start
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


@pytest.fixture
def terminal():
    t = Terminal()
    yield t
    t.close()


async def _run(tmp_path, demo_image, terminal, prefs, command, *, during=None, act=None):
    """Run ``command`` as a job; once it has sent its second receipt, ``act()`` (default: type on the
    terminal), then ``during`` runs."""
    provider_key, buyer = generate_key(), generate_key()
    setup = replace(local_setup(tmp_path / "provider", provider_key), owner=prefs, owner_devices=(terminal.path,))
    seen: dict[str, float] = {}
    receipts: list[tuple[float, int]] = []
    async with open_provider(setup) as runtime:
        assert runtime.status()["owner"]["state"] == "available"
        offer = runtime.offer
        async with open_host(loopback_config(buyer, bootstrap=(runtime.node.addrs()[0],))) as client, \
                open_store(tmp_path / "buyer.db") as store:
            deal = await negotiate_with(client, provider_key.peer_id, buyer,
                                        make_proposal(buyer, offer, demo_image, command))
            await store.put_agreement(deal.agreement)
            typed = trio.Event()

            def on_status(phase: str, detail: str) -> None:
                seen.setdefault(phase, time.time())
                if phase == "paused":
                    seen["paused_detail"] = detail  # type: ignore[assignment]

            def on_receipt(receipt) -> None:
                receipts.append((time.time(), receipt.record.metered_ms))
                if len(receipts) == 2 and not typed.is_set():
                    seen["typed"] = (act or terminal.type)()
                    typed.set()

            async with trio.open_nursery() as nursery:
                if during is not None:
                    async def then() -> None:
                        await typed.wait()
                        await during(runtime, client, buyer, provider_key, offer)
                    nursery.start_soon(then)
                with trio.fail_after(90):
                    outcome = await run_job(client, buyer, store, deal, b"", None,
                                            BuyerHooks(on_status=on_status, on_receipt=on_receipt), trio.Event(),
                                            now_ms())
    (result,) = audit(read_inputs([tmp_path / "provider" / "node.db", tmp_path / "buyer.db"]))
    return outcome, seen, receipts, result


async def test_typing_pauses_the_job_within_a_second_and_the_notice_ends_it_owner_preempt(
        tmp_path, demo_image, terminal):
    prefs = OwnerPrefs(idle_s=30, notice_s=3, poll_ms=100)  # still "in use" when the notice runs out
    checked: dict[str, object] = {}

    async def while_paused(runtime, client, buyer, provider_key, earlier) -> None:
        for _ in range(40):  # 2 s at most
            if runtime.status()["owner"]["state"] == "owner_active":
                break
            await trio.sleep(0.05)
        checked["owner"] = runtime.status()["owner"]
        await trio.sleep(0.3)  # the publisher has re-issued the offer
        checked["free_cpu"] = runtime.offer.record.free.cpu_millis
        try:  # a buyer holding the earlier offer is refused, with the reason
            await negotiate_with(client, provider_key.peer_id, buyer,
                                 make_proposal(buyer, earlier, "sha256:" + "0" * 64, ["true"]))
        except NegotiationRefused as exc:
            checked["refused"] = (exc.fields["reason"], str(exc))

    outcome, seen, receipts, result = await _run(tmp_path, demo_image, terminal, prefs, ["sleep", "60"],
                                                 during=while_paused)
    paused_after_s = seen["paused"] - seen["typed"]
    print(f"typed -> paused at the buyer: {paused_after_s * 1000:.0f} ms")
    assert paused_after_s <= 1.0
    assert seen["paused_detail"] == "the machine's owner is using it"
    assert outcome.reason == "owner_preempt" and outcome.last.state == "final"
    assert outcome.last.reason == "owner_preempt"
    assert checked["owner"]["state"] == "owner_active" and "terminal used" in checked["owner"]["reason"]
    assert checked["free_cpu"] == 0
    reason, text = checked["refused"]
    assert reason == BUSY and "owner_active" in text
    # No second after the pause is billed: what was metered when the pause came is what the final claims.
    billed_before_pause = max(m for t, m in receipts if t < seen["paused"])
    assert outcome.last.metered_ms - billed_before_pause <= 1000
    assert outcome.last.metered_ms <= (seen["paused"] - seen["running"]) * 1000 + 500
    assert result.report.ok, result.report
    assert result.report.amount_micros == outcome.last.amount_micros


async def test_the_owner_leaving_within_the_notice_resumes_the_job_and_paused_seconds_are_free(
        tmp_path, demo_image, terminal):
    prefs = OwnerPrefs(idle_s=2, notice_s=20, poll_ms=100)  # gone 2 s after the key, well within the notice
    # 40 short sleeps: about 4 s of running time, whatever the pause in between.
    command = ["sh", "-c", "for i in $(seq 40); do sleep 0.1; done"]
    outcome, seen, receipts, result = await _run(tmp_path, demo_image, terminal, prefs, command)
    assert seen["paused"] - seen["typed"] <= 1.0
    assert "resumed" in seen and seen["resumed"] - seen["paused"] >= 1.0
    assert outcome.reason == "completed" and outcome.exit_code == 0
    wall_s = time.time() - seen["running"]
    paused_s = seen["resumed"] - seen["paused"]
    assert outcome.last.metered_ms <= (wall_s - paused_s) * 1000 + 500  # the pause was not billed
    assert result.report.ok, result.report


async def test_the_buyer_exits_124_on_owner_preempt_and_its_evidence_audits_clean(tmp_path, demo_image, terminal):
    from cli_helpers import assert_audits_clean, provider_on_overlay

    from node.buyer import Collected, run_once
    from node.buyrequest import BuyRequest
    from node.exitcodes import EXIT_PREEMPTED

    home = tmp_path / "buyer"
    request = BuyRequest.build(["sleep", "60"], image=demo_image, cpus=0.5, memory="128m", wait=2)
    console = Collected()
    prefs = OwnerPrefs(idle_s=30, notice_s=1, poll_ms=100)
    async with provider_on_overlay(tmp_path, owner=prefs, owner_devices=(terminal.path,)) as runtime:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(owner_comes_back, runtime, terminal)
            with trio.fail_after(120):
                code = await run_once(request, generate_key(), home, [runtime.node.addrs()[0]], console, local=True)
    doc = console.document
    assert code == EXIT_PREEMPTED == 124 and doc["exit_code"] == 124 and doc["exit_source"] == "suanli", doc
    assert doc["reason"] == "owner_preempt" and 1000 <= doc["billed_ms"] <= 3000, doc
    assert console.receipts[-1].record.reason == "owner_preempt"
    assert_audits_clean(home / "buyer.db", runtime.setup.data_dir / "node.db")


async def test_outside_its_schedule_a_provider_offers_nothing_and_refuses_with_the_reason(
        tmp_path, demo_image, terminal):
    provider_key, buyer = generate_key(), generate_key()
    never = OwnerPrefs(schedule={day: () for day in range(7)})
    setup = replace(local_setup(tmp_path / "provider", provider_key), owner=never, owner_devices=(terminal.path,))
    async with open_provider(setup) as runtime:
        status = runtime.status()
        assert status["owner"]["state"] == "outside_schedule" and "schedule" in status["owner"]["reason"]
        offer = runtime.offer
        assert offer is not None and offer.record.free.cpu_millis == 0 and offer.record.free.memory_mib == 0
        async with open_host(loopback_config(buyer, bootstrap=(runtime.node.addrs()[0],))) as client:
            with pytest.raises(NegotiationRefused) as refused, trio.fail_after(30):
                await negotiate_with(client, provider_key.peer_id, buyer,
                                     make_proposal(buyer, offer, demo_image, ["true"]))
        assert refused.value.fields["reason"] == BUSY and "outside_schedule" in str(refused.value)


async def test_an_exclusive_application_pauses_the_job_until_it_exits(tmp_path, demo_image, terminal):
    """A process whose name is in ``exclusive_apps`` (here a link to sleep, as a game would be)."""
    game = tmp_path / "suanli-game"
    game.symlink_to("/bin/sleep")
    prefs = OwnerPrefs(idle_s=0, exclusive_apps=("suanli-game",), notice_s=60, poll_ms=100)
    command = ["sh", "-c", "for i in $(seq 40); do sleep 0.1; done"]
    with owner_programs([[str(game), "3"]]) as start_game:  # the owner plays for 3 s
        outcome, seen, receipts, result = await _run(tmp_path, demo_image, terminal, prefs, command, act=start_game)
    # The process table is read every 2 s (node.owner_watch Rule 3), so an application is seen within 2 s.
    assert seen["paused"] - seen["typed"] <= 2.5
    assert seen["resumed"] - seen["typed"] >= 3.0
    assert outcome.reason == "completed" and outcome.exit_code == 0
    assert result.report.ok, result.report


async def test_shutting_down_while_the_owner_holds_a_job_ends_its_chain_and_removes_its_container(
        tmp_path, demo_image, docker_client, terminal):
    """The watch's cancellation case: the daemon stops while a job is frozen for the owner."""
    from node.provider import _shutdown
    from sandbox.spec import LABEL_NODE

    provider_key, buyer = generate_key(), generate_key()
    prefs = OwnerPrefs(idle_s=60, notice_s=60, poll_ms=100)
    setup = replace(local_setup(tmp_path / "provider", provider_key), owner=prefs, owner_devices=(terminal.path,))
    seen: dict[str, float] = {}
    outcomes = []

    async def until(what: str, tenths: int) -> None:
        for _ in range(tenths):
            if what in seen:
                return
            await trio.sleep(0.1)
        raise AssertionError(f"no {what!r} status: {seen}")

    async with open_provider(setup) as runtime:
        async with open_host(loopback_config(buyer, bootstrap=(runtime.node.addrs()[0],))) as client, \
                open_store(tmp_path / "buyer.db") as store:
            deal = await negotiate_with(client, provider_key.peer_id, buyer,
                                        make_proposal(buyer, runtime.offer, demo_image, ["sleep", "60"]))
            await store.put_agreement(deal.agreement)
            hooks = BuyerHooks(on_status=lambda phase, detail: seen.setdefault(phase, time.time()))

            async def buy() -> None:
                outcomes.append(await run_job(client, buyer, store, deal, b"", None, hooks, trio.Event(), now_ms()))

            with trio.fail_after(90):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(buy)
                    await until("running", 600)
                    terminal.type()
                    await until("paused", 50)
                    await _shutdown(runtime, None)
    (outcome,) = outcomes
    assert outcome.reason == "provider_shutdown" and outcome.last.state == "final", outcome
    left = docker_client.containers.list(all=True, filters={"label": f"{LABEL_NODE}={provider_key.peer_id}"})
    assert left == []
    (result,) = audit(read_inputs([tmp_path / "provider" / "node.db", tmp_path / "buyer.db"]))
    assert result.report.ok, result.report


@pytest.mark.parametrize("idle_s", [60, 1])  # 1: the owner leaves while the job is being stopped
async def test_a_buyer_cancelling_a_job_frozen_for_the_owner_gets_a_countersigned_final(
        tmp_path, demo_image, terminal, idle_s):
    prefs = OwnerPrefs(idle_s=idle_s, notice_s=60, poll_ms=100)
    provider_key, buyer = generate_key(), generate_key()
    setup = replace(local_setup(tmp_path / "provider", provider_key), owner=prefs, owner_devices=(terminal.path,))
    seen: dict[str, float] = {}
    async with open_provider(setup) as runtime:
        async with open_host(loopback_config(buyer, bootstrap=(runtime.node.addrs()[0],))) as client, \
                open_store(tmp_path / "buyer.db") as store:
            deal = await negotiate_with(client, provider_key.peer_id, buyer,
                                        make_proposal(buyer, runtime.offer, demo_image, ["sleep", "60"]))
            await store.put_agreement(deal.agreement)
            cancel = trio.Event()

            def on_status(phase: str, detail: str) -> None:
                seen.setdefault(phase, time.time())
                if phase == "running":
                    terminal.type()
                if phase == "paused":
                    cancel.set()

            with trio.fail_after(60):
                outcome = await run_job(client, buyer, store, deal, b"", None, BuyerHooks(on_status=on_status),
                                        cancel, now_ms())
    assert outcome.reason == "buyer_cancel" and outcome.last.state == "final", outcome
    assert len(outcome.receipts[-1].sigs) == 2  # the final is countersigned
    (result,) = audit(read_inputs([tmp_path / "provider" / "node.db", tmp_path / "buyer.db"]))
    assert result.report.ok, result.report


async def test_on_preempt_retry_runs_the_job_again_on_another_provider(tmp_path, demo_image, terminal):
    """node.buyer Rule 3: the cheaper provider's owner comes back; the buyer's --on-preempt retry runs the
    job again on the other provider, and the preempted run stays billed and audits clean."""
    from cli_helpers import assert_audits_clean, provider_on_overlay

    from node.buyer import Collected, run_once
    from node.buyrequest import BuyRequest
    from node.testing import FAST_TERMS
    from p2p.market_records import Prices

    home = tmp_path / "buyer"
    request = BuyRequest.build(["sh", "-c", "sleep 4; echo finished"], image=demo_image, cpus=0.5, memory="128m",
                               wait=3, on_preempt="retry")
    console = Collected()
    prefs = OwnerPrefs(idle_s=30, notice_s=1, poll_ms=100)
    dear = replace(FAST_TERMS, prices=Prices({}, cpu_core_micros_per_s=400, memory_gib_micros_per_s=10))
    async with provider_on_overlay(tmp_path / "a", owner=prefs, owner_devices=(terminal.path,)) as cheap:
        boot = cheap.node.addrs()[0]
        async with provider_on_overlay(tmp_path / "b", terms=dear, bootstrap=(boot,)) as other:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(owner_comes_back, cheap, terminal)
                with trio.fail_after(150):
                    code = await run_once(request, generate_key(), home, [boot], console, local=True)
    doc = console.document
    assert code == 0 and doc["reason"] == "completed" and doc["provider"] == other.setup.key.peer_id, doc
    assert any("running the job again on another provider" in line for line in console.notes), console.notes
    first, second = doc["attempts"]  # every attempt, each with its own receipts
    assert first["reason"] == "owner_preempt" and first["provider"] == cheap.setup.key.peer_id
    assert first["receipts"] >= 1 and first["amount_micros"] > 0 and second["agreement_id"] == doc["agreement_id"]
    assert_audits_clean(home / "buyer.db", cheap.setup.data_dir / "node.db", other.setup.data_dir / "node.db")


async def test_other_programs_using_the_cpu_pause_the_job_until_they_stop(tmp_path, demo_image, terminal):
    """Real CPU-hungry programs (one busy loop per core, outside any job container) for 3 s: the owner's
    ``cpu_busy_pct`` counts them as use (/proc/stat less our containers' cgroups), so the job is paused,
    and resumed once they end."""
    hog = "import time\nend = time.monotonic() + 3\nwhile time.monotonic() < end:\n    pass\n"
    prefs = OwnerPrefs(idle_s=0, input=False, cpu_busy_pct=70, notice_s=60, poll_ms=100)
    command = ["sh", "-c", "for i in $(seq 60); do sleep 0.1; done"]
    with owner_programs([[sys.executable, "-c", hog]] * (os.cpu_count() or 1)) as start_hogs:
        outcome, seen, receipts, result = await _run(tmp_path, demo_image, terminal, prefs, command, act=start_hogs)
    assert seen["typed"] <= seen["paused"] <= seen["typed"] + 2.5, seen
    assert "CPU" in str(seen.get("paused_detail", "")) or "owner" in str(seen.get("paused_detail", "")), seen
    assert seen["resumed"] - seen["typed"] >= 2.0, seen  # the programs ran 3 s
    assert outcome.reason == "completed" and outcome.exit_code == 0
    assert result.report.ok, result.report
