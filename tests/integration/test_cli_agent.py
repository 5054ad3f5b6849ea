"""The resident buyer agent through real processes: ``suanli agent`` joined once, ``suanli run`` handing
jobs to it over its unix socket, with real Docker and real SQLite on 127.0.0.1.

One network per module: a bootstrap process, one provider with short receipt terms, and one agent. Each
test drives ``suanli run`` processes that find the agent by its data directory (never given
``--bootstrap``: a run that tried to join by itself would fail at once) and checks what the agent
promises (node.agent): the same job, receipts and evidence as a standalone run; Ctrl-C and a vanished
client both cancel with a ``buyer_cancel`` final receipt on both sides; a bad request is refused
without harming the agent; a provider that has gone is tried once, then its offer is set aside; one
agent per data directory; SIGTERM cancels running jobs and removes the
socket; a stale socket makes ``suanli run`` run standalone. Every process is stopped in teardown and
every wait is bounded (cli_helpers).
"""

from __future__ import annotations

import json
import signal
import socket
from pathlib import Path

import cli_helpers as _h
import pytest

PROVIDER_TOML, Processes, suanli, run_cli = _h.PROVIDER_TOML, _h.Processes, _h.suanli, _h.run_cli
agreement_ids, containers_of = _h.agreement_ids, _h.containers_of
receipts_in, wait_until, _assert_audits_clean = _h.receipts_in, _h.wait_until, _h.assert_audits_clean

pytestmark = [pytest.mark.docker, pytest.mark.slow]

JOB = ["--cpus", "0.5", "--memory", "64m", "--max-price", "100", "--max-duration", "120", "--show-receipts"]


class AgentNet:
    def __init__(self, root: Path, procs: Processes) -> None:
        self.root, self.procs = root, procs
        self.bootstrap_addr = ""
        self.provider_db = root / "provider" / "node.db"
        self.home = root / "buyer"
        self.image = ""

    def start_provider(self, name: str, cpu_price: int):  # noqa: ANN201
        """A provider with short receipt terms, its data under ``root / name``: (process, its ready line)."""
        config = self.root / f"{name}.toml"
        config.write_text(PROVIDER_TOML.format(
            data_dir=self.root / name, bootstrap=self.bootstrap_addr, cpu_price=cpu_price, interval_ms=1000,
            countersign_timeout_ms=2000, grace_ms=2000, exposure_cap_micros=100))
        proc = self.procs.start(name, [*suanli(), "provide", "--config", str(config), "--json"])
        return proc, proc.json_line(f"the {name} provider ready")

    def start_agent(self, name: str = "agent"):  # noqa: ANN201
        return self.procs.start(name, [*suanli(), "agent", "--bootstrap", self.bootstrap_addr, "--local",
                                       "--data-dir", str(self.home), "--json"])

    def run(self, name: str, command: list[str], *extra: str):  # noqa: ANN201
        return self.procs.start(name, [*suanli(), "run", "--data-dir", str(self.home), "--image", self.image,
                                       *JOB, *extra, "--", *command])


@pytest.fixture(scope="module")
def net(tmp_path_factory, demo_image):
    root = tmp_path_factory.mktemp("agentnet")
    procs = Processes()
    net = AgentNet(root, procs)
    net.image = demo_image
    try:
        net.bootstrap_addr = _h.start_bootstrap(procs, root)
        assert net.start_provider("provider", cpu_price=40)[1]["event"] == "ready"
        agent = net.start_agent()
        net.agent = agent
        net.ready = wait_until("the agent to know the provider's offer", lambda: _agent_ready(net), 90, every_s=1)
        yield net
    finally:
        procs.stop_all()


def _agent_ready(net: AgentNet) -> dict | None:
    ready = net.agent.json_line("the agent ready", 60)
    if ready["offers"] >= 1:
        return ready
    # The agent started before it heard the offer: a run falls back to collecting; wait for one to work.
    done = run_cli("run", "--data-dir", str(net.home), "--image", net.image, *JOB, "--dry-run", "--", "true")
    return ready if done.returncode == 0 else None


def _agreement_of(buyer, timeout_s: float = 60) -> str:  # noqa: ANN001
    line = buyer.wait_stderr("(agreement ", timeout_s=timeout_s)[0]
    prefix = line.rsplit("(agreement ", 1)[1].rstrip(")")
    return wait_until(f"agreement {prefix} in the buyer's db",
                      lambda: next((a for a in agreement_ids(buyer_db_of(buyer)) if a.startswith(prefix)), None), 10)


def buyer_db_of(buyer) -> Path:  # noqa: ANN001
    return Path(buyer.args[buyer.args.index("--data-dir") + 1]) / "buyer.db"


