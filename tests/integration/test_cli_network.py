"""The product through real processes: ``suanli demo``, ``bootstrap``, ``provide``, ``run``, ``offers``,
``status`` and ``audit`` as a user runs them, with real Docker and real SQLite on 127.0.0.1.

One network per module (a bootstrap process, a cheap provider with short receipt terms that takes every
job, and an expensive one that only shows up in ``offers``); each test drives a ``suanli run`` process
against it and abuses one side: Ctrl-C, ``kill -STOP`` and ``kill -9`` of the buyer, ``kill -9`` and
SIGTERM of the provider. What is checked is what issue 6 promises: the final receipt and its reason on
both sides, the container gone, both databases auditing clean, and the amounts within what the buyer
signed plus the agreed exposure cap. Every process is stopped in teardown (cli_helpers Rule 1); every
wait is bounded. Tests assert behaviour; timing bounds are only those the agreement itself states.
"""

from __future__ import annotations

import json
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import cli_helpers as _h
import pytest

from node.exitcodes import EXIT_JOB_LOST, job_exit_code

PROVIDER_TOML, Proc, Processes, suanli, run_cli = _h.PROVIDER_TOML, _h.Proc, _h.Processes, _h.suanli, _h.run_cli
agreement_ids, audit_json, containers_of = _h.agreement_ids, _h.audit_json, _h.containers_of
receipts_in, status_json, wait_until = _h.receipts_in, _h.status_json, _h.wait_until
_assert_audits_clean = _h.assert_audits_clean

pytestmark = [pytest.mark.docker, pytest.mark.slow]

# The cheap provider's receipt terms: short, so that pausing and stopping happen within seconds.
INTERVAL_MS, COUNTERSIGN_TIMEOUT_MS, GRACE_MS, EXPOSURE_CAP_MICROS = 1000, 2000, 2000, 100
CHEAP_CPU_PRICE = 40   # a 0.5-core, 64 MiB job costs 20 + 1 = 21 micro-credits/s
DEAR_CPU_PRICE = 5000  # 2501 micro-credits/s: above the buyer's --max-price, so never chosen
MAX_PRICE = 100


@dataclass
class Provider:
    name: str
    config: Path
    data_dir: Path
    proc: Proc
    peer_id: str

    @property
    def db(self) -> Path:
        return self.data_dir / "node.db"


class Network:
    def __init__(self, root: Path, procs: Processes) -> None:
        self.root, self.procs = root, procs
        self.bootstrap_addr = ""
        self.providers: dict[str, Provider] = {}
        self.image = ""

    def start_provider(self, name: str, cpu_price: int) -> Provider:
        data_dir = self.root / name
        config = self.root / f"{name}.toml"
        config.write_text(PROVIDER_TOML.format(
            data_dir=data_dir, bootstrap=self.bootstrap_addr, cpu_price=cpu_price, interval_ms=INTERVAL_MS,
            countersign_timeout_ms=COUNTERSIGN_TIMEOUT_MS, grace_ms=GRACE_MS,
            exposure_cap_micros=EXPOSURE_CAP_MICROS))
        return self._launch(name, config, data_dir)

    def _launch(self, name: str, config: Path, data_dir: Path) -> Provider:
        proc = self.procs.start(name, [*suanli(), "provide", "--config", str(config), "--json"])
        provider = Provider(name, config, data_dir, proc, "")
        self.providers[name] = provider
        return provider

    def ready(self, provider: Provider, timeout_s: float = 60) -> Provider:
        ready = provider.proc.json_line(f"{provider.name} ready", timeout_s)
        assert ready["event"] == "ready", ready
        provider.peer_id = ready["peer_id"]
        return provider

    def restart(self, provider: Provider) -> Provider:
        """The same configuration (key, data dir, terms) in a new process."""
        return self.ready(self._launch(provider.name, provider.config, provider.data_dir))

    def buyer(self, name: str, home: Path, command: list[str], *extra: str) -> Proc:
        # --wait 5, not less: once earlier light clients have left, a DHT lookup dials them and can take
        # seconds (see the report on discovery); the behaviour under test starts after the agreement.
        return self.procs.start(name, [
            *suanli(), "run", "--bootstrap", self.bootstrap_addr, "--local", "--image", self.image,
            "--data-dir", str(home), "--max-price", str(MAX_PRICE), "--cpus", "0.5", "--memory", "64m",
            "--max-duration", "120", "--wait", "5", "--show-receipts", *extra, "--", *command])


