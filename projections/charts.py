"""Server-drawn SVG charts: no JavaScript, no library, every text escaped.

Built with ``format_html`` / ``format_html_join`` only, so a label (a decline code,
a date) can never become markup, whatever it contains.
"""

from __future__ import annotations

from datetime import date

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

# Distinguishable colours (Okabe-Ito), reused in order when there are more codes.
PALETTE = ("#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#f0e442",
           "#000000")
WIDTH, HEIGHT = 720, 280
LEFT, RIGHT, TOP, BOTTOM = 44, 12, 12, 52
MAX_X_LABELS = 10
LEGEND_COLUMNS, LEGEND_STEP, LEGEND_ROW = 7, 90, 16


def _ticks(top: int) -> list[int]:
    """Up to five round y-axis values from 0 to at least ``top``."""
    step = 1
    while top / step > 4:
        for factor in (2, 5 / 2, 2):  # 1, 2, 5, 10, 20, 50, …
            step = int(step * factor)
            if top / step <= 4:
                break
    return list(range(0, top + step, step)) if top else [0, 1]


def bar_chart(days: list[date], series: dict[str, dict[date, int]], *,
              title: str = "Declines per day per code") -> SafeString:
    """Grouped bars: one group per day, one bar per code that has declines that day."""
    if not days or not series:
        return format_html('<p class="muted" id="declines-chart-empty">{}</p>',
                           "No declines in this range.")
    codes = list(series)
    colour = {code: PALETTE[i % len(PALETTE)] for i, code in enumerate(codes)}
    ticks = _ticks(max(n for counts in series.values() for n in counts.values()))
    y_max = ticks[-1]
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    group_w = plot_w / len(days)
    bar_w = max(group_w * 0.8 / len(codes), 1.0)

    def y(value: float) -> float:
        return TOP + plot_h - plot_h * value / y_max

    bars = []
    for d_index, day in enumerate(days):
        for c_index, code in enumerate(codes):
            n = series[code].get(day, 0)
            if n:
                x = LEFT + d_index * group_w + group_w * 0.1 + c_index * bar_w
                bars.append((code, day.isoformat(), f"{x:.1f}", f"{y(n):.1f}", f"{bar_w:.1f}",
                             f"{plot_h * n / y_max:.1f}", colour[code],
                             f"{day.isoformat()} · code {code}: {n}"))
    every = max(1, -(-len(days) // MAX_X_LABELS))  # ceiling division
    x_labels = [
        (f"{LEFT + (i + 0.5) * group_w:.1f}", HEIGHT - BOTTOM + 16, day.strftime("%m-%d"))
        for i, day in enumerate(days) if i % every == 0
    ]
    legend = []
    for i, code in enumerate(codes):
        x = LEFT + (i % LEGEND_COLUMNS) * LEGEND_STEP
        row_y = HEIGHT - 14 + (i // LEGEND_COLUMNS) * LEGEND_ROW
        legend.append((x, row_y, colour[code], x + 14, row_y + 9, code))
    height = HEIGHT + (len(codes) - 1) // LEGEND_COLUMNS * LEGEND_ROW
    return format_html(
        '<svg id="declines-chart" class="chart" viewBox="0 0 {w} {h}" role="img"'
        ' aria-labelledby="declines-chart-title" xmlns="http://www.w3.org/2000/svg">'
        '<title id="declines-chart-title">{title}</title>'
        '<g class="grid">{grid}</g>'
        '<line class="axis" x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}"/>'
        '<line class="axis" x1="{left}" y1="{top}" x2="{left}" y2="{bottom}"/>'
        '<g class="bars">{bars}</g><g class="x-labels">{x_labels}</g>'
        '<g class="legend">{legend}</g></svg>',
        w=WIDTH, h=height, title=title, left=LEFT, right=WIDTH - RIGHT, top=TOP,
        bottom=TOP + plot_h,
        grid=format_html_join(
            "", '<line x1="{}" y1="{}" x2="{}" y2="{}"/>'
                '<text class="y-label" x="{}" y="{}" text-anchor="end">{}</text>',
            ((LEFT, f"{y(t):.1f}", WIDTH - RIGHT, f"{y(t):.1f}", LEFT - 6, f"{y(t) + 4:.1f}", t)
             for t in ticks),
        ),
        bars=format_html_join(
            "", '<rect class="bar" data-code="{}" data-date="{}" x="{}" y="{}" width="{}"'
                ' height="{}" fill="{}"><title>{}</title></rect>', bars,
        ),
        x_labels=format_html_join(
            "", '<text x="{}" y="{}" text-anchor="middle">{}</text>', x_labels),
        legend=format_html_join(
            "", '<rect x="{}" y="{}" width="10" height="10" fill="{}"/>'
                '<text class="legend-label" x="{}" y="{}">{}</text>', legend),
    )
