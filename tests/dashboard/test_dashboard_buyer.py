"""The buyer's side of the dashboard (node.dashboard.buyer, served by ``suanli agent``) over a real buyer
database holding real signed receipts (settlement.testing) and a real stored log (node.joblog): the jobs as
``suanli jobs`` lists them, spend from countersigned receipts only, the logs as received, a tampered chain;
then the real hypercorn server beside a provider's dashboard in the same data directory."""

from __future__ import annotations

import http.client
import json
import sqlite3
import stat
import urllib.error
import urllib.request
from typing import Any

import pytest
import trio

from node.commands.dashboard import dashboard_url
from node.commands.history import job_row
from node.dashboard.buyer import BUYER_DB, BuyerBoard
from node.dashboard.serve import AGENT_TOKEN_FILE, AGENT_URL_FILE, TOKEN_FILE, URL_FILE, serve_dashboard
from node.joblog import keeper
from p2p.envelope import sign_record
from p2p.errors import SuanliError
from settlement.store import Store
from settlement.testing import key_from_label, make_agreement, make_chain, next_receipt, write_store

PROVIDER, BUYER = key_from_label("provider"), key_from_label("buyer")
NOW = 1_800_000_100_000
AGENT = {"peer_id": "12D3KooWBuyer", "addrs": ["/ip4/127.0.0.1/tcp/4001"], "offers": 2, "jobs": 1}


def _buyer_home(tmp_path):
    """A buyer's data directory: one settled job (3 receipts, final, countersigned) with its stored output,
    one open job whose last receipt the buyer has not countersigned."""
    home = tmp_path / "buyer"
    home.mkdir()
    done = make_chain(PROVIDER, BUYER, 3, nonce=b"\x02" * 16)
    write_store(home / BUYER_DB, done)
    offer, proposal, agreement = make_agreement(PROVIDER, BUYER, now_ms=1_800_000_050_000, nonce=b"\x01" * 16)
    first = next_receipt(agreement, None, agreement.record_id)
    with Store(home / BUYER_DB) as store:
        store.put_offer(offer)
        store.put_proposal(proposal)
        store.put_agreement(agreement)
        store.append_receipt(sign_record(first, PROVIDER))
    keep = keeper(home, done.agreement.record_id)
    keep("stdout", b"hello <b>buyer</b>")
    keep("stderr", b"\xffwarning")
    return home, done, agreement, first


def test_the_jobs_spend_and_logs_are_the_buyer_database_s(tmp_path):
    home, done, agreement, first = _buyer_home(tmp_path)
    board = BuyerBoard(home, url="http://127.0.0.1:1/")
    assert board.refresh(AGENT, NOW)
    snap = board.snapshot
    with Store(home / BUYER_DB, readonly=True) as store:
        expected = {a.hex(): job_row(a, store.load_chain(a)) for a in store.agreement_ids()}
    assert {j["agreement_id"]: j for j in snap["jobs"]} == expected  # exactly `suanli jobs --json`'s rows
    assert snap["jobs"][0]["agreement_id"] == agreement.record_id.hex()  # the newest first
    ended = expected[done.agreement.record_id.hex()]
    assert ended["state"] == "ended" and ended["exit_code"] == done.receipts[-1].record.exit_code
    spend = snap["spend"]
    assert spend["cosigned_micros"] == done.receipts[-1].record.amount_micros  # the unsigned claim is not spend
    assert spend["pending_micros"] == first.amount_micros
    assert sum(b["micros"] for b in spend["per_day"]) == spend["cosigned_micros"]
    assert snap["status"] == {"peer_id": AGENT["peer_id"], "addrs": AGENT["addrs"], "data_dir": str(home),
                              "offers": 2, "running": 1, "dashboard": "http://127.0.0.1:1/"}
    assert not board.refresh(AGENT, NOW)  # nothing changed: no new version
    assert board.logs(done.agreement.record_id) == [{"stream": "stdout", "text": "hello <b>buyer</b>"},
                                                    {"stream": "stderr", "text": "\ufffdwarning"}]
    assert board.logs(agreement.record_id) == []
    verdicts = board.audits()
    assert verdicts[done.agreement.record_id.hex()]["ok"]
    assert verdicts[done.agreement.record_id.hex()]["provider"] == ended["provider"]


def test_a_tampered_chain_is_a_row_saying_so_and_fails_its_audit(tmp_path):
    home, done, _, _ = _buyer_home(tmp_path)
    conn = sqlite3.connect(home / BUYER_DB)
    conn.execute("DROP TRIGGER receipts_no_rewrite")
    conn.execute("UPDATE receipts SET body = x'00' WHERE agreement_id = ? AND seq = 2", (done.agreement.record_id,))
    conn.commit()
    conn.close()
    board = BuyerBoard(home)
    assert board.refresh(AGENT, NOW)  # the refresh goes on
    row = next(j for j in board.snapshot["jobs"] if j["agreement_id"] == done.agreement.record_id.hex())
    assert row["state"] == "malformed" and "does not decode" in row["reason"]
    assert [r["state"] for r in board.receipts(done.agreement.record_id)] == ["running", "malformed", "final"]
    assert not board.audits()[done.agreement.record_id.hex()]["ok"]