@pytest.fixture(scope="module")
def network(tmp_path_factory, demo_image):
    root = tmp_path_factory.mktemp("network")
    procs = Processes()
    net = Network(root, procs)
    net.image = demo_image
    try:
        net.bootstrap_addr = _h.start_bootstrap(procs, root)
        cheap = net.start_provider("cheap", CHEAP_CPU_PRICE)
        dear = net.start_provider("dear", DEAR_CPU_PRICE)
        net.ready(cheap)
        net.ready(dear)
        yield net
    finally:
        procs.stop_all()


@pytest.fixture
def cheap(network):
    """The provider that takes every job; alive again after the test, whatever the test did to it."""
    yield network.providers["cheap"]
    current = network.providers["cheap"]
    if not current.proc.alive():
        current.proc.stop()
        network.restart(current)


def _agreement_of(buyer: Proc, provider: Provider, timeout_s: float = 60) -> str:
    """The agreement's full id: the 16-digit prefix the buyer prints, completed from the provider's db."""
    line = buyer.wait_stderr("(agreement ", timeout_s=timeout_s)[0]
    prefix = line.rsplit("(agreement ", 1)[1].rstrip(")")
    return wait_until(f"agreement {prefix} in {provider.db}",
                      lambda: next((a for a in agreement_ids(provider.db) if a.startswith(prefix)), None), 10)


def _cosigned_seqs(buyer: Proc) -> list[int]:
    """The seqs the buyer said it countersigned (``--show-receipts``: "receipt N co-signed: ...")."""
    return [int(line.split("receipt ", 1)[1].split()[0]) for line in buyer.stderr_lines(" co-signed: ")]


def _job_exit_code(final) -> int:  # noqa: ANN001
    """What ``suanli run`` exits with when the job ended with this final receipt (node/commands/run.py)."""
    return job_exit_code(final.exit_code)[0]


def _chain_report(doc: dict, agreement_hex: str) -> dict:
    (report,) = [a for a in doc["agreements"] if a["agreement_id"] == agreement_hex]
    return report


# -- the demo ---------------------------------------------------------------------------------------------


def test_demo_runs_a_job_cosigns_receipts_and_audits_clean(demo_image):
    done = run_cli("demo", "--json", "--clean", timeout_s=240)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-4000:])
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["ok"] is True and summary["audit"] == "ok" and summary["findings"] == 0
    assert summary["job_exit_code"] == 0 and summary["run"]["exit_code"] == 0
    assert summary["run"]["reason"] == "completed" and summary["run"]["outputs"] == ["WORDS.txt"]
    assert summary["receipts"] >= 2 and summary["run"]["receipts"] == summary["receipts"]
    assert summary["billed_ms"] > 0 and summary["amount_micros"] > 0
    assert summary["processes"]["providers"] == 2
    assert all(code == 0 for code in summary["processes"]["exit_codes"].values()), summary["processes"]
    assert summary["root"] is None  # --clean removed the demo's files after success


# -- discovery and status ----------------------------------------------------------------------------------


def test_offers_lists_every_provider(network):
    wanted = {p.peer_id for p in network.providers.values()}

    def heard() -> dict | None:
        done = run_cli("offers", "--json", "--local", "--bootstrap", network.bootstrap_addr, "--wait", "3")
        assert done.returncode == 0, done.stderr
        rows = {r["provider"]: r for r in json.loads(done.stdout)["offers"]}
        return rows if wanted <= set(rows) else None

    rows = wait_until("both providers' offers", heard, 60, every_s=1)
    cheap = rows[network.providers["cheap"].peer_id]
    assert cheap["price"]["cpu_core_micros_per_s"] == CHEAP_CPU_PRICE and cheap["cpu_cores"] == 2
    assert rows[network.providers["dear"].peer_id]["price"]["cpu_core_micros_per_s"] == DEAR_CPU_PRICE
    assert all(a.startswith("/ip4/127.0.0.1/") for r in rows.values() for a in r["addrs"])


