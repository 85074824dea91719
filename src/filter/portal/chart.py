"""The administrator's chart: held messages per day and category, as an SVG drawn here.

This module owns the drawing, pure: counts in, an SVG document out.  No
script, no external reference, no ``style`` attribute or element (the
portal's Content-Security-Policy allows only its own stylesheet): colours and
sizes are SVG presentation attributes.  Every text that came from the store
(a category name) is escaped.  One stacked bar per day, one colour per
category, the y axis scaled to the busiest day.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import date, timedelta
from html import escape

from filter.qstore import DayCount

# Known categories in the order of severity, each with its colour; others get grey.
COLOURS = {
    "virus": "#b2182b",
    "banned": "#ef8a62",
    "unchecked": "#8c6bb1",
    "spam": "#2166ac",
    "bad_header": "#67a9cf",
}
OTHER = "#999999"

WIDTH, HEIGHT = 760, 320
LEFT, RIGHT, TOP, BOTTOM = 48, 150, 16, 40


def _nice_top(peak: int) -> int:
    """A round axis maximum at or above ``peak``: 4, 8, 20, 40, 80, 200, ... (quarters whole)."""
    magnitude = 1
    while True:
        for step in (4, 8, 20):
            if magnitude * step >= peak:
                return magnitude * step
        magnitude *= 10


def days_of(
    counts: Sequence[DayCount], days: int, today: date
) -> list[tuple[date, dict[str, int]]]:
    """Each of the last ``days`` days, oldest first, with its count per category (gaps as 0)."""
    per_day: dict[date, dict[str, int]] = defaultdict(dict)
    for row in counts:
        per_day[row.day][row.category] = per_day[row.day].get(row.category, 0) + row.count
    first = today - timedelta(days=days - 1)
    return [
        (first + timedelta(days=n), per_day.get(first + timedelta(days=n), {})) for n in range(days)
    ]


def svg(counts: Sequence[DayCount], days: int, today: date) -> str:
    """The chart as a standalone SVG document."""
    series = days_of(counts, days, today)
    categories = [c for c in COLOURS if any(c in d for _, d in series)]
    categories += sorted({c for _, d in series for c in d} - set(categories))
    peak = max((sum(d.values()) for _, d in series), default=0)
    top = _nice_top(max(peak, 1))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / max(days, 1)
    bar = max(1.0, slot * 0.75)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}"'
        f' viewBox="0 0 {WIDTH} {HEIGHT}" role="img" font-family="sans-serif" font-size="11">',
        f"<title>Held messages per day and category, last {days} days</title>",
    ]
    for n in range(5):  # horizontal grid lines and their labels
        value = top * n // 4  # whole: the top is a multiple of 4
        y = TOP + plot_h - plot_h * n / 4
        out.append(
            f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + plot_w}" y2="{y:.1f}" stroke="#dddddd"/>'
        )
        out.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{value}</text>')
    for index, (day, per_category) in enumerate(series):
        x = LEFT + index * slot + (slot - bar) / 2
        y = TOP + plot_h
        for category in categories:
            count = per_category.get(category, 0)
            if not count:
                continue
            h = plot_h * count / top
            y -= h
            colour = COLOURS.get(category, OTHER)
            out.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{h:.1f}" fill="{colour}">'
                f"<title>{day.isoformat()} {escape(category)}: {count}</title></rect>"
            )
        if index % 5 == 0 or index == days - 1:  # a date label every five days
            out.append(
                f'<text x="{x + bar / 2:.1f}" y="{TOP + plot_h + 16}" text-anchor="middle">'
                f"{day.strftime('%m-%d')}</text>"
            )
    out.append(
        f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{LEFT + plot_w}" y2="{TOP + plot_h}"'
        ' stroke="#333333"/>'
    )
    for n, category in enumerate(categories):  # the legend, right of the plot
        y = TOP + 4 + n * 18
        x = WIDTH - RIGHT + 16
        colour = COLOURS.get(category, OTHER)
        total = sum(d.get(category, 0) for _, d in series)
        out.append(f'<rect x="{x}" y="{y}" width="12" height="12" fill="{colour}"/>')
        out.append(f'<text x="{x + 18}" y="{y + 10}">{escape(category)} ({total})</text>')
    if not categories:
        out.append(
            f'<text x="{LEFT + plot_w / 2:.1f}" y="{TOP + plot_h / 2:.1f}"'
            ' text-anchor="middle">nothing held</text>'
        )
    out.append("</svg>")
    return "\n".join(out)