def _final(db: Path, agreement: str):  # noqa: ANN202
    rows = receipts_in(db, agreement)
    return rows[-1][0] if rows and rows[-1][0].state == "final" else None


def test_ready_line_names_the_socket_and_it_is_private(net):
    sock = Path(net.ready["socket"])
    assert sock == net.home / "agent.sock" and sock.is_socket()
    assert sock.stat().st_mode & 0o777 == 0o600
    assert net.ready["peer_id"] and net.ready["jobs"] == 0


def test_run_through_the_agent_reads_input_writes_output_and_keeps_the_evidence(net, tmp_path, monkeypatch):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "words.txt").write_text("one two three\n")
    monkeypatch.chdir(tmp_path)  # relative --input/--output: resolved by the client, not the agent
    buyer = net.procs.start("buyer-io", [
        *suanli(), "run", "--data-dir", str(net.home), "--image", net.image, *JOB, "--json",
        "--input", "in", "--output", "out", "--", "sh", "-c",
        "wc -w < /io/in/words.txt > /io/out/count.txt; echo to-stdout; sleep 2"])
    assert buyer.wait_exit(90) == 0, buyer.tail()
    summary = json.loads(buyer.stdout[-1])
    assert summary["ok"] and summary["exit_code"] == 0 and summary["reason"] == "completed"
    assert summary["outputs"] == ["count.txt"] and summary["receipts"] >= 2 and summary["billed_ms"] >= 2000
    assert (tmp_path / "out" / "count.txt").read_text().strip() == "3"
    assert summary["database"] == str(net.home / "buyer.db")
    assert "to-stdout" not in buyer.stdout  # --json: the one summary only, as a standalone run
    final = _final(net.home / "buyer.db", summary["agreement_id"])
    assert final is not None and final.reason == "completed" and final.amount_micros == summary["amount_micros"]
    _assert_audits_clean(net.home / "buyer.db", net.provider_db)


def test_job_output_and_exit_code_are_relayed(net):
    buyer = net.run("buyer-exit", ["sh", "-c", "echo out-line; echo err-line >&2; exit 7"])
    assert buyer.wait_exit(90) == 7, buyer.tail()
    assert "out-line" in buyer.stdout and "err-line" in buyer.stderr
    assert buyer.stderr_lines("offer(s) found") and buyer.stderr_lines("exit code 7")


def test_ctrl_c_cancels_with_a_final_receipt_on_both_sides(net):
    buyer = net.run("buyer-ctrl-c", ["sleep", "60"])
    agreement = _agreement_of(buyer)
    buyer.wait_stderr(" co-signed: ", count=2, timeout_s=60)
    assert containers_of(agreement)
    buyer.send(signal.SIGINT)
    code = buyer.wait_exit(60)
    assert buyer.stderr_lines("cancelling the job"), buyer.tail()
    assert code != 0 and buyer.stderr_lines("(buyer_cancel)"), buyer.tail()
    for db in (net.home / "buyer.db", net.provider_db):
        final = wait_until(f"the final receipt in {db}", lambda db=db: _final(db, agreement), 20)
        assert final.reason == "buyer_cancel", final
    wait_until("the container to be removed", lambda: containers_of(agreement) == [], 30)
    _assert_audits_clean(net.home / "buyer.db", net.provider_db)


def test_a_client_that_vanishes_cancels_its_job(net):
    buyer = net.run("buyer-killed", ["sleep", "60"])
    agreement = _agreement_of(buyer)
    buyer.wait_stderr(" co-signed: ", count=1, timeout_s=60)
    buyer.signal_group(signal.SIGKILL)
    buyer.wait_exit(15)
    # The agent is the buyer's node: it still countersigns the provider's final receipt and stores it.
    for db in (net.home / "buyer.db", net.provider_db):
        final = wait_until(f"the final receipt in {db}", lambda db=db: _final(db, agreement), 30)
        assert final.reason == "buyer_cancel", final
    assert wait_until("the buyer's countersignature of it", lambda: receipts_in(net.provider_db, agreement)[-1][1], 15)
    wait_until("the container to be removed", lambda: containers_of(agreement) == [], 30)
    _assert_audits_clean(net.home / "buyer.db", net.provider_db)


def _ask(path: Path, payload: bytes) -> list[dict]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(str(path))
        s.sendall(payload)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return [json.loads(line) for line in data.splitlines()]