# -- Ctrl-C of the buyer -----------------------------------------------------------------------------------


def test_status_shows_the_job_and_ctrl_c_cancels_it_on_both_sides(network, cheap, tmp_path):
    home = tmp_path / "buyer"
    buyer = network.buyer("buyer-ctrl-c", home, ["sleep", "60"])
    agreement = _agreement_of(buyer, cheap)
    buyer.wait_stderr(" co-signed: ", count=2, timeout_s=60)

    def running_job() -> dict | None:
        jobs = [j for j in status_json(cheap.data_dir)["jobs"] if j["agreement_id"] == agreement]
        return jobs[0] if jobs and jobs[0]["state"] == "running" and jobs[0]["seconds"] > 0 else None

    job = wait_until("suanli status to show the running job", running_job, 30)
    status = status_json(cheap.data_dir)
    assert status["peer_id"] == cheap.peer_id and status["offer"] is not None
    assert job["amount_micros"] > 0 and job["countersigned_micros"] <= job["amount_micros"]
    assert containers_of(agreement), "the job's container should be running"

    buyer.send(signal.SIGINT)  # Ctrl-C: to the `suanli run` process itself
    code = buyer.wait_exit(60)
    assert buyer.stderr_lines("cancelling the job"), buyer.tail()

    for db in (cheap.db, home / "buyer.db"):
        final, _, _ = receipts_in(db, agreement)[-1]
        assert final.state == "final" and final.reason == "buyer_cancel", (db, final)
    # The buyer countersigned the final receipt, so both sides hold the same closed chain.
    final, buyer_signed, _ = receipts_in(home / "buyer.db", agreement)[-1]
    assert buyer_signed, "the buyer should have countersigned its buyer_cancel receipt"
    # The CLI exits with the job's own exit code (here: sleep ended by the stop's SIGTERM), never 0.
    assert code == _job_exit_code(final) and code != 0, (code, final.exit_code, buyer.tail())
    wait_until("the provider to store the final countersignature",
               lambda: receipts_in(cheap.db, agreement)[-1][1], 15)
    assert containers_of(agreement) == []
    wait_until("the job to leave suanli status",
               lambda: all(j["agreement_id"] != agreement for j in status_json(cheap.data_dir)["jobs"]), 20)
    for dbs in ((cheap.db,), (home / "buyer.db",), (cheap.db, home / "buyer.db")):
        report = _chain_report(_assert_audits_clean(*dbs), agreement)
        assert report["state"] == "final:buyer_cancel", (dbs, report)


# -- kill -STOP of the buyer --------------------------------------------------------------------------------


