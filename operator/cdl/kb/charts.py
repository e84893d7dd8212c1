"""Line charts as inline SVG, drawn on the server (no JavaScript, no CDN): metric curves of
trials, scoring figures of a deployment."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def _ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    if hi == lo:
        return [lo]
    step = (hi - lo) / n
    return [lo + i * step for i in range(n + 1)]


def _fmt(v: float) -> str:
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.3g}"


def line_chart(series: Mapping[str, Sequence[tuple[float, float]]], *, title: str, x_label: str,
               y_label: str = "", width: int = 560, height: int = 240) -> str:
    """An SVG with one polyline per series (points are (x, y)); empty series are skipped."""
    points = [(x, y) for pts in series.values() for x, y in pts
              if isinstance(y, int | float) and math.isfinite(y)]
    left, right, top, bottom = 56, 12, 24, 36
    out = [f'<svg class="chart" role="img" aria-label="{escape(title)}" viewBox="0 0 {width} {height}" '
           f'width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">',
           f'<text x="{left}" y="15" class="chart-title">{escape(title)}</text>']
    if not points:
        out.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" class="muted">no data yet</text></svg>')
        return "".join(out)
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    pw, ph = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return top + ph - (y - y0) / (y1 - y0) * ph

    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" class="plot"/>')
    for t in _ticks(y0, y1):
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" class="grid"/>'
                   f'<text x="{left - 4}" y="{sy(t) + 4:.1f}" text-anchor="end" class="tick">{_fmt(t)}</text>')
    for t in _ticks(x0, x1):
        out.append(f'<text x="{sx(t):.1f}" y="{top + ph + 14}" text-anchor="middle" class="tick">{_fmt(t)}</text>')
    out.append(f'<text x="{left + pw / 2}" y="{height - 4}" text-anchor="middle" class="axis">{escape(x_label)}</text>')
    if y_label:
        out.append(f'<text x="12" y="{top + ph / 2}" transform="rotate(-90 12 {top + ph / 2})" '
                   f'text-anchor="middle" class="axis">{escape(y_label)}</text>')
    legend_x = left + 8
    for i, (name, pts) in enumerate((k, v) for k, v in series.items() if v):
        color = PALETTE[i % len(PALETTE)]
        clean = [(x, y) for x, y in pts if isinstance(y, int | float) and math.isfinite(y)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in clean)
        out.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{path}" '
                   f'data-series="{escape(name)}"/>')
        for x, y in clean:
            out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{color}">'
                       f'<title>{escape(name)}: {_fmt(y)} at {_fmt(x)}</title></circle>')
        out.append(f'<text x="{legend_x}" y="{top + 14 + 14 * i}" fill="{color}" class="legend">{escape(name)}</text>')
    out.append("</svg>")
    return "".join(out)
