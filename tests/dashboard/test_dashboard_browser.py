"""Issue 20, the provider's dashboard in a real browser (headless Chromium via selenium), against real
processes: a bootstrap, ``suanli provide`` (which serves the dashboard inside its trio run) and a
``suanli run`` job in real Docker, on 127.0.0.1.

- the page loads with the token and refuses without it (401, no data); nothing answers on the machine's
  other addresses;
- the job's CPU chart gains points while it runs; after it, the earnings figure equals the sum of the
  co-signed receipts in the provider's database, and the page got there by server-sent events;
- a tampered chain shows as failing its audit;
- a screenshot of each page is written under the test's tmp path; the console holds no error.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import time
from pathlib import Path

import cli_helpers as _h
import pytest
from dashboard_helpers import http_get, start_dashboard_provider

from p2p.receipt_records import Receipt

pytestmark = [pytest.mark.docker, pytest.mark.slow]

BURN_S = 10
JOB = ["sh", "-c", f"end=$(( $(date +%s) + {BURN_S} )); while [ $(date +%s) -lt $end ]; do :; done; echo burnt"]


class Net:
    root: Path
    boot: str
    provider: _h.Proc
    url: str
    token: str
    image: str


@pytest.fixture(scope="module")
def net(tmp_path_factory, demo_image):
    net = Net()
    net.root = tmp_path_factory.mktemp("dashnet")
    net.image = demo_image
    procs = _h.Processes()
    try:
        net.boot = _h.start_bootstrap(procs, net.root)
        net.provider, ready = start_dashboard_provider(procs, net.root, net.boot)
        net.url = ready["dashboard"]
        net.token = (net.root / "provider" / "dashboard.token").read_text().strip()
        yield net
    finally:
        procs.stop_all()


def cosigned_sum(db: Path) -> int:
    """The sum over agreements of the last co-signed receipt's amount (what the buyers owe)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT agreement_id, body FROM receipts WHERE buyer_sig IS NOT NULL "
                            "ORDER BY agreement_id, seq").fetchall()
    finally:
        conn.close()
    last: dict[bytes, int] = {}
    for agreement_id, body in rows:
        last[agreement_id] = Receipt.decode(body).amount_micros
    return sum(last.values())


def _shot(browser, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    assert browser.save_screenshot(str(path)) and path.stat().st_size > 1000
    return path


def _console_errors(browser) -> list[dict]:
    return [e for e in browser.get_log("browser") if e.get("level") == "SEVERE"]


def test_without_the_token_every_route_is_401_and_shows_no_data(net):
    status = json.loads(http_get(net.url + "api/status", Authorization=f"Bearer {net.token}")[1])
    for path in ("", "api/status", "api/jobs", "api/earnings", "api/errors", "api/agreements", "agreements",
                 "api/events", "static/dashboard.js", f"?token={'x' * len(net.token)}"):
        code, body = http_get(net.url + path)
        assert code == 401, path
        assert status["peer_id"] not in body
    assert http_get(net.url + "api/status", Host="attacker.example")[0] == 421


def test_it_listens_on_loopback_only(net):
    port = int(net.url.rsplit(":", 1)[1].strip("/"))
    others = [a for a in subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=10).stdout.split()
              if ":" not in a and not a.startswith("127.")]
    for address in others:
        with pytest.raises(OSError), socket.create_connection((address, port), timeout=3):
            pass
    listening = [line.split()[1] for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
                 if line.split()[3] == "0A" and int(line.split()[1].split(":")[1], 16) == port]
    assert listening == [f"0100007F:{port:04X}"]
    assert not [line for line in Path("/proc/net/tcp6").read_text().splitlines()[1:]
                if line.split()[3] == "0A" and int(line.split()[1].split(":")[1], 16) == port]


def _points(browser, chart_prefix: str) -> int:
    charts = browser.find_elements("css selector", f"svg[id^='{chart_prefix}']")
    return max((int(c.get_attribute("data-points")) for c in charts), default=0)


