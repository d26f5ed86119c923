"""Charts drawn on the server as inline SVG: no JavaScript, no CDN, nothing for the browser to fetch.

Each chart is an ``<svg class="chart">`` whose ``data-*`` attributes carry what it shows (the
number of points, the largest value), and each bar or point a ``<title>`` (the browser's tooltip)
and a ``data-value``, so a test — or a person — can read the numbers back.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from markupsafe import Markup, escape

__all__ = ["KIND_COLOURS", "stacked_bars", "lines", "sparkbars", "hbars"]

KIND_COLOURS = {
    "missing": "#d64541",
    "orphan": "#8e5bb5",
    "mismatch": "#e8912d",
    "duplicate": "#2f8fc5",
}
_INK, _GRID = "#5b6470", "#d9dee4"


def _label(at: Any) -> str:
    return at.strftime("%m-%d %H:%M") if isinstance(at, datetime) else str(at)


def _nice(n: float) -> float:
    """The smallest 1, 2 or 5 x 10^k at or above ``n`` (a round top for an axis)."""
    if n <= 0:
        return 1
    k = 1.0
    while k * 10 <= n:
        k *= 10
    for m in (1, 2, 5, 10):
        if m * k >= n:
            return m * k
    return 10 * k


def _frame(width: int, height: int, top: float, pad_l: int, pad_b: int, first: str, last: str) -> list[str]:
    h = height - pad_b
    return [
        f'<line x1="{pad_l}" y1="{h}" x2="{width}" y2="{h}" stroke="{_GRID}"/>',
        f'<line x1="{pad_l}" y1="4" x2="{width}" y2="4" stroke="{_GRID}" stroke-dasharray="3 3"/>',
        f'<text x="{pad_l - 4}" y="12" text-anchor="end" fill="{_INK}" font-size="11">{top:,.0f}</text>',
        f'<text x="{pad_l - 4}" y="{h}" text-anchor="end" fill="{_INK}" font-size="11">0</text>',
        f'<text x="{pad_l}" y="{height - 4}" fill="{_INK}" font-size="11">{escape(first)}</text>',
        f'<text x="{width}" y="{height - 4}" text-anchor="end" fill="{_INK}" font-size="11">'
        f"{escape(last)}</text>",
    ]


def stacked_bars(
    points: Sequence[dict[str, Any]],
    keys: Sequence[str],
    *,
    title: str,
    colours: dict[str, str] = KIND_COLOURS,
    width: int = 720,
    height: int = 180,
) -> Markup:
    """One bar per point (``{"at": ..., key: n, ...}``), its ``keys`` stacked bottom up."""
    pad_l, pad_b = 44, 18
    totals = [sum(int(p.get(k) or 0) for k in keys) for p in points]
    top = _nice(max(totals, default=0))
    plot_w, plot_h = width - pad_l, height - pad_b - 4
    step = plot_w / max(len(points), 1)
    bar_w = max(min(step * 0.8, 40), 1)
    parts = [
        f'<svg class="chart bars" viewBox="0 0 {width} {height}" role="img" '
        f'data-points="{len(points)}" data-max="{max(totals, default=0)}" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
    ]
    if points:
        parts += _frame(width, height, top, pad_l, pad_b, _label(points[0]["at"]), _label(points[-1]["at"]))
    for i, (p, total) in enumerate(zip(points, totals, strict=True)):
        x = pad_l + i * step + (step - bar_w) / 2
        y = float(height - pad_b)
        tip = f"{_label(p['at'])}: " + ", ".join(f"{k} {int(p.get(k) or 0)}" for k in keys)
        parts.append(f'<g class="bar" data-value="{total}"><title>{escape(tip)}</title>')
        for k in keys:
            n = int(p.get(k) or 0)
            if not n:
                continue
            h = plot_h * n / top
            y -= h
            parts.append(
                f'<rect class="seg {escape(k)}" x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" '
                f'height="{h:.1f}" fill="{colours.get(k, _INK)}" data-value="{n}"/>'
            )
        parts.append("</g>")
    parts.append("</svg>")
    return Markup("".join(parts))


def lines(
    points: Sequence[dict[str, Any]],
    key: str,
    *,
    title: str,
    colour: str = "#2f6fb5",
    width: int = 720,
    height: int = 110,
) -> Markup:
    """One series as a line with a dot per point (``{"at": ..., key: n}``)."""
    pad_l, pad_b = 44, 18
    values = [float(p.get(key) or 0) for p in points]
    top = _nice(max(values, default=0))
    plot_w, plot_h = width - pad_l, height - pad_b - 4
    step = plot_w / max(len(points) - 1, 1)
    xy = [(pad_l + i * step, height - pad_b - plot_h * v / top) for i, v in enumerate(values)]
    parts = [
        f'<svg class="chart line" viewBox="0 0 {width} {height}" role="img" '
        f'data-points="{len(points)}" data-max="{max(values, default=0):g}" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
    ]
    if points:
        parts += _frame(width, height, top, pad_l, pad_b, _label(points[0]["at"]), _label(points[-1]["at"]))
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in xy)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for (x, y), p, v in zip(xy, points, values, strict=True):
            tip = f"{_label(p['at'])}: {key} {v:,.0f}"
            parts.append(
                f'<circle class="pt" cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}" data-value="{v:g}">'
                f"<title>{escape(tip)}</title></circle>"
            )
    parts.append("</svg>")
    return Markup("".join(parts))


def sparkbars(values: Sequence[tuple[Any, int]], *, title: str, width: int = 168, height: int = 28) -> Markup:
    """A small bar per (time, value): recent drift on the overview."""
    top = max((v for _, v in values), default=0)
    step = width / max(len(values), 1)
    parts = [
        f'<svg class="chart spark" viewBox="0 0 {width} {height}" role="img" preserveAspectRatio="none" '
        f'data-points="{len(values)}" data-max="{top}" aria-label="{escape(title)}">',
        f"<title>{escape(title)} (largest: {top})</title>",
        f'<line x1="0" y1="{height - 0.5}" x2="{width}" y2="{height - 0.5}" stroke="{_GRID}"/>',
    ]
    for i, (at, v) in enumerate(values):
        if not v:
            continue
        h = max((height - 2) * v / top, 1.5)
        parts.append(
            f'<rect x="{i * step:.2f}" y="{height - h:.2f}" width="{max(step - 1, 1):.2f}" height="{h:.2f}" '
            f'fill="{KIND_COLOURS["missing"]}" data-value="{v}">'
            f"<title>{escape(_label(at))}: {v}</title></rect>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def hbars(rows: Sequence[tuple[str, int, str]], *, title: str, width: int = 420) -> Markup:
    """Horizontal bars (label, value, colour), one per row: the healing funnel."""
    row_h, label_w = 26, 150
    top = max((v for _, v, _ in rows), default=0) or 1
    height = row_h * len(rows) + 4
    parts = [
        f'<svg class="chart funnel" viewBox="0 0 {width} {height}" role="img" '
        f'data-points="{len(rows)}" data-max="{top}" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
    ]
    for i, (label, v, colour) in enumerate(rows):
        y = i * row_h + 4
        w = (width - label_w - 50) * v / top
        parts.append(
            f'<g class="step" data-label="{escape(label)}" data-value="{v}">'
            f'<text x="{label_w - 8}" y="{y + 15}" text-anchor="end" fill="{_INK}" font-size="13">'
            f"{escape(label)}</text>"
            f'<rect x="{label_w}" y="{y}" width="{max(w, 1):.1f}" height="{row_h - 8}" fill="{colour}"/>'
            f'<text x="{label_w + max(w, 1) + 6}" y="{y + 15}" fill="{_INK}" font-size="13">{v:,}</text></g>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))
