"""The dashboard's HTML, rendered on the server from the board's documents: pure text (STYLE §1).

Rule 1: every value from the database or a peer is escaped (``html.escape``); charts are node.dashboard.charts'.
Rule 2: the page works without JavaScript (it is whole when served); ``/static/dashboard.js`` only swaps the
``#live`` section for the one each server-sent event carries.
"""

from __future__ import annotations

import time
from html import escape
from typing import Any

from node.dashboard.charts import bar_chart, line_chart

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.3em}h2{font-size:1.1em;margin-top:1.4em}
table{border-collapse:collapse}td,th{padding:.2em .6em;border-bottom:1px solid #ddd;text-align:left}
.chart .bg{fill:#fff;stroke:#ccc}.chart .axis{stroke:#999}.chart .line{fill:none;stroke:#1565c0;stroke-width:1.5}
.chart .pt{fill:#1565c0}.chart .bar{fill:#2e7d32}.chart .label{font-size:11px;fill:#333}
.ok{color:#2e7d32;font-weight:bold}.fail{color:#c62828;font-weight:bold}code{font-size:.9em}
"""


def _when(ms: int | None) -> str:
    return "-" if not ms else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ms / 1000))


def _frame(title: str, body: str, *, script: bool) -> str:
    js = '<script src="/static/dashboard.js" defer></script>' if script else ""
    return ('<!doctype html><html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,">'
            f"<title>{escape(title)}</title>"
            f'<style>{STYLE}</style>{js}</head><body><h1>{escape(title)}</h1>'
            '<p><a href="/">overview</a> · <a href="/agreements">receipts</a> · read-only</p>'
            f"{body}</body></html>")


def _owner_row(owner: Any) -> str:
    """The owner/schedule state (issue 18) as the daemon's status reports it; nothing where it reports none."""
    if not isinstance(owner, dict):
        return ""
    reason = f": {escape(str(owner['reason']))}" if owner.get("reason") else ""
    return f"<tr><th>owner</th><td id=\"owner\">{escape(str(owner.get('state')))}{reason}</td></tr>"


def live_html(snap: dict[str, Any]) -> str:
    """The ``#live`` section: status, running jobs with their charts, earnings, errors."""
    st, earn = snap.get("status", {}), snap.get("earnings", {})
    offer = st.get("offer") or {}
    prices = offer.get("prices") or {}
    addrs = "".join(f"<li><code>{escape(a)}</code></li>" for a in st.get("addrs") or [])
    parts = [
        "<h2>Node</h2><table>",
        f"<tr><th>peer id</th><td><code>{escape(str(st.get('peer_id')))}</code></td></tr>",
        f"<tr><th>reachability</th><td>{escape(str(st.get('reachability')))}</td></tr>",
        f"<tr><th>selling</th><td id=\"accepting\">{'yes' if st.get('accepting') else 'no (paused)'}</td></tr>",
        f"<tr><th>peers connected</th><td>{escape(str(st.get('connected_peers')))}</td></tr>",
        _owner_row(st.get("owner")),
        f"<tr><th>addresses</th><td><ul>{addrs}</ul></td></tr></table>",
        "<h2>Offer</h2>",
    ]
    if offer:
        gpu = ", ".join(f"{escape(m)}: {int(p)}" for m, p in (prices.get("gpu_micros_per_s") or {}).items()) or "none"
        parts.append(
            f"<table><tr><th>seq</th><td>{int(offer.get('seq', 0))}</td></tr>"
            f"<tr><th>CPU</th><td>{offer.get('free_cpu_millis', 0) / 1000:g} of {offer.get('cpu_millis', 0) / 1000:g} "
            f"cores free</td></tr><tr><th>memory</th><td>{int(offer.get('memory_mib', 0))} MiB</td></tr>"
            f"<tr><th>price</th><td id=\"price\">{int(prices.get('cpu_core_micros_per_s', 0))} µ/core·s, "
            f"{int(prices.get('memory_gib_micros_per_s', 0))} µ/GiB·s; GPUs (µ/s): {gpu}</td></tr>"
            f"<tr><th>expires</th><td>{_when(offer.get('expires_at_ms'))}</td></tr></table>")
    else:
        parts.append("<p>no offer published yet</p>")
    jobs = snap.get("jobs") or []
    parts.append(f'<h2>Running jobs (<span id="job-count">{len(jobs)}</span>)</h2>')
    for job in jobs:
        ag = escape(str(job.get("agreement_id", "")))
        pts = job.get("samples") or []
        parts.append(
            f'<div class="job" data-agreement="{ag}"><p><a href="/agreements/{ag}"><code>{ag[:16]}</code></a> '
            f"buyer <code>{escape(str(job.get('buyer')))}</code> · {escape(str(job.get('state')))} · "
            f"{float(job.get('seconds', 0)):.1f} s · {int(job.get('amount_micros', 0))} µ "
            f"({int(job.get('countersigned_micros', 0))} co-signed)</p>"
            + line_chart([(p["t_s"], p["cpu_cores"]) for p in pts], label="CPU", unit="cores",
                         chart_id=f"cpu-{ag[:16]}")
            + line_chart([(p["t_s"], p["mem_mib"]) for p in pts], label="memory peak", unit="MiB",
                         chart_id=f"mem-{ag[:16]}")
            + (line_chart([(p["t_s"], p["gpu_pct"]) for p in pts], label="GPU", unit="% SM",
                          chart_id=f"gpu-{ag[:16]}") if any(p.get("gpu_pct") for p in pts) else "") + "</div>")
    per_hour = [int(b["micros"]) for b in earn.get("per_hour", [])]
    per_day = [int(b["micros"]) for b in earn.get("per_day", [])]
    parts.append(
        "<h2>Earnings (co-signed receipts only)</h2>"
        f'<p>earned <b id="earned" data-micros="{int(earn.get("cosigned_micros", 0))}">'
        f'{int(earn.get("cosigned_micros", 0))}</b> micro-credits · today {int(earn.get("today_micros", 0))} · '
        f'this hour {int(earn.get("this_hour_micros", 0))} · pending, not co-signed: '
        f'<span id="pending" data-micros="{int(earn.get("pending_micros", 0))}">'
        f'{int(earn.get("pending_micros", 0))}</span></p>'
        + bar_chart(per_hour, label="per hour, last 24 h", chart_id="earn-hour")
        + bar_chart(per_day, label="per day, last 30 days", chart_id="earn-day"))
    errors = snap.get("errors") or []
    items = "".join(f"<li>{escape(str(e))}</li>" for e in errors) or "<li>none</li>"
    parts.append(f'<h2>Recent errors</h2><ul id="errors">{items}</ul>')
    return "".join(parts)


def overview(snap: dict[str, Any], version: int) -> str:
    return _frame("Suanli provider", f'<div id="live" data-version="{version}">{live_html(snap)}</div>', script=True)


def _verdict(doc: dict[str, Any] | None) -> str:
    if doc is None:
        return '<span class="fail">not audited</span>'
    if doc.get("ok"):
        return '<span class="ok verdict">ok</span>'
    findings = "; ".join(f"{f['rule']}: {f['detail']}" for f in doc.get("findings", []))
    return f'<span class="fail verdict">FAILS its audit</span> {escape(findings[:500])}'


def agreements(audits: dict[str, dict[str, Any]], *, side: str = "provider") -> str:
    """Every agreement with its audit verdict; ``side`` is whose dashboard it is (the other party is shown)."""
    other = "provider" if side == "buyer" else "buyer"
    rows = "".join(
        f'<tr data-agreement="{escape(a)}"><td><a href="/agreements/{escape(a)}"><code>{escape(a[:16])}</code></a></td>'
        f"<td><code>{escape(str(d.get(other)))}</code></td><td>{escape(str(d.get('state')))}</td>"
        f"<td>{int(d.get('billed_ms', 0)) / 1000:.3f} s</td><td>{int(d.get('amount_micros', 0))}</td>"
        f"<td>{int(d.get('receipts', 0))}</td><td>{_verdict(d)}</td></tr>" for a, d in audits.items())
    body = (f"<table><tr><th>agreement</th><th>{other}</th><th>state</th><th>billed</th><th>co-signed µ</th>"
            f"<th>receipts</th><th>audit</th></tr>{rows}</table>")
    return _frame(f"Suanli {side}: receipts", body, script=False)


def agreement(agreement_hex: str, receipts: list[dict[str, Any]], doc: dict[str, Any] | None, *,
              side: str = "provider", extra: str = "") -> str:
    """One agreement's receipts and audit findings; ``extra`` (already escaped HTML) follows them."""
    rows = "".join(
        f"<tr><td>{int(r['seq'])}</td><td>{_when(r['issued_at_ms'])}</td><td>{r['metered_ms'] / 1000:.3f} s</td>"
        f"<td>{int(r['amount_micros'])}</td><td>{escape(str(r['state']))}</td>"
        f"<td>{'yes' if r['cosigned'] else 'no'}</td><td>{escape(str(r['reason'] or ''))}</td></tr>" for r in receipts)
    body = (f"<p>agreement <code>{escape(agreement_hex)}</code>: <span id=\"audit\">{_verdict(doc)}</span></p>"
            "<table><tr><th>seq</th><th>issued</th><th>metered</th><th>amount µ</th><th>state</th>"
            f"<th>co-signed</th><th>reason</th></tr>{rows}</table>{extra}")
    return _frame(f"Suanli {side}: agreement", body, script=False)
