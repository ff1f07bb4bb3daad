"""Bar charts drawn on the server as SVG: no script, readable by screen readers.

A chart's SVG is as wide as its box and never scaled: bars are placed in percentages of
the width, and text keeps its size in pixels, so labels stay readable on a phone instead
of shrinking with a viewBox. Labels never overlap: this module picks which buckets get one
(every 7th day; every month, or every 3rd on a narrow screen, the CSS classes below), and
the y axis' labels sit in a margin of their own to the left of the plot.

Each chart is an `<svg role="img">` whose `<title>` and `<desc>` name it and sum it up,
with one `<title>` per bar (its date and value), and `figures_table` gives the same
figures as a table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

from markupsafe import Markup, escape

HEIGHT = 236
"""The chart's height in pixels, labels included."""
TOP = 30
"""Room for the legend above the plot."""
BOTTOM = 54
"""Room under the plot for two lines of labels and the axis' name."""
GUTTER = 52
"""Pixels left of the plot for the y axis' labels (drawn outside the SVG's box)."""
NARROW = 600
"""At this viewport width or less a chart shows fewer labels (class `thin` hidden)."""
STYLE = (
    "<style>"
    f"@media (max-width: {NARROW}px) {{ svg.chart .thin {{ display: none; }} }}"
    f"@media (min-width: {NARROW + 1}px) {{ svg.chart .narrow-only {{ display: none; }} }}"
    "</style>"
)


@dataclass(frozen=True)
class Series:
    name: str
    values: Sequence[int]
    css_class: str


@dataclass(frozen=True)
class Label:
    """The text under one bucket: a line and, optionally, a second (a month's year)."""

    text: str
    second: str | None = None
    narrow: bool = True
    """Also shown on a narrow screen."""
    second_wide: bool = True
    """The second line shown on a wide screen."""
    second_narrow: bool = True
    """The second line shown on a narrow screen."""


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


def every_nth_from_last(count: int, step: int) -> list[int]:
    """Indexes of every `step`th bucket counting back from the last (today is labelled)."""
    return sorted(range(count - 1, -1, -step))


def day_labels(days: Sequence[date]) -> dict[int, Label]:
    """One label a week ("2 Dec"), ending on the last day: 5 labels for 30 days, room
    enough for each even on a phone."""
    labels = {}
    for index in every_nth_from_last(len(days), 7):
        day = days[index]
        labels[index] = Label(f"{day.day} {day:%b}")
    return labels


def month_labels(months: Sequence[date]) -> dict[int, Label]:
    """Every month ("Dec"), with its year underneath on the first and on each January; on a
    narrow screen only every 3rd month (counting back from this one), with the year on the
    first of those and wherever the year changed since the one shown before."""
    narrow = set(every_nth_from_last(len(months), 3))
    labels = {}
    shown_year: int | None = None
    for index, month in enumerate(months):
        year = month.year
        in_narrow = index in narrow
        year_narrow = in_narrow and year != shown_year
        if in_narrow:
            shown_year = year
        year_wide = index == 0 or month.month == 1
        labels[index] = Label(
            f"{month:%b}",
            str(year) if year_wide or year_narrow else None,
            narrow=in_narrow,
            second_wide=year_wide,
            second_narrow=year_narrow,
        )
    return labels


def _pct(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".") + "%"


def _label_text(x: float, y: int, anchor: str, text: str, classes: list[str]) -> str:
    return (
        f'<text class="{" ".join(classes)}" x="{_pct(x)}" y="{y}" text-anchor="{anchor}">'
        f"{escape(text)}</text>"
    )