def test_stopped_buyer_is_paused_then_stopped_within_the_grace_and_the_cap(network, cheap, tmp_path, docker_client):
    home = tmp_path / "buyer"
    since = int(time.time()) - 1
    buyer = network.buyer("buyer-stopped", home, ["sleep", "60"])
    try:
        agreement = _agreement_of(buyer, cheap)
        buyer.wait_stderr(" co-signed: ", count=2, timeout_s=60)
        buyer.send(signal.SIGSTOP)

        def final_receipt():
            rows = receipts_in(cheap.db, agreement)
            return rows[-1][0] if rows and rows[-1][0].state == "final" else None

        # Pause after the countersign timeout, stop after the grace: a few intervals, plus slack for a
        # loaded machine (the assertion on timing is below, from Docker's own clock).
        limit_s = (INTERVAL_MS + COUNTERSIGN_TIMEOUT_MS + GRACE_MS) / 1000 + 30
        final = wait_until("the provider's final receipt", final_receipt, limit_s)
        assert final.reason == "buyer_unresponsive", final
        wait_until("the container to be removed", lambda: containers_of(agreement) == [], 30)

        events = docker_client.api.events(since=since, until=int(time.time()) + 1, decode=True,
                                          filters={"label": f"suanli.agreement={agreement}", "type": "container"})
        times: dict[str, list[int]] = {}
        for e in events:
            times.setdefault(e.get("status") or e.get("Action"), []).append(e["timeNano"])
        assert "pause" in times and "die" in times, times
        paused_ns, died_ns = min(times["pause"]), max(times["die"])
        # Stopped once the grace ran out after the pause: on the first meter tick past it, then the stop.
        waited_ms = (died_ns - paused_ns) / 1e6
        assert GRACE_MS - INTERVAL_MS <= waited_ms <= GRACE_MS + 2 * INTERVAL_MS + 10_000, waited_ms

        rows = receipts_in(cheap.db, agreement)
        cosigned = [r.amount_micros for r, signed, _ in rows if signed]
        last_cosigned = max(cosigned, default=0)
        assert len(cosigned) >= 2
        # Nothing the provider ever claimed runs more than the cap past the buyer's last signature.
        assert all(r.amount_micros <= last_cosigned + EXPOSURE_CAP_MICROS for r, _, _ in rows), \
            [(r.seq, r.amount_micros, s) for r, s, _ in rows]
        assert final.amount_micros - last_cosigned <= EXPOSURE_CAP_MICROS
        report = _chain_report(_assert_audits_clean(cheap.db), agreement)
        assert report["state"] == "final:buyer_unresponsive"
        assert report["amount_micros"] <= last_cosigned + EXPOSURE_CAP_MICROS
    finally:
        buyer.send(signal.SIGCONT)
    # Woken up, the buyer reads what waited for it, ends with the provider's final receipt, and both
    # databases together still audit clean.
    code = buyer.wait_exit(30)
    assert buyer.stderr_lines("(buyer_unresponsive)"), buyer.tail()
    assert code == _job_exit_code(receipts_in(home / "buyer.db", agreement)[-1][0]) and code != 0, buyer.tail()
    report = _chain_report(_assert_audits_clean(cheap.db, home / "buyer.db"), agreement)
    assert report["state"] == "final:buyer_unresponsive", report


# -- kill -9 of the provider ---------------------------------------------------------------------------------


def test_provider_killed_mid_job_restarts_reaps_and_closes_the_chain(network, cheap, tmp_path):
    home = tmp_path / "buyer"
    buyer = network.buyer("buyer-of-killed", home, ["sleep", "60"])
    agreement = _agreement_of(buyer, cheap)
    buyer.wait_stderr(" co-signed: ", count=2, timeout_s=60)
    assert containers_of(agreement)

    cheap.proc.signal_group(signal.SIGKILL)
    cheap.proc.wait_exit(15)
    code = buyer.wait_exit(60)
    assert code == EXIT_JOB_LOST, buyer.tail()
    failure = buyer.stderr_lines("job failed")
    assert failure and cheap.peer_id in failure[-1], buyer.tail()
    assert containers_of(agreement), "nothing removes the container before the provider restarts"

    restarted = network.restart(cheap)
    assert restarted.peer_id == cheap.peer_id  # the same key
    assert containers_of(agreement) == [], "the reaper should have removed the orphaned container"

    provider_rows = receipts_in(cheap.db, agreement)
    final = provider_rows[-1][0]
    assert final.state == "final" and final.reason == "provider_restart", final
    buyer_rows = receipts_in(home / "buyer.db", agreement)
    buyer_cosigned = {r.seq: body for r, signed, body in buyer_rows if signed}
    # Nothing co-signed is lost: every receipt the buyer said it countersigned is in its db, signed, and
    # every countersignature the provider holds is one the buyer stored first.
    said = _cosigned_seqs(buyer)
    assert len(said) >= 2 and set(said) <= set(buyer_cosigned), (said, sorted(buyer_cosigned))
    for r, signed, body in provider_rows:
        if signed:
            assert buyer_cosigned.get(r.seq) == body, f"receipt {r.seq} countersigned at the provider only"

    signed_max = max(r.amount_micros for r, signed, _ in buyer_rows if signed)
    assert final.amount_micros <= signed_max
    for dbs in ((cheap.db,), (home / "buyer.db",), (cheap.db, home / "buyer.db")):
        report = _chain_report(_assert_audits_clean(*dbs), agreement)
        # The buyer never owes more than it signed.
        assert report["amount_micros"] <= signed_max, (dbs, report, signed_max)
    both = _chain_report(audit_json(cheap.db, home / "buyer.db")[1], agreement)
    assert both["state"] == "final:provider_restart", both