def _fetch(url: str, **headers: str) -> tuple[int, bytes, Any]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as reply:
            return reply.status, reply.read(), reply.headers
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers


def _first_answer(base: str, path: str) -> tuple[int, str, str]:
    """(status, Location, Set-Cookie) of one request for a page, redirects not followed."""
    port = int(base.rsplit(":", 1)[1].strip("/"))
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Accept": "text/html"})
        reply = conn.getresponse()
        return reply.status, reply.getheader("location", ""), reply.getheader("set-cookie", "")
    finally:
        conn.close()


async def test_the_agent_s_dashboard_beside_the_provider_s_in_one_data_directory(tmp_path):
    home, done, agreement, _ = _buyer_home(tmp_path)
    provider_status = {"peer_id": "12D3KooWProvider", "addrs": [], "accepting": True, "offer": None, "jobs": [],
                       "last_errors": [], "connected_peers": 0}
    async with trio.open_nursery() as nursery:
        buyer_url = await nursery.start(lambda task_status: serve_dashboard(
            home, 0, lambda: AGENT, side="buyer", task_status=task_status))
        provider_url = await nursery.start(serve_dashboard, home, 0, lambda: provider_status)
        token = (home / AGENT_TOKEN_FILE).read_text().strip()
        provider_token = (home / TOKEN_FILE).read_text().strip()
        assert token != provider_token and buyer_url != provider_url
        for name in (AGENT_TOKEN_FILE, AGENT_URL_FILE):
            assert stat.S_IMODE((home / name).stat().st_mode) == 0o600
        assert json.loads((home / AGENT_URL_FILE).read_text())["url"] == buyer_url
        assert json.loads((home / URL_FILE).read_text())["url"] == provider_url

        def get(path: str, bearer: str | None = token, **headers: str) -> tuple[int, bytes, Any]:
            if bearer is not None:
                headers["Authorization"] = f"Bearer {bearer}"
            return _fetch(buyer_url + path, **headers)

        done_hex = done.agreement.record_id.hex()
        checks = await trio.to_thread.run_sync(lambda: {
            "jobs": get("api/jobs"), "spend": get("api/spend"), "status": get("api/status"),
            "earnings": get("api/earnings"), "logs": get(f"api/logs/{done_hex[:10]}"),
            "one": get(f"api/agreements/{done_hex[:10]}"), "page": get(f"agreements/{done_hex}"),
            "overview": get(""), "none": get("api/jobs", bearer=None), "other": get("api/jobs", provider_token),
            "host": get("api/jobs", Host="attacker.example"),
            "cookie": _first_answer(buyer_url, f"/?token={token}")})
        assert checks["jobs"][0] == 200 and len(json.loads(checks["jobs"][1])) == 2
        assert json.loads(checks["spend"][1])["cosigned_micros"] == done.receipts[-1].record.amount_micros
        assert json.loads(checks["status"][1])["peer_id"] == AGENT["peer_id"]
        assert checks["earnings"][0] == 404  # the provider's endpoint, not the buyer's
        assert json.loads(checks["logs"][1])["logs"][0] == {"stream": "stdout", "text": "hello <b>buyer</b>"}
        assert json.loads(checks["one"][1])["audit"]["ok"] and checks["one"][2]["Cache-Control"] == "no-store"
        page = checks["page"][1].decode()
        assert "hello &lt;b&gt;buyer&lt;/b&gt;" in page and "<b>buyer</b>" not in page and "[stderr]" in page
        assert "Suanli buyer: agreement" in page and 'class="ok verdict"' in page
        assert agreement.record_id.hex()[:16] in checks["overview"][1].decode()
        for refused in ("none", "other"):  # the provider's token does not open the buyer's dashboard
            assert checks[refused][0] == 401 and AGENT["peer_id"].encode() not in checks[refused][1]
        assert b"suanli dashboard --agent" in checks["none"][1]
        assert checks["host"][0] == 421
        assert checks["cookie"][0] == 303 and checks["cookie"][1] == "/"  # the token leaves the address bar
        assert checks["cookie"][2].startswith(f"suanli_agent_dashboard={token};")  # its own cookie name
        assert "HttpOnly" in checks["cookie"][2] and "SameSite=strict" in checks["cookie"][2]
        url = await trio.to_thread.run_sync(lambda: dashboard_url(home, agent=True))
        assert url == f"{buyer_url}?token={token}"
        assert await trio.to_thread.run_sync(dashboard_url, home) == f"{provider_url}?token={provider_token}"
        nursery.cancel_scope.cancel()
    assert not (home / AGENT_URL_FILE).exists() and not (home / URL_FILE).exists()  # gone with the daemons
    with pytest.raises(SuanliError, match="no buyer agent dashboard is running"):
        dashboard_url(home, agent=True)