def bar_chart(
    chart_id: str,
    title: str,
    names: Sequence[str],
    series: Sequence[Series],
    labels: dict[int, Label],
    *,
    x_label: str,
) -> Markup:
    """Grouped bars: one group per bucket (`names` are the buckets' full names, for the
    titles), one bar per series; `labels` the buckets labelled under the axis."""
    e = escape
    peak = max((v for s in series for v in s.values), default=0)
    top = _nice_top(peak)
    plot_h = HEIGHT - TOP - BOTTOM
    groups = max(1, len(names))
    group_w = 100 / groups
    bar_w = group_w * 0.8 / max(1, len(series))
    totals = ", ".join(f"{s.name} {sum(s.values):,}" for s in series)
    first, last = (names[0], names[-1]) if names else ("", "")
    parts = [
        f'<svg id="{e(chart_id)}" class="chart" width="100%" height="{HEIGHT}" role="img"'
        f' aria-labelledby="{e(chart_id)}-title {e(chart_id)}-desc"'
        f' style="height: {HEIGHT}px; width: calc(100% - {GUTTER}px); margin-left: {GUTTER}px;'
        ' overflow: visible" xmlns="http://www.w3.org/2000/svg">',
        f'<title id="{e(chart_id)}-title">{e(title)}</title>',
        f'<desc id="{e(chart_id)}-desc">{e(x_label)} from {e(first)} to {e(last)};'
        f" totals: {e(totals)}.</desc>",
        STYLE,
    ]
    if peak == 0:  # no scale to draw: a scale of 0 to 4 tokens would be made up
        parts.append(
            f'<text class="axis-label empty" x="50%" y="{TOP + plot_h / 2:.1f}"'
            ' text-anchor="middle">No usage</text>'
        )
    for step in range(5 if peak else 1):
        y = TOP + plot_h - plot_h * step / 4
        parts.append(
            f'<line class="grid" x1="0" x2="100%" y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text class="tick y" x="-6" y="{y + 4:.1f}" text-anchor="end">'
            f"{e(_short(top * step // 4))}</text>"
        )
    for index, name in enumerate(names):
        for number, s in enumerate(series):
            value = s.values[index] if index < len(s.values) else 0
            height = plot_h * value / top
            x = group_w * index + group_w * 0.1 + bar_w * number
            y = TOP + plot_h - height
            parts.append(
                f'<rect class="series {e(s.css_class)}" x="{_pct(x)}" y="{y:.1f}"'
                f' width="{_pct(bar_w)}" height="{height:.1f}">'
                f"<title>{e(name)}: {e(s.name)} {value:,} tokens</title></rect>"
            )
    base = TOP + plot_h
    for index, label in sorted(labels.items()):
        # Centred under their bucket; at the ends they may reach into the margins.
        x, anchor = group_w * (index + 0.5), "middle"
        thin = [] if label.narrow else ["thin"]
        parts.append(_label_text(x, base + 16, anchor, label.text, ["tick", "x", *thin]))
        wide, narrow = label.second_wide, label.narrow and label.second_narrow
        if label.second is not None and (wide or narrow):
            only = [] if wide and narrow else ["thin"] if wide else ["narrow-only"]
            parts.append(
                _label_text(x, base + 30, anchor, label.second, ["tick", "x", "second", *only])
            )
    parts.append(
        f'<line class="axis" x1="0" x2="100%" y1="{base}" y2="{base}"/>'
        f'<text class="axis-label" x="50%" y="{HEIGHT - 4}" text-anchor="middle">'
        f"{e(x_label)}</text>"
    )
    legend_x = 0
    for s in series:
        parts.append(
            f'<rect class="series {e(s.css_class)}" x="{legend_x}" y="8" width="10" height="10"/>'
            f'<text class="legend" x="{legend_x + 14}" y="17">{e(s.name)}</text>'
        )
        legend_x += 14 + 7 * len(s.name) + 18
    parts.append("</svg>")
    return Markup("".join(parts))


def figures_table(
    table_id: str, caption: str, names: Sequence[str], series: Sequence[Series]
) -> Markup:
    """A chart's figures as a table, folded away under a summary: the chart's text
    alternative for anyone who would rather read numbers."""
    e = escape
    head = "".join(f'<th scope="col" class="num">{e(s.name.capitalize())}</th>' for s in series)
    rows = "".join(
        f"<tr><td>{e(name)}</td>"
        + "".join(
            f'<td class="num">{(s.values[i] if i < len(s.values) else 0):,}</td>' for s in series
        )
        + "</tr>"
        for i, name in enumerate(names)
    )
    return Markup(
        f'<details class="figures" id="{e(table_id)}"><summary>{e(caption)} as a table</summary>'
        f'<div class="table-wrap"><table><thead><tr><th scope="col">Date</th>{head}</tr></thead>'
        f"<tbody>{rows}</tbody></table></div></details>"
    )
