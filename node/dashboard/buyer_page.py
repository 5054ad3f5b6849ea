"""The buyer's dashboard pages (served by ``suanli agent``), rendered on the server: pure text (STYLE §1).

The provider's frame, verdicts and charts (node.dashboard.page, node.dashboard.charts), with the buyer's
documents (node.dashboard.buyer): the agent, its jobs as ``suanli jobs`` lists them, spend per hour and
per day, and on an agreement's page the job's output as the buyer received it.

Rule 1: every value from the database, a provider or a job's output is escaped (``html.escape``), as on the
provider's pages (page Rule 1).
Rule 2: the page is whole without JavaScript; ``/static/dashboard.js`` swaps ``#live`` on each event (page
Rule 2).
"""

from __future__ import annotations

from html import escape
from typing import Any

from node.dashboard import page
from node.dashboard.charts import bar_chart

JOBS_SHOWN = 200  # the newest on the page; /api/jobs lists every one


def _job_row(job: dict[str, Any]) -> str:
    ag = escape(str(job.get("agreement_id", "")))
    code = job.get("exit_code")
    return (f'<tr data-agreement="{ag}"><td><a href="/agreements/{ag}"><code>{ag[:16]}</code></a></td>'
            f"<td><code>{escape(str(job.get('provider') or '-')[-14:])}</code></td>"
            f"<td><code>{escape(str(job.get('image') or '-')[:40])}</code></td>"
            f"<td>{page._when(job.get('started_at_ms'))}</td>"
            f"<td class=\"billed\">{int(job.get('billed_ms', 0)) / 1000:.3f} s</td>"
            f"<td class=\"amount\">{int(job.get('amount_micros', 0))}</td>"
            f"<td class=\"exit\">{'-' if code is None else int(code)}</td>"
            f"<td class=\"reason\">{escape(str(job.get('reason') or job.get('state') or ''))}</td></tr>")


def live_html(snap: dict[str, Any]) -> str:
    """The ``#live`` section: the agent, the jobs, the spend."""
    st, spend = snap.get("status", {}), snap.get("spend", {})
    addrs = "".join(f"<li><code>{escape(str(a))}</code></li>" for a in st.get("addrs") or [])
    jobs = snap.get("jobs") or []
    parts = [
        "<h2>Agent</h2><table>",
        f"<tr><th>peer id</th><td><code>{escape(str(st.get('peer_id')))}</code></td></tr>",
        f"<tr><th>data directory</th><td><code>{escape(str(st.get('data_dir')))}</code></td></tr>",
        f"<tr><th>offers known</th><td>{escape(str(st.get('offers')))}</td></tr>",
        f"<tr><th>running now</th><td id=\"running\">{escape(str(st.get('running')))}</td></tr>",
        f"<tr><th>addresses</th><td><ul>{addrs}</ul></td></tr></table>",
        f'<h2>Jobs (<span id="job-count">{len(jobs)}</span>)</h2>',
        '<table id="jobs"><tr><th>agreement</th><th>provider</th><th>image</th><th>started</th><th>billed</th>'
        "<th>amount µ</th><th>exit</th><th>final reason</th></tr>",
        "".join(_job_row(j) for j in jobs[:JOBS_SHOWN]), "</table>",
    ]
    spent = int(spend.get("cosigned_micros", 0))
    parts.append(
        "<h2>Spend (receipts this buyer countersigned)</h2>"
        f'<p>spent <b id="spent" data-micros="{spent}">{spent}</b> micro-credits · '
        f'today {int(spend.get("today_micros", 0))} · this hour {int(spend.get("this_hour_micros", 0))} · '
        f'claimed by providers, not countersigned: <span id="pending" data-micros="'
        f'{int(spend.get("pending_micros", 0))}">{int(spend.get("pending_micros", 0))}</span></p>'
        + bar_chart([int(b["micros"]) for b in spend.get("per_hour", [])], label="per hour, last 24 h",
                    chart_id="spend-hour")
        + bar_chart([int(b["micros"]) for b in spend.get("per_day", [])], label="per day, last 30 days",
                    chart_id="spend-day"))
    return "".join(parts)


def overview(snap: dict[str, Any], version: int) -> str:
    return page._frame("Suanli buyer", f'<div id="live" data-version="{version}">{live_html(snap)}</div>',
                       script=True)


def agreements(audits: dict[str, dict[str, Any]]) -> str:
    return page.agreements(audits, side="buyer")


def logs_html(logs: list[dict[str, str]], shown: int) -> str:
    """The job's output as received, the newest ``shown`` lines; stderr lines marked."""
    if not logs:
        return ('<h2>Output</h2><p id="logs">no output stored (the job printed nothing, or ran before logs '
                "were kept)</p>")
    cut = len(logs) - shown
    head = f"<p>the last {shown} of {len(logs)} lines (/api/logs gives them all)</p>" if cut > 0 else ""
    lines = "\n".join(("[stderr] " if r["stream"] == "stderr" else "") + escape(r["text"]) for r in logs[-shown:])
    return f'<h2>Output</h2>{head}<pre id="logs">{lines}</pre>'


def agreement(agreement_hex: str, receipts: list[dict[str, Any]], doc: dict[str, Any] | None,
              logs: list[dict[str, str]], shown: int) -> str:
    return page.agreement(agreement_hex, receipts, doc, side="buyer", extra=logs_html(logs, shown))
