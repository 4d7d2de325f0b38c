"""Charts as inline SVG, drawn on the server: no script, no external service."""

from __future__ import annotations

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


def percentiles_svg(days: list[dict[str, Any]]) -> str:
    """p50 and p99 payout time per day, as paired bars."""
    peak = max((d["p99"] or 0 for d in days), default=0) or 1
    width = (W - 2 * PAD) / max(1, len(days))
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" role="img" '
        f'aria-labelledby="pct-title"><title id="pct-title">p50 and p99 payout time by day</title>'
    ]
    for i, d in enumerate(days):
        x = PAD + i * width
        for j, (key, cls) in enumerate((("p50", "p50"), ("p99", "p99"))):
            value = d[key] or 0
            h = (H - 2 * PAD) * value / peak
            parts.append(
                f'<rect class="{cls}" x="{x + 4 + j * (width / 2 - 4):.1f}" y="{H - PAD - h:.1f}" '
                f'width="{width / 2 - 6:.1f}" height="{h:.1f}"><title>{escape(d["day"])} {key}: '
                f"{value:.2f}s</title></rect>"
            )
        parts.append(
            f'<text x="{x + width / 2:.1f}" y="{H - PAD + 14}" text-anchor="middle">{escape(d["day"][5:])}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
