"""node.dashboard.model, charts and page: the pure parts, table-driven (no IO)."""

from __future__ import annotations

import collections
from dataclasses import replace

import pytest

from node.dashboard import model
from node.dashboard.charts import bar_chart, line_chart
from node.dashboard.model import HOUR_MS, Point, bucket, cosigned_total, earned_deltas, earnings, pending, samples
from node.dashboard.page import live_html

T0 = 1_796_000_000_000 - 1_796_000_000_000 % model.DAY_MS  # a UTC midnight


def pt(seq: int, at_ms: int, amount: int, cosigned: bool, state: str = "running", cpu: int = 0,
       metered: int | None = None) -> Point:
    return Point(seq, at_ms, metered if metered is not None else seq * 1000, amount, cpu, seq << 20, 0, state, None,
                 None, cosigned)


@pytest.mark.parametrize("points, deltas, total, claimed", [
    ([], [], 0, 0),
    ([pt(1, T0, 10, True), pt(2, T0 + 1, 25, True)], [(T0, 10), (T0 + 1, 15)], 25, 0),
    ([pt(1, T0, 10, True), pt(2, T0 + 1, 25, False)], [(T0, 10)], 10, 15),
    # a receipt the buyer skipped, then co-signed a later one: the later earns both
    ([pt(1, T0, 10, True), pt(2, T0 + 1, 25, False), pt(3, T0 + 2, 40, True)], [(T0, 10), (T0 + 2, 30)], 40, 0),
    ([pt(1, T0, 10, False)], [], 0, 10),
])
def test_only_cosigned_receipts_earn_and_pending_is_apart(points, deltas, total, claimed):
    assert earned_deltas(points) == deltas
    assert cosigned_total(points) == total == sum(d for _, d in deltas)
    assert pending(points) == claimed


def test_buckets_sum_to_the_cosigned_total_across_hours_and_days():
    chains = [[pt(1, T0 - 1, 7, True), pt(2, T0 + 5, 20, True, "final")],
              [pt(1, T0 + 3 * HOUR_MS, 100, True), pt(2, T0 + 3 * HOUR_MS + 10, 150, False)]]
    counter: collections.Counter[tuple[str, int]] = collections.Counter()
    for chain in chains:
        bucket(earned_deltas(chain), counter)
    doc = earnings(counter, sum(cosigned_total(c) for c in chains), sum(pending(c) for c in chains),
                   T0 + 4 * HOUR_MS)
    assert doc["cosigned_micros"] == 120 and doc["pending_micros"] == 50
    assert sum(b["micros"] for b in doc["per_day"]) == 120
    assert doc["today_micros"] == 113 and doc["per_day"][-2]["micros"] == 7
    assert len(doc["per_hour"]) == 24 and sum(b["micros"] for b in doc["per_hour"]) == 120
    assert doc["per_hour"][-2]["micros"] == 100 and doc["this_hour_micros"] == 0


def test_cpu_samples_are_the_rate_between_receipts():
    points = [pt(1, T0, 0, True, cpu=500, metered=1000), pt(2, T0 + 1000, 0, True, cpu=1500, metered=2000),
              pt(3, T0 + 2000, 0, True, cpu=1750, metered=3000)]
    got = samples(points)
    assert [s["cpu_cores"] for s in got] == [1.0, 0.25] and [s["t_s"] for s in got] == [2.0, 3.0]
    assert samples(points[:1])[0]["cpu_cores"] == 0.5 and samples([]) == []
    many = [pt(i, T0 + i, 0, True, cpu=i * 100) for i in range(1, 400)]
    assert len(samples(many)) == model.POINTS_SHOWN


def test_gpu_samples_are_sm_percent_between_receipts_and_get_a_chart():
    points = [replace(pt(1, T0, 0, True, metered=1000), gpu_sm_pct_ms=50_000),
              replace(pt(2, T0 + 1000, 0, True, metered=2000), gpu_sm_pct_ms=130_000)]
    got = samples(points)
    assert [s["gpu_pct"] for s in got] == [80.0]
    assert samples(points[:1])[0]["gpu_pct"] == 50.0
    job = {"agreement_id": "ab" * 32, "samples": got}
    assert 'id="gpu-' in live_html({"jobs": [job]})
    assert 'id="gpu-' not in live_html({"jobs": [{**job, "samples": samples([pt(1, T0, 0, True)])}]})


def test_charts_count_their_points_and_escape_labels():
    svg = line_chart([(0, 1.0), (1, 2.0), (2, 0.5)], label="<CPU>", unit="cores", chart_id="cpu-x")
    assert 'data-points="3"' in svg and svg.count("<circle") == 1 and "&lt;CPU&gt;" in svg and "<CPU>" not in svg
    assert 'data-points="0"' in line_chart([], label="m", unit="MiB", chart_id="m")
    assert bar_chart([0, 5, 10], label="h", chart_id="h").count('class="bar"') == 3


def test_the_page_escapes_what_peers_and_errors_say():
    snap = {"status": {"peer_id": "<script>x</script>", "addrs": ["<img src=x onerror=alert(1)>"]},
            "jobs": [{"agreement_id": "ab\"><script>", "buyer": "<b>", "samples": []}],
            "earnings": {}, "errors": ["<script>alert(1)</script>"]}
    snap["status"]["owner"] = {"state": "owner_active", "reason": "<b>keyboard</b>"}
    text = live_html(snap)
    assert "<script>" not in text and "<img" not in text and "<b>" not in text and "&lt;script&gt;" in text
    assert 'id="owner">owner_active: &lt;b&gt;keyboard' in text