@pytest.mark.parametrize("payload, says", [
    (b"not json\n", "one JSON object"),
    (b'{"op": "status"}\n', '"op": "run"'),
    (b'{"op": "run", "args": {}, "command": ["true"]}\n', "missing"),
])
def test_a_bad_request_gets_an_error_and_the_agent_carries_on(net, payload, says):
    events = _ask(net.home / "agent.sock", payload)
    assert events[0]["ev"] == "error" and says in events[0]["text"], events
    assert events[-1] == {"ev": "exit", "code": 125}  # node.exitcodes.EXIT_SUANLI
    assert net.agent.alive()
    done = run_cli("run", "--data-dir", str(net.home), "--image", net.image, *JOB, "--dry-run", "--json", "--",
                   "true")
    assert done.returncode == 0 and json.loads(done.stdout)["dry_run"] is True, done.stderr


def test_a_type_confusion_in_args_is_refused(net):
    from node.agent_client import FIELDS

    fields = {name: None for name in FIELDS} | {"gpus": True, "cpus": 1, "memory": "64m", "max_price": 1,
                                               "max_duration": 1, "wait": 1, "candidates": 1,
                                               "negotiate_timeout": 1, "show_receipts": False,
                                               "dry_run": False, "json": False, "verbose": False}
    events = _ask(net.home / "agent.sock", json.dumps({"op": "run", "args": fields, "command": ["true"]}).encode()
                  + b"\n")
    assert events[0]["ev"] == "error" and "args.gpus" in events[0]["text"], events



def _dry_run_candidates(net: AgentNet) -> list[str]:
    done = run_cli("run", "--data-dir", str(net.home), "--image", net.image, *JOB, "--dry-run", "--json", "--",
                   "true")
    assert done.returncode == 0, done.stderr
    return [c["provider"] for c in json.loads(done.stdout)["candidates"]]


def test_a_provider_that_has_gone_costs_one_try_then_its_offer_is_set_aside(net):
    cheap, ready = net.start_provider("cheap", cpu_price=10)
    gone = ready["peer_id"]
    wait_until("the agent to rank the cheaper offer first", lambda: _dry_run_candidates(net)[0] == gone, 60,
               every_s=1)
    cheap.signal_group(signal.SIGKILL)
    cheap.wait_exit(15)

    first = net.run("buyer-after-gone", ["echo", "hi"])
    assert first.wait_exit(90) == 0, first.tail()
    assert first.stderr_lines(f"{gone}: failed") or first.stderr_lines(f"{gone}: no answer"), first.tail()
    # The agent set the offer aside: the next run neither ranks nor tries the provider that has gone.
    assert gone not in _dry_run_candidates(net)
    second = net.run("buyer-after-gone-2", ["echo", "hi"])
    assert second.wait_exit(90) == 0, second.tail()
    assert not second.stderr_lines(gone), second.tail()
    assert net.agent.alive()
    _assert_audits_clean(net.home / "buyer.db", net.provider_db)

def test_a_second_agent_on_the_same_data_dir_is_refused(net):
    second = net.start_agent("agent-2")
    assert second.wait_exit(60) == 2
    assert second.stderr_lines("already serving this data directory"), second.tail()
    assert net.agent.alive() and (net.home / "agent.sock").is_socket()


def test_sigterm_cancels_running_jobs_then_a_stale_socket_means_standalone(net, tmp_path):
    buyer = net.run("buyer-at-shutdown", ["sleep", "60"])
    agreement = _agreement_of(buyer)
    buyer.wait_stderr(" co-signed: ", count=1, timeout_s=60)
    net.agent.send(signal.SIGTERM)
    assert net.agent.wait_exit(60) == 0, net.agent.tail()
    assert json.loads(net.agent.stdout[-1])["event"] == "stopped"
    assert buyer.wait_exit(30) != 0
    for db in (net.home / "buyer.db", net.provider_db):
        final = wait_until(f"the final receipt in {db}", lambda db=db: _final(db, agreement), 30)
        assert final.reason == "buyer_cancel", final
    assert not (net.home / "agent.sock").exists()

    # A socket file nobody answers (an agent killed with -9): `suanli run` runs the job itself.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
        stale.bind(str(net.home / "agent.sock"))
    standalone = run_cli("run", "--data-dir", str(net.home), "--image", net.image, *JOB, "--json",
                         "--bootstrap", net.bootstrap_addr, "--local", "--wait", "5", "--", "echo", "hi",
                         timeout_s=120)
    assert standalone.returncode == 0, standalone.stderr
    assert json.loads(standalone.stdout)["exit_code"] == 0
    # ... and `--agent` naming it explicitly is an error, not a silent fallback.
    explicit = run_cli("run", "--agent", str(net.home / "agent.sock"), "--image", net.image, *JOB, "--", "true")
    assert explicit.returncode == 125 and "no buyer agent answers" in explicit.stderr
    _assert_audits_clean(net.home / "buyer.db", net.provider_db)
