"""Line charts as inline SVG text: the curves of ``report.html`` with no plotting library or file."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape

#: Colours of the series, in order (matplotlib's tab10).
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")

Series = Sequence[tuple[float, "float | None"]]


def _finite(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering [lo, hi]."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(1, n - 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _label(v: float, step: float | None = None) -> str:
    """A tick or point label: with ``step``, just enough decimals to tell neighbouring ticks apart."""
    if step is None or step <= 0:
        return f"{v:.4g}"
    decimals = max(0, -math.floor(math.log10(step)) + (0 if float(f"{step:.1g}") == step else 1))
    return f"{v:.{decimals}f}" if abs(v) < 1e6 else f"{v:.4g}"


def line_chart(series: Mapping[str, Series], title: str, x_label: str = "round", y_label: str = "",
               width: int = 520, height: int = 300) -> str:
    """An ``<svg>`` element with one polyline (and markers) per named series of (x, y) points.

    Points whose y is None or not finite are skipped. A chart with no finite point says so.
    """
    points = {name: [(float(x), float(y)) for x, y in pts if _finite(x) and _finite(y)] for name, pts in series.items()}
    points = {name: pts for name, pts in points.items() if pts}
    left, right, top, bottom = 80, 16, 28, 44
    legend_h = 16 * len(points)
    plot_w, plot_h = width - left - right, height - top - bottom - legend_h
    out = [(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}" font-family="sans-serif" font-size="11">'),
           f'<text x="{width / 2}" y="16" text-anchor="middle" font-size="13" font-weight="bold">{escape(title)}</text>']
    if not points:
        out.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" fill="#888">no data</text></svg>')
        return "\n".join(out)
    xs = [x for pts in points.values() for x, _ in pts]
    ys = [y for pts in points.values() for _, y in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    pad = (y1 - y0) * 0.08 or (abs(y0) * 0.1 or 1.0)
    y0, y1 = y0 - pad, y1 + pad

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * plot_w

    def py(y: float) -> float:
        return top + plot_h - (y - y0) / (y1 - y0) * plot_h

    out.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>')
    y_ticks = _ticks(y0, y1)
    y_step = y_ticks[1] - y_ticks[0] if len(y_ticks) > 1 else None
    for t in y_ticks:
        out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{py(t):.1f}" y2="{py(t):.1f}" stroke="#eee"/>'
                   f'<text x="{left - 4}" y="{py(t) + 4:.1f}" text-anchor="end">{_label(t, y_step)}</text>')
    x_ticks = [t for t in _ticks(x0, x1, 10) if float(t).is_integer()] or [x0, x1]
    for t in x_ticks:
        out.append(f'<text x="{px(t):.1f}" y="{top + plot_h + 14}" text-anchor="middle">{_label(t)}</text>')
    out.append(f'<text x="{left + plot_w / 2}" y="{top + plot_h + 30}" text-anchor="middle">{escape(x_label)}</text>')
    if y_label:
        out.append(f'<text x="12" y="{top + plot_h / 2}" text-anchor="middle" '
                   f'transform="rotate(-90 12 {top + plot_h / 2})">{escape(y_label)}</text>')
    for i, (name, pts) in enumerate(points.items()):
        color = PALETTE[i % len(PALETTE)]
        coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        out.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{coords}"/>')
        out.extend(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{color}"><title>{escape(name)}: '
                   f'round {_label(x)}, {_label(y)}</title></circle>' for x, y in pts)
        ly = top + plot_h + bottom + 16 * i - 4
        out.append(f'<line x1="{left}" x2="{left + 18}" y1="{ly - 4}" y2="{ly - 4}" stroke="{color}" stroke-width="2"/>'
                   f'<text x="{left + 24}" y="{ly}">{escape(name)}</text>')
    out.append("</svg>")
    return "\n".join(out)
