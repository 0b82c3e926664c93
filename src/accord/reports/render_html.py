"""HTML: one standalone file (inline CSS, inline SVG charts, no scripts), streamed out."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

from jinja2 import Environment, FileSystemLoader, select_autoescape

from accord.reports import charts, render_pdf
from accord.reports.schemas import OUTCOMES, Report, RequestLine, hours, iso, plural, span
from accord.reports.service import Progress

HERE = Path(__file__).parent
LABELS = 10  # at most this many period labels under a chart (56 px each at 560 px)
_env = Environment(loader=FileSystemLoader(HERE / "templates"),
                   autoescape=select_autoescape(["html"]), trim_blocks=True,
                   lstrip_blocks=True)
_env.globals.update(iso=iso, hours=hours, span=span, plural=plural, day=render_pdf._day,
                    decided=render_pdf._decided, access=render_pdf._access,
                    usage=render_pdf._usage, outcomes=[o.value for o in OUTCOMES])


def _series(items: list[tuple[str, dict[str, int]]]) -> dict[str, list[int]]:
    """The web's palette: approved, denied, pending, and the rest as `other`."""
    return {
        "approved": [c["approved"] for _, c in items],
        "denied": [c["denied"] for _, c in items],
        "pending": [c["pending"] for _, c in items],
        "other": [c["cancelled"] + c["expired"] for _, c in items],
    }


def render(report: Report, out: BinaryIO, progress: Progress | None = None) -> None:
    by_resource = sorted(((s.tally.name, s.tally.outcomes) for s in report.sections
                          if s.tally.requests), key=lambda x: -sum(x[1].values()))[:25]
    timeline = report.timeline
    total = sum(len(s.lines) for s in report.sections)
    done = 0

    def counted(lines: list[RequestLine]) -> object:
        nonlocal done
        for line in lines:
            yield line
            done += 1
            if progress and done % 5000 == 0:
                progress("html", done, total)

    template = _env.get_template("report.html")
    stream = template.generate(
        r=report, p=report.params, lf=report.ledger, ev=report.evidence, counted=counted,
        timeline_chart=charts.stacked_bars([label for label, _ in timeline],
                                           _series(timeline),
                                           title=f"Requests per {report.timeline_unit}",
                                           stride=-(-len(timeline) // LABELS)),
        resource_chart=charts.stacked_bars([label for label, _ in by_resource],
                                           _series(by_resource),
                                           title="Requests by resource and outcome",
                                           stride=1, names=True),
        decision_chart=charts.hbars(report.decision_buckets, title="Time to a human decision"),
    )
    buffer: list[str] = []
    size = 0
    for piece in stream:
        buffer.append(piece)
        size += len(piece)
        if size > 1 << 16:
            out.write("".join(buffer).encode("utf-8"))
            buffer, size = [], 0
    out.write("".join(buffer).encode("utf-8"))
    if progress:
        progress("html", total, total)
