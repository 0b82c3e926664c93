"""Small charts rendered on the server: no JavaScript and nothing to install.

Bars are inline SVG; every label and number is HTML text beside them, never SVG text:
text inside a scaled SVG shrinks with it (a 640-unit chart on a 390 px phone drew 5 px
labels), while HTML text keeps the page's font size at any width. The page's CSP forbids
inline styles, so a bar's length is an SVG attribute, not a `style`.

Each chart has an accessible name; the pages also show the numbers as a table beside it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape

from markupsafe import Markup

PALETTE = {"approved": "#2f855a", "denied": "#c53030", "pending": "#b7791f",
           "other": "#718096", "bar": "#2b6cb0"}
# At phone width only every `STRIDE`-th day is labelled (the others stay as spacers).
STRIDE = 3


def stacked_bars(labels: Sequence[str], series: Mapping[str, Sequence[int]], *, title: str,
                 width: int = 640, height: int = 160, stride: int = STRIDE,
                 names: bool = False) -> Markup:
    """Vertical bars per label, stacked by series (drawn in the order given), with the
    labels in an HTML row underneath, one slot per bar. Labels other than every `stride`-th
    (counting back from the newest) are `minor`: the page's CSS hides them where slots are
    narrow. `names`: the labels are names, cut short with an ellipsis in a narrow slot
    (their full text in a tooltip) rather than thinned out."""
    n = max(len(labels), 1)
    totals = [sum(s[i] for s in series.values()) for i in range(len(labels))]
    top = max(totals, default=0) or 1
    slot = width / n
    bar_w = max(slot * 0.7, 2)
    parts = [f'<figure class="chart-stack"><svg class="chart bars" viewBox="0 0 {width} '
             f'{height}" preserveAspectRatio="none" role="img" aria-label="{escape(title)}">'
             f'<title>{escape(title)}</title>']
    for i, label in enumerate(labels):
        x = i * slot + (slot - bar_w) / 2
        y: float = height
        for name, values in series.items():
            v = values[i]
            if not v:
                continue
            h = v / top * (height - 4)
            y -= h
            parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}" '
                         f'fill="{PALETTE.get(name, PALETTE["bar"])}"><title>{escape(label)}: '
                         f'{v} {escape(name)}</title></rect>')
    kind = " names" if names else ""
    parts.append(f'</svg><figcaption class="chart-labels{kind}" aria-hidden="true">')
    for i, label in enumerate(labels):
        minor = " minor" if (len(labels) - 1 - i) % stride else ""  # the newest: labelled
        tip = f' title="{escape(label)}"' if names else ""
        parts.append(f'<span class="chart-label{minor}"{tip}>{escape(label)}</span>')
    parts.append("</figcaption></figure>")
    return Markup("".join(parts))  # noqa: S704 - every interpolated text is escaped above


def hbars(items: Sequence[tuple[str, int]], *, title: str) -> Markup:
    """Horizontal bars, one row each: label, bar, value."""
    top = max((v for _, v in items), default=0) or 1
    parts = [f'<ul class="hbars" aria-label="{escape(title)}">']
    for label, v in items:
        parts.append(
            f'<li class="hbar"><span class="hbar-label" title="{escape(label)}">'
            f'{escape(label)}</span><svg class="hbar-track" viewBox="0 0 100 10" '
            f'preserveAspectRatio="none" aria-hidden="true"><rect x="0" y="0" '
            f'width="{v / top * 100:.1f}" height="10" fill="{PALETTE["bar"]}"></rect></svg>'
            f'<span class="hbar-value">{v}</span></li>')
    parts.append("</ul>")
    return Markup("".join(parts))  # noqa: S704 - every interpolated text is escaped above