# -- SIGTERM of the provider ---------------------------------------------------------------------------------


def test_provider_sigterm_mid_job_ends_it_with_provider_shutdown(network, cheap, tmp_path):
    home = tmp_path / "buyer"
    buyer = network.buyer("buyer-of-stopped-provider", home, ["sleep", "60"])
    agreement = _agreement_of(buyer, cheap)
    buyer.wait_stderr(" co-signed: ", count=2, timeout_s=60)
    cheap.proc.send(signal.SIGTERM)
    assert cheap.proc.wait_exit(60) == 0, cheap.proc.tail()
    assert cheap.proc.stdout and json.loads(cheap.proc.stdout[-1])["event"] == "stopped"
    code = buyer.wait_exit(60)
    assert buyer.stderr_lines("(provider_shutdown)"), buyer.tail()
    assert containers_of(agreement) == []
    for db in (cheap.db, home / "buyer.db"):
        final, cosigned, _ = receipts_in(db, agreement)[-1]
        assert final.reason == "provider_shutdown" and cosigned, (db, final)
    assert code == _job_exit_code(final) and code != 0, (code, final.exit_code, buyer.tail())
    report = _chain_report(_assert_audits_clean(cheap.db, home / "buyer.db"), agreement)
    assert report["state"] == "final:provider_shutdown" and report["pending"] == 0, report


# -- kill -9 of the buyer ------------------------------------------------------------------------------------


def test_buyer_killed_mid_job_is_stopped_as_unresponsive_within_the_cap(network, cheap, tmp_path):
    home = tmp_path / "buyer"
    buyer = network.buyer("buyer-killed", home, ["sleep", "60"])
    agreement = _agreement_of(buyer, cheap)
    buyer.wait_stderr(" co-signed: ", count=2, timeout_s=60)
    buyer.signal_group(signal.SIGKILL)
    buyer.wait_exit(15)

    def final_receipt():
        rows = receipts_in(cheap.db, agreement)
        return rows[-1][0] if rows and rows[-1][0].state == "final" else None

    final = wait_until("the provider's final receipt", final_receipt,
                       (INTERVAL_MS + COUNTERSIGN_TIMEOUT_MS + GRACE_MS) / 1000 + 30)
    assert final.reason == "buyer_unresponsive", final
    wait_until("the container to be removed", lambda: containers_of(agreement) == [], 30)
    rows = receipts_in(cheap.db, agreement)
    last_cosigned = max((r.amount_micros for r, signed, _ in rows if signed), default=0)
    assert all(r.amount_micros <= last_cosigned + EXPOSURE_CAP_MICROS for r, _, _ in rows)
    wait_until("the job to leave suanli status",
               lambda: all(j["agreement_id"] != agreement for j in status_json(cheap.data_dir)["jobs"]), 20)
    # What the dead buyer stored is a prefix of the provider's chain; together they audit clean and the
    # buyer owes no more than it signed.
    buyer_signed = max(r.amount_micros for r, signed, _ in receipts_in(home / "buyer.db", agreement) if signed)
    report = _chain_report(_assert_audits_clean(cheap.db, home / "buyer.db"), agreement)
    assert report["state"] == "final:buyer_unresponsive"
    assert report["amount_micros"] <= buyer_signed + EXPOSURE_CAP_MICROS, (report, buyer_signed)
