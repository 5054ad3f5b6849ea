"""Server-rendered SVG charts (issue 20: no CDN, no JavaScript library): pure functions of numbers to text.

Rule: every number written into the SVG is formatted here (never text from a peer), so a chart cannot
carry markup; labels are escaped.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

WIDTH, HEIGHT, PAD = 360, 120, 24


def _scale(values: Sequence[float]) -> float:
    top = max(values, default=0.0)
    return top if top > 0 else 1.0


def line_chart(points: Sequence[tuple[float, float]], *, label: str, unit: str, chart_id: str) -> str:
    """A polyline of (x, y) points, y from 0, the newest one marked; ``data-points`` counts them."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = (min(xs), max(xs)) if xs else (0.0, 1.0)
    span = (x1 - x0) or 1.0
    top = _scale(ys)
    inner_w, inner_h = WIDTH - 2 * PAD, HEIGHT - 2 * PAD
    coords = [(PAD + (x - x0) / span * inner_w, HEIGHT - PAD - y / top * inner_h) for x, y in points]
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
    # The newest point only: a circle per point doubled the page's weight (bench/dashboard.py).
    dots = "".join(f'<circle class="pt" cx="{x:.1f}" cy="{y:.1f}" r="2.5"/>' for x, y in coords[-1:])
    last = f"{ys[-1]:.3g} {escape(unit)}" if ys else "no sample yet"
    return (f'<svg id="{escape(chart_id)}" class="chart" data-points="{len(points)}" viewBox="0 0 {WIDTH} {HEIGHT}" '
            f'width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="{escape(label)}">'
            f'<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" class="bg"/>'
            f'<line x1="{PAD}" y1="{HEIGHT - PAD}" x2="{WIDTH - PAD}" y2="{HEIGHT - PAD}" class="axis"/>'
            f'<polyline points="{path}" class="line"/>{dots}'
            f'<text x="{PAD}" y="14" class="label">{escape(label)}: {last} (max {top:.3g})</text></svg>')


def bar_chart(values: Sequence[int], *, label: str, chart_id: str) -> str:
    """Bars for buckets in order (earnings per hour or per day); one rect per bucket."""
    top = _scale([float(v) for v in values])
    inner_w, inner_h = WIDTH - 2 * PAD, HEIGHT - 2 * PAD
    step = inner_w / max(len(values), 1)
    bars = "".join(
        f'<rect class="bar" x="{PAD + i * step:.1f}" y="{HEIGHT - PAD - v / top * inner_h:.1f}" '
        f'width="{max(step - 1, 1):.1f}" height="{v / top * inner_h:.1f}"/>' for i, v in enumerate(values))
    return (f'<svg id="{escape(chart_id)}" class="chart" data-points="{len(values)}" viewBox="0 0 {WIDTH} {HEIGHT}" '
            f'width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="{escape(label)}">'
            f'<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" class="bg"/>{bars}'
            f'<text x="{PAD}" y="14" class="label">{escape(label)} (max {int(top)})</text></svg>')