def test_a_running_job_draws_its_cpu_chart_and_earnings_match_the_cosigned_receipts(net, browser, tmp_path):
    browser.get(f"{net.url}?token={net.token}")
    assert browser.current_url == net.url  # the token left the address bar for a cookie
    assert browser.find_element("id", "job-count").text == "0"
    buyer = _h.Proc("buyer", [*_h.suanli(), "run", "--no-agent", "--bootstrap", net.boot, "--local", "--image",
                              net.image, "--data-dir", str(tmp_path / "buyer"), "--cpus", "0.5", "--memory", "64m",
                              "--max-price", "1000", "--wait", "5", "--json", "--", *JOB])
    try:
        first = _h.wait_until("the job's CPU chart", lambda: _points(browser, "cpu-") >= 2, 90, every_s=0.2)
        assert first
        seen = _points(browser, "cpu-")
        later = _h.wait_until("the CPU chart to gain points", lambda: _points(browser, "cpu-") >= seen + 3, 30,
                              every_s=0.2)
        assert later
        chart = browser.find_element("css selector", "svg[id^='cpu-']")
        line = chart.find_element("css selector", "polyline").get_attribute("points")
        assert len(line.split()) >= 5 and chart.find_elements("css selector", "circle.pt")
        cores = [float(p.split(",")[1]) for p in line.split()]
        assert min(cores) < 96  # drawn above the axis (y = 96): the job used CPU
        _shot(browser, tmp_path, "overview-running")
        assert buyer.wait_exit(120) == 0, buyer.tail()
    finally:
        buyer.stop()
    db = net.root / "provider" / "node.db"
    expected = _h.wait_until("the provider to store the final countersignature",
                             lambda: (lambda s: s if s > 0 and _final_cosigned(db) else None)(cosigned_sum(db)), 20,
                             every_s=0.05)
    stored = time.monotonic()
    shown = _h.wait_until("the page to show the earnings",
                          lambda: int(browser.find_element("id", "earned").get_attribute("data-micros")) == expected,
                          10, every_s=0.05)
    assert shown and time.monotonic() - stored <= 2.0  # issue 20: live within 2 s of the receipt
    assert browser.find_element("id", "job-count").text == "0"
    assert int(browser.find_element("id", "pending").get_attribute("data-micros")) == 0
    earnings = json.loads(http_get(net.url + "api/earnings", Authorization=f"Bearer {net.token}")[1])
    assert earnings["cosigned_micros"] == expected == sum(b["micros"] for b in earnings["per_day"])
    assert sum(b["micros"] for b in earnings["per_hour"]) == expected
    assert browser.find_element("id", "earn-hour").find_elements("css selector", "rect.bar")
    _shot(browser, tmp_path, "overview-after")
    assert _console_errors(browser) == []


def _final_cosigned(db: Path) -> bool:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT body, buyer_sig IS NOT NULL FROM receipts ORDER BY agreement_id, seq").fetchall()
    finally:
        conn.close()
    return bool(rows) and Receipt.decode(rows[-1][0]).state == "final" and bool(rows[-1][1])


def test_a_tampered_chain_shows_as_failing_its_audit(net, browser, tmp_path):
    """Last in the module: it rewrites a receipt in the provider's own database (as an intruder would)."""
    browser.get(f"{net.url}agreements?token={net.token}")
    rows = browser.find_elements("css selector", "tr[data-agreement]")
    assert rows and all(r.find_element("css selector", ".verdict").text == "ok" for r in rows)
    agreement = rows[0].get_attribute("data-agreement")
    _shot(browser, tmp_path, "receipts-clean")
    conn = sqlite3.connect(net.root / "provider" / "node.db")
    try:
        conn.execute("DROP TRIGGER receipts_no_rewrite")
        # Receipt 1: a signature that no longer verifies; receipt 2: a body that no longer decodes.
        for seq, column in ((1, "provider_sig"), (2, "body")):
            value = conn.execute(f"SELECT {column} FROM receipts WHERE agreement_id = ? AND seq = ?",
                                 (bytes.fromhex(agreement), seq)).fetchone()[0]
            conn.execute(f"UPDATE receipts SET {column} = ? WHERE agreement_id = ? AND seq = ?",
                         (value[:-1] + bytes([value[-1] ^ 1]), bytes.fromhex(agreement), seq))
        conn.commit()
    finally:
        conn.close()
    browser.get(f"{net.url}agreements/{agreement[:12]}")
    verdict = browser.find_element("id", "audit").text
    assert "FAILS its audit" in verdict and "malformed" in verdict
    assert "malformed" in browser.find_element("tag name", "table").text
    _shot(browser, tmp_path, "agreement-tampered")
    browser.get(f"{net.url}agreements")
    assert "FAILS its audit" in browser.find_element("css selector", f"tr[data-agreement='{agreement}']").text
    _shot(browser, tmp_path, "receipts-tampered")
    assert _console_errors(browser) == []
