"""PDF with fpdf2 (pure Python): summary tables, bar charts drawn with its primitives, one
section per resource, and the evidence an auditor needs to check the numbers.

Text is written with `FPDF.text` at computed positions (not `multi_cell`): a quarter's
report has tens of thousands of rows, and this keeps a row to a few cheap calls. The font
is the built-in Helvetica (Windows-1252) unless some text needs more; then DejaVu Sans
when the system has it (fonts-dejavu-core), else other characters are shown as "?".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import repeat
from pathlib import Path
from typing import Any, BinaryIO

from fpdf import FPDF

from accord.reports.schemas import (
    OUTCOMES,
    AlertLine,
    How,
    Report,
    RequestLine,
    Section,
    Tally,
    hours,
    iso,
    plural,
    span,
)
from accord.reports.service import Progress

FONT_DIRS = (Path("/usr/share/fonts/truetype/dejavu"), Path("/usr/share/fonts/dejavu"),
             Path("/usr/local/share/fonts/dejavu"))
COLORS = {"approved": (47, 133, 90), "denied": (197, 48, 48), "cancelled": (113, 128, 150),
          "expired": (160, 174, 192), "pending": (183, 121, 31), "bar": (43, 108, 176)}
MARGIN = 10.0
NB = "{total-pages}"  # wide enough for any page count
# The fast text path uses two of fpdf2's internals; without them, plain `FPDF.text`.
FAST = hasattr(FPDF, "_set_font_for_page") and hasattr(FPDF, "current_font_is_set_on_page")
LINE = 3.0  # mm per line of 6.5 pt table text


def _fonts() -> tuple[Path, Path, Path] | None:
    for d in FONT_DIRS:
        regular, bold, mono = d / "DejaVuSans.ttf", d / "DejaVuSans-Bold.ttf", \
            d / "DejaVuSansMono.ttf"
        if regular.exists() and bold.exists() and mono.exists():
            return regular, bold, mono
    return None


def _cp1252(text: str | None) -> bool:
    if not text or text.isascii():
        return True
    try:
        text.encode("cp1252")
    except UnicodeEncodeError:
        return False
    return True


def _needs_unicode(report: Report) -> bool:
    """Whether any text is outside the built-in fonts' Windows-1252 (most reports are not:
    loading a TrueType font costs more than writing a small report)."""
    texts: list[str | None] = [report.title, report.generated_by, report.params.user,
                               report.params.resource]
    if report.evidence is not None:
        texts += [report.evidence.checkpoint_note, report.evidence.key]
    for s in report.sections:
        texts.append(s.tally.name)
        texts += [a.title for a in s.alerts]
        for line in s.lines:
            texts += [line.reason, line.requester, line.role, line.decision_reason,
                      line.workflow, line.ended_by]
            texts += [a.comment for a in line.approvals] + [a.user for a in line.approvals]
            if line.review is not None:
                texts += [line.review[1], line.review[3]]
    texts += [a.title for a in report.other_alerts]
    texts += [d.comment for d in report.decisions_by_user]
    return not all(_cp1252(t) for t in texts)


def _day(value: object) -> str:
    text = iso(value)  # type: ignore[arg-type]
    return text[:16].replace("T", " ") if text else ""


@dataclass
class Col:
    title: str
    width: float
    max_lines: int = 1
    align: str = "L"


class ReportPDF(FPDF):
    def __init__(self, report: Report) -> None:
        super().__init__(orientation="L", unit="mm", format="A4")
        self.report = report
        self.set_margins(MARGIN, MARGIN, MARGIN)
        self.set_auto_page_break(False)
        self.set_compression(True)
        self.set_title(report.title)
        self.set_author("Accord")
        self.set_creator("Accord reports")
        fonts = _fonts() if _needs_unicode(report) else None
        if fonts is not None:
            self.add_font("body", "", str(fonts[0]))
            self.add_font("body", "B", str(fonts[1]))
            self.add_font("mono", "", str(fonts[2]))
            self.unicode = True
        else:
            self.unicode = False
            self.core_fonts_encoding = "cp1252"
        self.body = "body" if self.unicode else "Helvetica"
        self.mono = "mono" if self.unicode else "Courier"
        self.bottom = self.h - MARGIN - 6
        self._widths: dict[tuple[str, str], dict[str, int]] = {}
        self.y_pos = MARGIN

    # ------------------------------------------------------------ text primitives

    def clean(self, text: str) -> str:
        if "\n" in text or "  " in text or "\t" in text or "\r" in text:
            text = " ".join(text.split())
        if self.unicode or text.isascii():
            return text
        return text.encode("cp1252", "replace").decode("cp1252")

    def font(self, size: float = 7, bold: bool = False, mono: bool = False) -> None:
        self.set_font(self.mono if mono else self.body, "B" if bold and not mono else "",
                      size)

    def put(self, x: float, y: float, text: str) -> None:
        """`FPDF.text` without its per-call analysis (bidirectional text, colours): the
        same content-stream operators, for text already cleaned. Text is painted black:
        every fill is followed by `black()`."""
        if not text:
            return
        if not FAST:
            self.text(x, y, text)
            return
        if not self.unicode and not text.isascii():
            text = text.encode("cp1252", "replace").decode("latin-1")
        font = self.current_font
        assert font is not None
        if not self.current_font_is_set_on_page:
            self._out(self._set_font_for_page(font, self.font_size_pt))
        self._out(f"BT {x * self.k:.2f} {(self.h - y) * self.k:.2f} Td "
                  f"{font.encode_text(text)} ET")

    def box(self, x: float, y: float, w: float, h: float, color: tuple[int, int, int]) -> None:
        """A filled rectangle; the fill colour goes back to black for the text after it."""
        if not FAST:
            self.set_fill_color(*color)
            self.rect(x, y, w, h, style="F")
            self.set_fill_color(0, 0, 0)
            return
        r, g, b = (c / 255 for c in color)
        k = self.k
        self._out(f"{r:.3f} {g:.3f} {b:.3f} rg {x * k:.2f} {(self.h - y) * k:.2f} "
                  f"{w * k:.2f} {-h * k:.2f} re f 0 g")

    def footer(self) -> None:
        self.font(6.5)
        self.set_text_color(110, 110, 110)
        r = self.report
        self.text(MARGIN, self.h - 6, self.clean(
            f"{r.title} - {r.period_text} - generated {iso(r.generated_at)}"))
        # `cell`, not `text`: only cells get the page count filled in at the end
        self.set_xy(self.w - MARGIN - 40, self.h - 8.2)
        self.cell(40, 3, f"page {self.page_no()} of {NB}", align="R")
        self.set_text_color(0, 0, 0)

    def new_page(self) -> None:
        self.add_page()
        self.y_pos = MARGIN + 2

    def need(self, height: float) -> None:
        if self.y_pos + height > self.bottom:
            self.new_page()

    def heading(self, text: str, size: float = 12) -> None:
        self.need(size * 0.6 + 12)
        self.y_pos += 2
        self.font(size, bold=True)
        self.put(MARGIN, self.y_pos + size * 0.35, self.clean(text))
        self.y_pos += size * 0.35 + 3

    def para(self, text: str, size: float = 8, mono: bool = False) -> None:
        self.font(size, mono=mono)
        width = self.w - 2 * MARGIN
        for line in self.wrap(text, width, 200):
            self.need(size * 0.45)
            self.y_pos += size * 0.45
            self.put(MARGIN, self.y_pos, line)
        self.y_pos += 1.5

    def pre(self, text: str, size: float = 7.5) -> None:
        """Monospaced lines kept exactly as they are (long ones wrap at a character)."""
        self.font(size, mono=True)
        width = self.w - 2 * MARGIN
        for raw in text.split("\n"):
            line = raw if self.unicode else raw.encode("cp1252", "replace").decode("cp1252")
            while True:
                cut = len(line)
                while cut > 1 and self.width(line[:cut]) > width:
                    cut -= 1
                self.need(size * 0.45)
                self.y_pos += size * 0.45
                self.put(MARGIN, self.y_pos, line[:cut])
                line = line[cut:]
                if not line:
                    break
        self.y_pos += 1.5

    def _metrics(self) -> tuple[dict[str, int], float]:
        """The current font's remembered word widths (in font units) and the scale to mm.
        fpdf2's own `get_string_width` does bidirectional analysis first: too slow per
        cell, and names and common words repeat on every page."""
        key = (self.font_family, self.font_style)
        cache = self._widths.get(key)
        if cache is None:
            cache = self._widths[key] = {}
        elif len(cache) > 200_000:
            cache.clear()
        return cache, self.font_size_pt / 1000 / self.k

    def _units(self, text: str, cache: dict[str, int]) -> int:
        cw: dict[Any, Any] = self.current_font.cw  # type: ignore[union-attr]
        raw = text
        if not self.unicode and not text.isascii():
            raw = text.encode("cp1252", "replace").decode("latin-1")
        if self.unicode:
            units = int(sum(cw[ord(c)] for c in raw))
        else:
            units = int(sum(map(cw.get, raw, repeat(600))))
        cache[text] = units
        return units

    def width(self, text: str) -> float:
        """The text's width in mm."""
        cache, scale = self._metrics()
        units = cache.get(text)
        if units is None:
            units = self._units(text, cache)
        return units * scale

    def wrap(self, text: str, width: float, max_lines: int) -> list[str]:
        """Greedy word wrap to `width`; the last kept line ends in "..." if text was cut."""
        text = self.clean(text)
        if not text:
            return [""]
        cache, scale = self._metrics()
        # No character is wider than 1.02 em: short texts fit without measuring.
        if len(text) * scale * 1020 <= width:
            return [text]
        limit = width / scale  # in font units
        get = cache.get
        whole = get(text)
        if whole is None:
            whole = self._units(text, cache)
        if whole <= limit:
            return [text]
        space = get(" ")
        if space is None:
            space = self._units(" ", cache)
        lines: list[str] = []
        current: list[str] = []
        used = 0
        cut = False
        for word in text.split(" "):
            w = get(word)
            if w is None:
                w = self._units(word, cache)
            if current and used + space + w <= limit:
                current.append(word)
                used += space + w
                continue
            if current:
                lines.append(" ".join(current))
                current, used = [], 0
                if len(lines) == max_lines:
                    cut = True
                    break
            while w > limit:  # a word longer than the column: break it
                keep = max(1, int(len(word) * limit / w) - 1)
                lines.append(word[:keep])
                word = word[keep:]
                w = self._units(word, cache)
                if len(lines) == max_lines:
                    cut = True
                    break
            if cut:
                break
            current, used = [word], w
        if current and not cut:
            if len(lines) < max_lines:
                lines.append(" ".join(current))
            else:
                cut = True
        if cut:
            lines = lines[:max_lines]
            last = lines[-1]
            while last and self.width(last + "...") > width:
                last = last[:-1]
            lines[-1] = last + "..."
        return lines

    # ------------------------------------------------------------ tables

    def table_header(self, cols: Sequence[Col]) -> None:
        self.need(LINE + 4)
        self.box(MARGIN, self.y_pos, sum(c.width for c in cols), LINE + 1.6, (226, 232, 240))
        self.font(6.8, bold=True)
        x = MARGIN
        for c in cols:
            self.put(x + 1, self.y_pos + LINE, self.clean(c.title))
            x += c.width
        self.y_pos += LINE + 1.6

    def table_row(self, cols: Sequence[Col], cells: Sequence[str], *, bold: bool = False,
                  shade: bool = False, size: float = 6.5) -> None:
        self.font(size, bold=bold)
        wrapped = [self.wrap(cell, c.width - 2, c.max_lines) for c, cell in zip(cols, cells,
                                                                                 strict=True)]
        height = max(len(w) for w in wrapped) * LINE + 1.2
        if self.y_pos + height > self.bottom:
            self.new_page()
            self.table_header(cols)
            self.font(size, bold=bold)
        if shade:
            self.box(MARGIN, self.y_pos, sum(c.width for c in cols), height, (247, 250, 252))
        x = MARGIN
        for c, lines in zip(cols, wrapped, strict=True):
            y = self.y_pos + LINE - 0.4
            for text in lines:
                if c.align == "R":
                    self.put(x + c.width - 1 - self.width(text), y, text)
                else:
                    self.put(x + 1, y, text)
                y += LINE
            x += c.width
        self.y_pos += height

    def grid(self, cols: Sequence[Col], rows: Sequence[Sequence[str]],
              bold_last: bool = False) -> None:
        self.table_header(cols)
        for i, cells in enumerate(rows):
            self.table_row(cols, cells, shade=i % 2 == 1,
                           bold=bold_last and i == len(rows) - 1)
        self.y_pos += 2

    # ------------------------------------------------------------ charts

    def legend(self, x: float, y: float) -> None:
        self.font(6.5)
        for name in OUTCOMES:
            self.box(x, y - 2.2, 2.6, 2.6, COLORS[name.value])
            self.put(x + 3.4, y, name.value)
            x += 4 + self.width(name.value) + 4

    def hbar_chart(self, title: str, items: Sequence[tuple[str, dict[str, int]]],
                   width: float) -> None:
        """Horizontal bars per label, stacked by outcome."""
        items = list(items)[:25]
        row = 4.2
        self.need(10 + row * max(len(items), 1) + 6)
        self.font(9, bold=True)
        self.put(MARGIN, self.y_pos + 3, self.clean(title))
        self.legend(MARGIN + 95, self.y_pos + 3)
        self.y_pos += 6
        label_w = 38.0
        plot = width - label_w - 16
        top = max((sum(c.values()) for _, c in items), default=0) or 1
        for label, counts in items:
            self.font(6.8)
            self.put(MARGIN, self.y_pos + row * 0.7, self.clean(label)[:28])
            x = MARGIN + label_w
            for name in OUTCOMES:
                v = counts.get(name.value, 0)
                if v:
                    w = v / top * plot
                    self.box(x, self.y_pos + 0.6, w, row - 1.2, COLORS[name.value])
                    x += w
            self.put(x + 1.5, self.y_pos + row * 0.7, str(sum(counts.values())))
            self.y_pos += row
        if not items:
            self.font(7)
            self.put(MARGIN, self.y_pos + 3, "nothing in this period")
            self.y_pos += row
        self.y_pos += 4

    def column_chart(self, title: str, items: Sequence[tuple[str, dict[str, int]]],
                     width: float, height: float = 42) -> None:
        """Vertical bars per label (time buckets), stacked by outcome."""
        self.need(height + 14)
        self.font(9, bold=True)
        self.put(MARGIN, self.y_pos + 3, self.clean(title))
        self.legend(MARGIN + 95, self.y_pos + 3)
        self.y_pos += 6
        n = max(len(items), 1)
        slot = width / n
        bar = max(slot * 0.7, 0.3)
        top = max((sum(c.values()) for _, c in items), default=0) or 1
        base = self.y_pos + height
        self.set_draw_color(160, 160, 160)
        self.line(MARGIN, base, MARGIN + width, base)
        self.font(6)
        self.put(MARGIN - 0.5 + width + 1, self.y_pos + 2, str(top))
        every = max(1, n // 16)
        for i, (label, counts) in enumerate(items):
            x = MARGIN + i * slot + (slot - bar) / 2
            y = base
            for name in OUTCOMES:
                v = counts.get(name.value, 0)
                if v:
                    h = v / top * height
                    y -= h
                    self.box(x, y, bar, h, COLORS[name.value])
            if i % every == 0:
                self.put(MARGIN + i * slot, base + 3, self.clean(label))
        self.y_pos = base + 7

    def simple_bars(self, title: str, items: Sequence[tuple[str, int]], width: float) -> None:
        self.need(10 + 4.2 * max(len(items), 1))
        self.font(9, bold=True)
        self.put(MARGIN, self.y_pos + 3, self.clean(title))
        self.y_pos += 6
        top = max((v for _, v in items), default=0) or 1
        for label, v in items:
            self.font(6.8)
            self.put(MARGIN, self.y_pos + 2.9, self.clean(label))
            w = v / top * (width - 40)
            if v:
                self.box(MARGIN + 24, self.y_pos + 0.6, w, 3, COLORS["bar"])
            self.put(MARGIN + 25 + w, self.y_pos + 2.9, str(v))
            self.y_pos += 4.2
        self.y_pos += 4


# ---------------------------------------------------------------- the document


SUMMARY_COLS = [Col("Resource", 40), Col("Requests", 15, align="R"),
                Col("Approved", 15, align="R"), Col("Denied", 13, align="R"),
                Col("Cancelled", 15, align="R"), Col("Expired", 13, align="R"),
                Col("Pending", 13, align="R"), Col("By policy", 14, align="R"),
                Col("By people", 15, align="R"), Col("Break-glass", 17, align="R"),
                Col("Median decision", 20, align="R"), Col("Grants", 13, align="R"),
                Col("Users", 12, align="R"), Col("Access in period", 21, align="R"),
                Col("Statements", 17, align="R"), Col("Alerts", 12, align="R")]

DETAIL_COLS = [Col("#", 11), Col("Filed (UTC)", 23), Col("Requester", 16), Col("Role", 10),
               Col("Asked", 10, align="R"), Col("Reason", 52, max_lines=2),
               Col("Outcome", 15), Col("Decided by", 66, max_lines=3),
               Col("Access (UTC)", 48, max_lines=2), Col("Usage", 26, max_lines=2)]
DECIDED = {"approve": "approved", "deny": "denied"}


def _summary_row(t: Tally, usage: bool) -> list[str]:
    o = t.outcomes
    return [t.name, str(t.requests), str(o["approved"]), str(o["denied"]),
            str(o["cancelled"]), str(o["expired"]), str(o["pending"]), str(t.automatic),
            str(t.human), str(t.emergency), span(t.median_decision_seconds) or "-",
            str(t.grants), str(len(t.users)), hours(t.access_seconds),
            str(t.statements) if usage else "n/a", str(t.alerts)]


def _short(value: datetime | None) -> str:
    return value.strftime("%m-%d %H:%M") if value is not None else ""


def _decided(line: RequestLine) -> str:
    if line.how is How.PEOPLE:
        return "; ".join(f"{a.user} {DECIDED.get(a.decision, a.decision)} (step {a.step + 1}, "
                         f"{a.via}, {_short(a.at)})" + (f' "{a.comment}"' if a.comment else "")
                         for a in line.approvals)
    text = line.decided_by()
    if line.how is How.BREAK_GLASS and line.review:
        text += f' ({_day(line.review[2])}: "{line.review[3]}")'
    return text


def _access(line: RequestLine) -> str:
    if line.grant_id is None:
        return ""
    if line.access_start is None:
        if line.extends_grant_id and line.access_end_status is None:
            return f"extends grant {line.extends_grant_id}"
        return f"grant {line.grant_id}: {line.access_end_status or ''}"
    return (f"{_short(line.access_start)} to {_short(line.access_end)} "
            f"{line.access_end_status}, {span(line.access_seconds)} "
            f"({span(line.period_seconds) or '0s'} in period)")


def _usage(line: RequestLine, available: bool) -> str:
    if line.grant_id is None or line.access_start is None:
        return ""
    if not available:
        return "n/a"
    u = line.usage
    if u is None or not u.statements:
        return "not used via gateway"
    noun = "statement" if u.statements == 1 else "statements"
    return f"{u.statements} {noun}, {_short(u.first_used_at)} to {_short(u.last_used_at)}"


def _detail_row(line: RequestLine, available: bool) -> list[str]:
    number = str(line.id) + ("" if line.in_period else " *")
    return [number, _day(line.created_at), line.requester, line.role,
            span(line.duration_seconds), line.reason or "(none)",
            str(line.outcome) + (" (break-glass)" if line.emergency else ""),
            _decided(line), _access(line), _usage(line, available)]


def _alert_rows(alerts: Sequence[AlertLine]) -> list[list[str]]:
    return [[str(a.id), _day(a.opened_at), a.severity, a.rule, a.user or "",
             a.resource or "", a.status, a.title,
             ", ".join(str(i) for i in a.evidence[:12])] for a in alerts]


ALERT_COLS = [Col("#", 12), Col("Opened (UTC)", 24), Col("Severity", 16), Col("Rule", 30),
              Col("User", 20), Col("Resource", 26), Col("Status", 20),
              Col("Title", 89, max_lines=3), Col("Ledger indices", 40, max_lines=2)]


def _section(pdf: ReportPDF, s: Section, report: Report, progress: Progress | None,
             done: list[int], total: int) -> None:
    t = s.tally
    pdf.new_page()
    pdf.heading(f"Resource: {t.name}", 13)
    o = t.outcomes
    pdf.para(f"{plural(t.requests, 'request')} filed in the period: {o['approved']} "
             f"approved, {o['denied']} denied, {o['cancelled']} cancelled, {o['expired']} "
             f"expired, {o['pending']} pending; {t.automatic} decided by policy, {t.human} by "
             f"people, {t.emergency} break-glass. {plural(t.grants, 'grant')} overlapping "
             f"the period ({t.carried_over} carried over from before it), held by "
             f"{plural(len(t.users), 'user')} for {hours(t.access_seconds)} inside the "
             f"period. {plural(t.alerts, 'alert')}.")
    holders: dict[str, list[RequestLine]] = {}
    for line in s.lines:
        if line.access_in_period:
            holders.setdefault(line.requester, []).append(line)
    if holders:
        pdf.heading("Who had access in the period", 10)
        cols = [Col("User", 40), Col("Grants", 16, align="R"), Col("Roles", 50),
                Col("Access in period", 28, align="R"), Col("First start (UTC)", 30),
                Col("Last end (UTC)", 30), Col("Statements", 22, align="R")]
        rows = []
        for user in sorted(holders):
            lines = holders[user]
            stmts = sum(x.usage.statements for x in lines if x.usage)
            rows.append([user, str(len(lines)), ", ".join(sorted({x.role for x in lines})),
                         hours(sum(x.period_seconds for x in lines)),
                         _day(min(x.access_start for x in lines if x.access_start)),
                         _day(max(x.access_end for x in lines if x.access_end)),
                         str(stmts) if report.usage_available else "n/a"])
        pdf.grid(cols, rows)
    if s.lines:
        pdf.heading("Requests", 10)
        if any(not line.in_period for line in s.lines):
            pdf.para("* filed before the period; listed because its access overlaps it.", 7)
        pdf.table_header(DETAIL_COLS)
        for i, line in enumerate(s.lines):
            pdf.table_row(DETAIL_COLS, _detail_row(line, report.usage_available),
                          shade=i % 2 == 1)
            done[0] += 1
            if progress and done[0] % 2000 == 0:
                progress("pdf", done[0], total)
        pdf.y_pos += 2
    if s.alerts:
        pdf.heading("Alerts", 10)
        pdf.grid(ALERT_COLS, _alert_rows(s.alerts))


def _evidence(pdf: ReportPDF, report: Report) -> None:
    lf = report.ledger
    pdf.new_page()
    pdf.heading("Ledger and evidence", 13)
    rng = (f"indices {lf.first_index} to {lf.last_index}" if lf.first_index is not None
           else "no indices")
    pdf.para(f"Ledger events in the period: {lf.events} ({rng}); the ledger held {lf.size} "
             "entries when this report was built. Every number above is counted from the "
             "request tables and checked against the ledger:")
    pdf.grid([Col("Check", 120), Col("Tables", 25, align="R"), Col("Ledger", 25, align="R"),
               Col("Result", 25)],
              [[c.name, str(c.tables), str(c.ledger), "OK" if c.ok else "MISMATCH"]
               for c in lf.checks])
    if lf.by_type:
        half = (len(lf.by_type) + 1) // 2
        items = list(lf.by_type.items())
        cols = [Col("Event type", 60), Col("Events", 25, align="R"), Col("", 10),
                Col("Event type", 60), Col("Events", 25, align="R")]
        rows = []
        for i in range(half):
            right = items[half + i] if half + i < len(items) else ("", "")
            rows.append([items[i][0], str(items[i][1]), "", right[0], str(right[1])])
        pdf.heading("Events in the period by type", 10)
        pdf.grid(cols, rows)
    ev = report.evidence
    pdf.heading("Signed checkpoint", 10)
    if ev is None:
        pdf.para("No checkpoint could be signed: the ledger is empty.")
        return
    covered = lf.last_index is None or ev.checkpoint_size > lf.last_index
    pdf.para(f"Checkpoint of size {ev.checkpoint_size} (ledger indices 0 to "
             f"{ev.checkpoint_size - 1}), signed {iso(ev.signed_at)}, root {ev.checkpoint_root}. "
             + ("It covers every event of the period." if covered else
                "WARNING: it does not cover every event of the period."))
    pdf.pre(ev.checkpoint_note.rstrip("\n"))
    pdf.heading("Verifier key", 10)
    pdf.pre(ev.key)
    pdf.heading("How to verify", 10)
    pdf.para("1. Save the checkpoint above exactly as printed (origin, size and root lines, "
             "a blank line, then the signature line) as checkpoint.txt.")
    pdf.para("2. Export the ledger on the Accord server, then verify it offline with the key "
             "above: verify recomputes the whole tree, checks every signature, and checks "
             "that the ledger extends this checkpoint.")
    for cmd in ev.commands():
        pdf.pre(cmd)
    pdf.para("3. Generating this report is itself a ledger event (report.generated) that "
             "carries the sha256 of this file and the parameters above: find it with "
             "accord audit tail --type report.generated, or GET /api/v1/audit/events"
             "?type=report.generated, and compare its hash with sha256sum of this file.")


def render(report: Report, out: BinaryIO, progress: Progress | None = None) -> None:
    pdf = ReportPDF(report)
    pdf.alias_nb_pages(NB)
    pdf.new_page()
    pdf.font(18, bold=True)
    pdf.put(MARGIN, MARGIN + 8, pdf.clean(report.title))
    pdf.y_pos = MARGIN + 13
    p = report.params
    scope = [f"Period: {report.period_text}."]
    if p.resource:
        scope.append(f"Resource: {p.resource}.")
    if p.user:
        scope.append(f"User: {p.user}.")
    scope.append(f"Generated {iso(report.generated_at)} by {report.generated_by}.")
    pdf.para(" ".join(scope), 9)
    pdf.para("A request belongs to the period when it was created in it; each request's "
             "outcome and its access are shown as of the report's generation. Access listed "
             "is every grant that overlaps the period, including grants whose request was "
             "filed earlier (marked *). Access hours count only the time inside the period. "
             "Gateway usage: " + ("statements run through accord gateway, per grant."
                                  if report.usage_available else
                                  "not available on this installation."), 8)
    pdf.heading("Summary", 12)
    rows = [_summary_row(s.tally, report.usage_available) for s in report.sections]
    rows.append(_summary_row(report.totals, report.usage_available))
    rows[-1][0] = "All resources"
    pdf.grid(SUMMARY_COLS, rows, bold_last=True)
    width = pdf.w - 2 * MARGIN
    by_resource = sorted(((s.tally.name, s.tally.outcomes) for s in report.sections
                          if s.tally.requests), key=lambda x: -sum(x[1].values()))
    pdf.hbar_chart("Requests by resource and outcome", by_resource, width / 2)
    pdf.column_chart(f"Requests per {report.timeline_unit}", report.timeline, width - 12)
    pdf.simple_bars("Time to a human decision", report.decision_buckets, width / 2)
    total = sum(len(s.lines) for s in report.sections)
    done = [0]
    for s in report.sections:
        if s.lines or s.alerts or p.kind != "access" or p.resource:
            _section(pdf, s, report, progress, done, total)
    if report.other_alerts:
        pdf.new_page()
        pdf.heading("Other alerts in the period", 12)
        pdf.grid(ALERT_COLS, _alert_rows(report.other_alerts))
    if report.decisions_by_user:
        pdf.new_page()
        pdf.heading(f"Decisions made by {p.user} in the period", 12)
        pdf.grid([Col("Request", 16), Col("Requester", 30), Col("Resource", 40),
                   Col("Role", 20), Col("Decision", 18), Col("Step", 12, align="R"),
                   Col("Via", 16), Col("At (UTC)", 28), Col("Comment", 97, max_lines=3)],
                  [[str(d.request_id), d.requester, d.resource, d.role, d.decision,
                    str(d.step + 1), d.via, _day(d.at), d.comment]
                   for d in report.decisions_by_user])
    _evidence(pdf, report)
    if progress:
        progress("pdf", total, total)
    out.write(bytes(pdf.output()))
