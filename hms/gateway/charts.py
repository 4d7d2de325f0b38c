"""Charts as inline SVG, drawn on the server: no script, no external service."""

from __future__ import annotations

import math
from html import escape
from typing import Any

W, H, PAD = 640, 240, 40


def _label(le: float | None) -> str:
    if le is None:
        return "more"
    return f"≤{le:g}s" if le < 60 else f"≤{le / 60:g}m" if le < 3600 else f"≤{le / 3600:g}h"


def histogram_svg(buckets: list[dict[str, Any]]) -> str:
    """Bars of payout counts per time bucket."""
    peak = max((b["count"] for b in buckets), default=0) or 1
    width = (W - 2 * PAD) / max(1, len(buckets))
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" role="img" '
        f'aria-labelledby="hist-title"><title id="hist-title">Payout time histogram</title>'
    ]
    for i, b in enumerate(buckets):
        h = (H - 2 * PAD) * b["count"] / peak
        x, y = PAD + i * width, H - PAD - h
        parts.append(
            f'<rect class="bar" x="{x + 2:.1f}" y="{y:.1f}" width="{width - 4:.1f}" height="{h:.1f}">'
            f"<title>{escape(_label(b['le']))}: {b['count']}</title></rect>"
        )
        parts.append(
            f'<text x="{x + width / 2:.1f}" y="{H - PAD + 14}" text-anchor="middle">{escape(_label(b["le"]))}</text>'
        )
        if b["count"]:
            parts.append(f'<text x="{x + width / 2:.1f}" y="{y - 4:.1f}" text-anchor="middle">{b["count"]}</text>')
    parts.append("</svg>")
    return "".join(parts)


def nice_ceiling(value: float) -> float:
    """The smallest 1, 2, 2.5 or 5 times a power of ten at or above `value`: a y axis people can read."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    return float(next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= value * (1 - 1e-9)))


def percentiles_svg(days: list[dict[str, Any]]) -> str:
    """p50 and p99 payout time per day: two lines with dots over labelled axes, readable from 1 to 365 days."""
    left, right, top, bottom = 56, 44, 16, 36
    pw, ph = W - left - right, H - top - bottom
    n = len(days)
    peak = nice_ceiling(max((max(d["p99"] or 0, d["p50"] or 0) for d in days), default=0))

    def x(i: int) -> float:
        return left + (pw / 2 if n == 1 else pw * i / (n - 1))

    def y(v: float) -> float:
        return top + ph * (1 - v / peak)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" role="img" '
        f'aria-labelledby="pct-title"><title id="pct-title">p50 and p99 payout time by day</title>'
    ]
    for k in range(5):  # y axis: five gridlines with their values
        v = peak * k / 4
        parts.append(f'<line class="grid" x1="{left}" x2="{W - right}" y1="{y(v):.1f}" y2="{y(v):.1f}"/>')
        parts.append(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:g} s</text>')
    parts.append(f'<line class="axis" x1="{left}" x2="{W - right}" y1="{top + ph}" y2="{top + ph}"/>')
    parts.append(f'<line class="axis" x1="{left}" x2="{left}" y1="{top}" y2="{top + ph}"/>')
    if not days:
        parts.append(f'<text x="{left + pw / 2}" y="{top + ph / 2}" text-anchor="middle">No payouts yet</text>')
    step = max(1, math.ceil(n / 8))  # at most about eight dates on the x axis
    for i, d in enumerate(days):
        if i % step == 0:
            parts.append(
                f'<text x="{x(i):.1f}" y="{H - bottom + 18}" text-anchor="middle">{escape(d["day"][5:])}</text>'
            )
    for key in ("p50", "p99"):
        points = [(x(i), y(d[key] or 0), d) for i, d in enumerate(days)]
        if n > 1:
            path = " ".join(f"{px:.1f},{py:.1f}" for px, py, _ in points)
            parts.append(f'<polyline class="line {key}" points="{path}"/>')
        for px, py, d in points:
            value = d[key] or 0
            label = f"{escape(d['day'])} {key}: {value:.2f} s"
            if n <= 62:  # a dot per day while the days are wide enough to point at
                dot = f'<circle class="{key}" cx="{px:.1f}" cy="{py:.1f}" r="3.5">'
                parts.append(f"{dot}<title>{label}</title></circle>")
            if n <= 14:
                parts.append(f'<text class="value" x="{px + 6:.1f}" y="{py - 6:.1f}">{value:.2f} s</text>')
    parts.append("</svg>")
    return "".join(parts)
