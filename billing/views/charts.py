"""Server-rendered SVG charts: no script, no CDN, readable without colour; every chart on a page
comes with its numbers as a table (the template's job)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

WIDTH, HEIGHT = 560, 220
LEFT, BOTTOM, TOP = 64, 28, 12
PALETTE = ("#0b5fff", "#0a7a3d", "#b35c00", "#6a3fb5")


@dataclass(frozen=True)
class Series:
    """A named row of values, one per label."""

    name: str
    values: Sequence[int]


def _nice_max(value: int) -> int:
    """A round top for the axis at or above ``value``."""
    if value <= 0:
        return 1
    step = 10 ** (len(str(value)) - 1)
    return int(-(-value // step) * step)


def bar_chart(
    chart_id: str, title: str, labels: Sequence[str], series: Sequence[Series], unit: str = ""
) -> Markup:
    """Grouped bars, one group per label and one bar per series, as an accessible SVG.

    Values are drawn as given (minor units for money, counts otherwise); the axis shows the top
    value divided by 100 when ``unit`` names a currency.
    """
    top = _nice_max(max((v for s in series for v in s.values), default=0))
    plot_w, plot_h = WIDTH - LEFT - 8, HEIGHT - BOTTOM - TOP
    group_w = plot_w / max(len(labels), 1)
    bar_w = max(group_w * 0.8 / max(len(series), 1), 1)
    divide = 100 if unit else 1
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-labelledby="{chart_id}-title" class="chart" id="{chart_id}">',
        f'<title id="{chart_id}-title">{escape(title)}</title>',
        f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{WIDTH - 8}" y2="{TOP + plot_h}" '
        'stroke="#999"/>',
        f'<text x="{LEFT - 6}" y="{TOP + 10}" text-anchor="end" font-size="11" fill="#5b5b66">'
        f"{escape(f'{top / divide:,.0f}')} {escape(unit)}</text>",
        f'<text x="{LEFT - 6}" y="{TOP + plot_h}" text-anchor="end" font-size="11" '
        'fill="#5b5b66">0</text>',
    ]
    for index, label in enumerate(labels):
        x0 = LEFT + index * group_w + group_w * 0.1
        for number, one in enumerate(series):
            value = one.values[index] if index < len(one.values) else 0
            height = plot_h * value / top
            x = x0 + number * bar_w
            parts.append(
                f'<rect x="{x:.1f}" y="{TOP + plot_h - height:.1f}" width="{bar_w:.1f}" '
                f'height="{height:.1f}" fill="{PALETTE[number % len(PALETTE)]}">'
                f"<title>{escape(one.name)}, {escape(label)}: "
                f"{escape(f'{value / divide:,.2f}' if unit else str(value))}</title></rect>"
            )
        parts.append(
            f'<text x="{x0 + group_w * 0.4:.1f}" y="{HEIGHT - 10}" text-anchor="middle" '
            f'font-size="10" fill="#5b5b66">{escape(label[-5:])}</text>'
        )
    if len(series) > 1:
        for number, one in enumerate(series):
            x = LEFT + 8 + number * 150
            parts.append(
                f'<rect x="{x}" y="0" width="10" height="10" '
                f'fill="{PALETTE[number % len(PALETTE)]}"/>'
                f'<text x="{x + 14}" y="9" font-size="11">{escape(one.name)}</text>'
            )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every text part is escaped above
