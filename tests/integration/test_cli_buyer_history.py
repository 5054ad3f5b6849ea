"""Issue 20, buyer history through the real CLI: ``suanli demo`` runs a real job (bootstrap, provider,
buyer as processes, real Docker, real SQLite), then ``suanli jobs`` / ``logs`` / ``receipts`` read the
buyer's database and stored log as a user would."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import cli_helpers as _h
import pytest

from p2p.receipt_records import Receipt
from settlement.store import Store

run_cli = _h.run_cli
pytestmark = [pytest.mark.docker, pytest.mark.slow]

JOB = ["sh", "-c", "echo out one; echo err one >&2; printf 'tab\\there\\n'; sleep 1; echo out two; exit 4"]


@pytest.fixture(scope="module")
def demo(docker_client):
    done = run_cli("demo", "--json", "--providers", "1", "--", *JOB, timeout_s=300)
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    try:
        assert summary["run"]["exit_code"] == 4, done.stdout + done.stderr
        yield summary
    finally:
        shutil.rmtree(summary["root"], ignore_errors=True)


def _buyer(demo) -> Path:
    return Path(demo["root"]) / "buyer"


def test_jobs_lists_the_job_with_figures_from_cosigned_receipts(demo):
    home = _buyer(demo)
    done = run_cli("jobs", "--json", "--data-dir", str(home))
    assert done.returncode == 0, done.stderr
    [job] = json.loads(done.stdout)["jobs"]
    assert job["agreement_id"] == demo["run"]["agreement_id"]
    assert job["provider"] == demo["run"]["provider"]
    assert job["image"] == demo["image"]
    assert (job["exit_code"], job["reason"], job["state"]) == (4, "completed", "ended")
    with Store(home / "buyer.db", readonly=True) as store:
        rows = store.conn.execute("SELECT body FROM receipts WHERE buyer_sig IS NOT NULL ORDER BY seq").fetchall()
    last = Receipt.decode(rows[-1][0])
    assert (job["billed_ms"], job["amount_micros"]) == (last.metered_ms, last.amount_micros)
    assert job["amount_micros"] == demo["run"]["amount_micros"] > 0
    text = run_cli("jobs", "--data-dir", str(home))
    assert text.returncode == 0 and job["agreement_id"][:16] in text.stdout and "completed" in text.stdout


def test_logs_replays_the_output_as_received_on_its_own_streams(demo):
    home = _buyer(demo)
    agreement = demo["run"]["agreement_id"]
    [log_file] = (home / "logs").iterdir()
    assert log_file.name == f"{agreement}.log"
    assert stat.S_IMODE(log_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((home / "logs").stat().st_mode) == 0o700
    done = run_cli("logs", agreement[:10], "--data-dir", str(home))
    assert done.returncode == 0, done.stderr
    assert done.stdout == "out one\ntab\there\nout two\n"
    assert done.stderr == "err one\n"


def test_receipts_show_each_receipt_and_the_audit_verdict(demo):
    home = _buyer(demo)
    agreement = demo["run"]["agreement_id"]
    done = run_cli("receipts", agreement[:8], "--json", "--data-dir", str(home))
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["agreement_id"] == agreement
    assert [r["seq"] for r in doc["receipts"]] == list(range(1, len(doc["receipts"]) + 1))
    assert doc["receipts"][-1]["state"] == "final" and all(r["cosigned"] for r in doc["receipts"])
    assert doc["audit"]["ok"] and doc["audit"]["amount_micros"] == demo["run"]["amount_micros"]
    text = run_cli("receipts", agreement[:8], "--data-dir", str(home))
    assert text.returncode == 0 and "audit: ok" in text.stdout


@pytest.mark.parametrize("given, says", [("ffffffffffffffffff", "no agreement with id"), ("xyz", "not an agreement id"),
                                         ("", "not an agreement id")])
def test_a_wrong_agreement_id_is_one_line_and_exit_2(demo, given, says):
    for command in ("logs", "receipts"):
        done = run_cli(command, given, "--data-dir", str(_buyer(demo)))
        assert done.returncode == 2 and says in done.stderr and "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1


def test_no_buyer_database_is_one_line(tmp_path):
    done = run_cli("jobs", "--data-dir", str(tmp_path))
    assert done.returncode == 2 and "no buyer database" in done.stderr and "Traceback" not in done.stderr
