"""Small inline SVG charts, rendered on the server: no JavaScript and nothing to install.

Each chart carries a title and description for screen readers; the pages also show the
numbers as a table beside it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape

from markupsafe import Markup

PALETTE = {"approved": "#2f855a", "denied": "#c53030", "pending": "#b7791f",
           "other": "#718096", "bar": "#2b6cb0"}


def stacked_bars(labels: Sequence[str], series: Mapping[str, Sequence[int]], *, title: str,
                 width: int = 640, height: int = 180) -> Markup:
    """Vertical bars per label, stacked by series (drawn in the order given)."""
    n = max(len(labels), 1)
    totals = [sum(s[i] for s in series.values()) for i in range(len(labels))]
    top = max(totals, default=0) or 1
    pad_b, pad_t = 22, 8
    plot_h = height - pad_b - pad_t
    slot = width / n
    bar_w = max(slot * 0.7, 2)
    parts = [f'<svg class="chart bars" viewBox="0 0 {width} {height}" role="img" '
             f'aria-labelledby="c-{id(labels)}"><title id="c-{id(labels)}">{escape(title)}'
             '</title>']
    for i, label in enumerate(labels):
        x = i * slot + (slot - bar_w) / 2
        y: float = height - pad_b
        for name, values in series.items():
            v = values[i]
            if not v:
                continue
            h = v / top * plot_h
            y -= h
            parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}" '
                         f'fill="{PALETTE.get(name, PALETTE["bar"])}"><title>{escape(label)}: '
                         f'{v} {escape(name)}</title></rect>')
        if n <= 16 or i % 2 == 0:
            parts.append(f'<text x="{i * slot + slot / 2:.1f}" y="{height - 6}" '
                         f'text-anchor="middle">{escape(label)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every interpolated text is escaped above


def hbars(items: Sequence[tuple[str, int]], *, title: str, width: int = 320,
          row: int = 24) -> Markup:
    """Horizontal bars with their label and value."""
    height = max(len(items), 1) * row
    top = max((v for _, v in items), default=0) or 1
    label_w = 110
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="{escape(title)}"><title>{escape(title)}</title>']
    for i, (label, v) in enumerate(items):
        y = i * row
        w = v / top * (width - label_w - 40)
        parts.append(f'<text x="0" y="{y + row * 0.68:.1f}">{escape(label[:16])}</text>'
                     f'<rect x="{label_w}" y="{y + 4}" width="{w:.1f}" height="{row - 8}" '
                     f'fill="{PALETTE["bar"]}"></rect>'
                     f'<text x="{label_w + w + 4:.1f}" y="{y + row * 0.68:.1f}">{v}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every interpolated text is escaped above
