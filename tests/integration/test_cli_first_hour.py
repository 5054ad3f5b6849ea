"""Issue 17, what a new user meets in the first hour, through real processes (a bootstrap, providers,
a buyer agent, ``suanli run``) with real Docker and real SQLite on 127.0.0.1:

- item 1: after peers have come and gone (providers killed with -9 and stopped, a light client that
  left), a ``suanli run`` that prints "hi" writes only Suanli's lines to stderr, not libp2p's;
- item 2: the job's own exit code passes through (3 is not "no provider"; 126 is the job's when
  ``exit_source`` says so), standalone and through the agent, and a buyer's mistake sent to the agent is
  125 there too;
- item 4: a job killed for memory says "killed: out of memory (limit N MiB)";
- item 5: ``--gpus 1`` on a network without GPU offers says why nothing fits, exit 126.
One network per module; every process is stopped in teardown and every wait is bounded (cli_helpers).
"""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
from pathlib import Path

import cli_helpers as _h
import pytest

from node.exitcodes import EXIT_NO_PROVIDER, EXIT_SUANLI

PROVIDER_TOML, Processes, suanli, run_cli = _h.PROVIDER_TOML, _h.Processes, _h.suanli, _h.run_cli
wait_until = _h.wait_until

pytestmark = [pytest.mark.docker, pytest.mark.slow]

JOB = ("--cpus", "0.5", "--memory", "64m", "--max-price", "1000", "--max-duration", "120", "--wait", "5")


class Net:
    def __init__(self, root: Path, procs: Processes) -> None:
        self.root, self.procs = root, procs
        self.bootstrap_addr = ""
        self.image = ""

    def start_provider(self, name: str, cpu_price: int) -> _h.Proc:
        config = self.root / f"{name}.toml"
        config.write_text(PROVIDER_TOML.format(
            data_dir=self.root / name, bootstrap=self.bootstrap_addr, cpu_price=cpu_price, interval_ms=1000,
            countersign_timeout_ms=3000, grace_ms=3000, exposure_cap_micros=1000))
        proc = self.procs.start(name, [*suanli(), "provide", "--config", str(config), "--json"])
        assert proc.json_line(f"{name} ready")["event"] == "ready"
        return proc

    def run(self, home: Path, *args: str) -> tuple[int, str, str]:
        done = run_cli("run", "--no-agent", "--bootstrap", self.bootstrap_addr, "--local", "--image", self.image,
                       "--data-dir", str(home), *JOB, *args, timeout_s=180)
        return done.returncode, done.stdout, done.stderr


@pytest.fixture(scope="module")
def net(tmp_path_factory, demo_image):
    root = tmp_path_factory.mktemp("firsthour")
    procs = Processes()
    net = Net(root, procs)
    net.image = demo_image
    try:
        net.bootstrap_addr = _h.start_bootstrap(procs, root)
        # Peers that come and go, as in a day's use: cheaper providers (tried first) that are gone by the
        # time the buyer runs, one killed with -9 and one stopped, and a light client that ran and left.
        gone_hard = net.start_provider("gone-hard", cpu_price=10)
        gone_soft = net.start_provider("gone-soft", cpu_price=20)
        net.start_provider("live", cpu_price=40)
        code, _, err = net.run(root / "early-buyer", "--", "true")
        assert code == 0, err
        gone_hard.signal_group(signal.SIGKILL)
        gone_soft.send(signal.SIGINT)
        gone_hard.wait_exit(30)
        gone_soft.wait_exit(60)
        yield net
    finally:
        procs.stop_all()


def test_after_peers_have_come_and_gone_stderr_holds_only_suanlis_lines(net, tmp_path):
    code, out, err = net.run(tmp_path / "buyer", "--", "echo", "hi")
    assert code == 0, err
    assert out.splitlines() == ["hi"]
    lines = err.splitlines()
    assert lines and all(line.startswith("suanli: ") for line in lines), "\n".join(lines)
    assert len(lines) <= 8, "\n".join(lines)  # offers found, one line per provider gone, agreed, the summary


