"""SVG bar charts drawn on the server: no script, readable by screen readers.

Each chart is an `<svg role="img">` with a `<title>` and a `<desc>` that states the values,
axis labels, and one `<title>` per bar, so a pointer shows the exact number.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

WIDTH = 720
HEIGHT = 240
LEFT = 72
RIGHT = 12
TOP = 28
BOTTOM = 44


@dataclass(frozen=True)
class Series:
    name: str
    values: Sequence[int]
    css_class: str


def _nice_top(peak: int) -> int:
    """Four grid steps of 1, 2 or 5 × 10^n that reach the peak."""
    wanted = max(1, -(-peak // 4))
    step = 1
    while True:
        for factor in (1, 2, 5):
            if step * factor >= wanted:
                return 4 * step * factor
        step *= 10


def _short(value: int) -> str:
    for size, suffix in ((1_000_000_000, "B"), (1_000_000, "M"), (1_000, "k")):
        if value >= size:
            whole, rest = divmod(value, size)
            return f"{whole}{suffix}" if rest == 0 else f"{value / size:.1f}{suffix}"
    return str(value)


def bar_chart(
    chart_id: str,
    title: str,
    labels: Sequence[str],
    series: Sequence[Series],
    *,
    x_label: str,
    y_label: str = "tokens",
    tick_labels: Sequence[str] | None = None,
) -> Markup:
    """Grouped bars: one group per label, one bar per series."""
    e = escape
    top = _nice_top(max((v for s in series for v in s.values), default=0))
    plot_w = WIDTH - LEFT - RIGHT
    plot_h = HEIGHT - TOP - BOTTOM
    groups = max(1, len(labels))
    group_w = plot_w / groups
    bar_w = max(1.0, group_w * 0.8 / max(1, len(series)))
    totals = ", ".join(f"{s.name} {sum(s.values):,}" for s in series)
    parts = [
        f'<svg id="{e(chart_id)}" class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img"'
        f' aria-labelledby="{e(chart_id)}-title {e(chart_id)}-desc"'
        ' preserveAspectRatio="xMidYMid meet" xmlns="http://www.w3.org/2000/svg">',
        f'<title id="{e(chart_id)}-title">{e(title)}</title>',
        f'<desc id="{e(chart_id)}-desc">{e(x_label)} from {e(labels[0] if labels else "")}'
        f" to {e(labels[-1] if labels else '')}; totals: {e(totals)}.</desc>",
    ]
    for step in range(5):
        value = top * step // 4
        y = TOP + plot_h - plot_h * step / 4
        parts.append(
            f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text class="tick" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">'
            f"{e(_short(value))}</text>"
        )
    every = max(1, -(-len(labels) // 16))
    for index, label in enumerate(labels):
        x0 = LEFT + group_w * index + group_w * 0.1
        for number, s in enumerate(series):
            value = s.values[index] if index < len(s.values) else 0
            height = plot_h * value / top
            x = x0 + bar_w * number
            y = TOP + plot_h - height
            parts.append(
                f'<rect class="series {e(s.css_class)}" x="{x:.1f}" y="{y:.1f}"'
                f' width="{bar_w:.1f}" height="{height:.1f}">'
                f"<title>{e(label)}: {e(s.name)} {value:,} tokens</title></rect>"
            )
        if index % every == 0:
            cx = LEFT + group_w * (index + 0.5)
            parts.append(
                f'<text class="tick" x="{cx:.1f}" y="{TOP + plot_h + 16}" text-anchor="middle">'
                f"{e(tick_labels[index] if tick_labels else label)}</text>"
            )
    parts.append(
        f'<line class="axis" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{TOP + plot_h}"'
        f' y2="{TOP + plot_h}"/>'
        f'<text class="axis-label" x="{LEFT + plot_w / 2:.1f}" y="{HEIGHT - 6}"'
        f' text-anchor="middle">{e(x_label)}</text>'
        f'<text class="axis-label" x="14" y="{TOP + plot_h / 2:.1f}" text-anchor="middle"'
        f' transform="rotate(-90 14 {TOP + plot_h / 2:.1f})">{e(y_label)}</text>'
    )
    legend_x = LEFT
    for s in series:
        parts.append(
            f'<rect class="series {e(s.css_class)}" x="{legend_x}" y="8" width="10" height="10"/>'
            f'<text class="legend" x="{legend_x + 14}" y="17">{e(s.name)}</text>'
        )
        legend_x += 14 + 8 * len(s.name) + 16
    parts.append("</svg>")
    return Markup("".join(parts))