def test_the_jobs_own_exit_code_passes_through(net, tmp_path):
    code, _, err = net.run(tmp_path / "buyer", "--", "sh", "-c", "exit 3")
    assert code == 3, err  # was "no provider" (3) before issue 17
    code, out, err = net.run(tmp_path / "buyer", "--json", "--", "sh", "-c", "exit 126")
    doc = json.loads(out)
    assert code == 126 and doc["exit_code"] == 126 and doc["exit_source"] == "job", (out, err)


def test_an_oom_kill_is_named_in_the_human_output(net, tmp_path):
    code, _, err = net.run(tmp_path / "buyer", "--memory", "16m", "--", "sh", "-c",
                           'x="$(head -c 200000000 /dev/zero | tr "\\0" a)"; echo survived')
    assert code == 137, err
    assert "suanli: killed: out of memory (limit 16 MiB)" in err.splitlines(), err


def test_gpus_on_a_network_without_gpu_offers_says_why(net, tmp_path):
    code, out, err = net.run(tmp_path / "buyer", "--wait", "2", "--gpus", "1", "--json", "--", "true")
    doc = json.loads(out)
    assert code == EXIT_NO_PROVIDER and doc["exit_source"] == "suanli" and doc["exit_code"] == code, (out, err)
    code, out, err = net.run(tmp_path / "buyer", "--wait", "2", "--gpus", "1", "--", "true")
    assert code == EXIT_NO_PROVIDER and "is any provider running" not in err, err
    # Either no offer came back (only GPU offers are looked up) and the line says none offers a GPU, or
    # CPU offers heard on gossip are each explained ("needs 1 x GPU, 0 free").
    assert "offers a GPU (--gpus 1)" in err or "needs 1 x GPU, 0 free" in err, err


def test_the_agent_path_has_the_same_exit_codes(net, tmp_path):
    home = tmp_path / "agent-home"
    agent = net.procs.start("agent", [*suanli(), "agent", "--bootstrap", net.bootstrap_addr, "--local",
                                      "--data-dir", str(home), "--json"])
    try:
        assert agent.json_line("the agent ready")["event"] == "ready"
        via = ("run", "--data-dir", str(home), "--image", net.image, *JOB)
        job = run_cli(*via, "--", "sh", "-c", "exit 3", timeout_s=180)
        assert job.returncode == 3, job.stderr
        mistake = run_cli(*via, "--cpus", "0", "--json", "--", "true", timeout_s=60)
        doc = json.loads(mistake.stdout)
        assert mistake.returncode == EXIT_SUANLI and doc["exit_source"] == "suanli", (mistake.stdout, mistake.stderr)
        assert "--cpus" in mistake.stderr and len(mistake.stderr.splitlines()) == 1, mistake.stderr
    finally:
        agent.stop()


def test_a_failing_demo_job_says_why():
    done = run_cli("demo", "--providers", "1", "--", "sh", "-c", "echo about to fail; exit 3", timeout_s=300)
    last = done.stdout.strip().splitlines()[-1]
    if " are in /" in last:  # a failed demo keeps its files for the user to read: remove them here
        shutil.rmtree(last.rsplit(" are in ", 1)[1], ignore_errors=True)
    assert done.returncode == 1, done.stdout + done.stderr
    assert last.startswith("demo: FAILED: suanli run exited 3 (the job's own exit code"), last


def test_a_job_stopped_at_the_buyers_own_max_duration_is_not_held_against_the_provider(net, tmp_path):
    home = tmp_path / "buyer"
    code, out, err = net.run(home, "--max-duration", "2", "--json", "--", "sleep", "60")
    doc = json.loads(out)
    assert doc["reason"] == "deadline" and doc["exit_source"] == "job" and code == doc["exit_code"], (out, err)
    with sqlite3.connect(home / "buyer.db") as db:
        assert [row[0] for row in db.execute("SELECT outcome FROM outcomes")] == ["completed"]
