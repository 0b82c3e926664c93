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
from pathlib import Path
from typing import BinaryIO

from fpdf import FPDF

from accord.reports.schemas import (
    OUTCOMES,
    AlertLine,
    Report,
    RequestLine,
    Section,
    Tally,
    hours,
    iso,
    span,
)
from accord.reports.service import Progress

FONT_DIRS = (Path("/usr/share/fonts/truetype/dejavu"), Path("/usr/share/fonts/dejavu"),
             Path("/usr/local/share/fonts/dejavu"))
COLORS = {"approved": (47, 133, 90), "denied": (197, 48, 48), "cancelled": (113, 128, 150),
          "expired": (160, 174, 192), "pending": (183, 121, 31), "bar": (43, 108, 176)}
MARGIN = 10.0
LINE = 3.4  # mm per line of 7 pt text


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
        self.y_pos = MARGIN

    # ------------------------------------------------------------ text primitives

    def clean(self, text: str) -> str:
        text = " ".join(str(text).split())
        if self.unicode:
            return text
        return text.encode("cp1252", "replace").decode("cp1252")

    def font(self, size: float = 7, bold: bool = False, mono: bool = False) -> None:
        self.set_font(self.mono if mono else self.body, "B" if bold and not mono else "",
                      size)

    def footer(self) -> None:
        self.font(6.5)
        self.set_text_color(110, 110, 110)
        r = self.report
        self.text(MARGIN, self.h - 6, self.clean(
            f"{r.title} - {r.period_text} - generated {iso(r.generated_at)}"))
        # `cell`, not `text`: only cells get the page count filled in at the end
        self.set_xy(self.w - MARGIN - 40, self.h - 8.2)
        self.cell(40, 3, f"page {self.page_no()} of {{nb}}", align="R")
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
        self.text(MARGIN, self.y_pos + size * 0.35, self.clean(text))
        self.y_pos += size * 0.35 + 3

    def para(self, text: str, size: float = 8, mono: bool = False) -> None:
        self.font(size, mono=mono)
        width = self.w - 2 * MARGIN
        for line in self.wrap(text, width, 200):
            self.need(size * 0.45)
            self.y_pos += size * 0.45
            self.text(MARGIN, self.y_pos, line)
        self.y_pos += 1.5

    def pre(self, text: str, size: float = 7.5) -> None:
        """Monospaced lines kept exactly as they are (long ones wrap at a character)."""
        self.font(size, mono=True)
        width = self.w - 2 * MARGIN
        for raw in text.split("\n"):
            line = raw if self.unicode else raw.encode("cp1252", "replace").decode("cp1252")
            while True:
                cut = len(line)
                while cut > 1 and self.get_string_width(line[:cut]) > width:
                    cut -= 1
                self.need(size * 0.45)
                self.y_pos += size * 0.45
                self.text(MARGIN, self.y_pos, line[:cut])
                line = line[cut:]
                if not line:
                    break
        self.y_pos += 1.5

    def wrap(self, text: str, width: float, max_lines: int) -> list[str]:
        """Greedy word wrap to `width`; the last kept line ends in an ellipsis if cut."""
        text = self.clean(text)
        if not text:
            return [""]
        if len(text) * 1.1 < width or self.get_string_width(text) <= width:
            return [text]
        lines: list[str] = []
        current = ""
        for word in text.split(" "):
            candidate = f"{current} {word}" if current else word
            if self.get_string_width(candidate) <= width:
                current = candidate
                continue
            if current:
                lines.append(current)
            while self.get_string_width(word) > width:  # a word longer than the column
                cut = max(1, int(len(word) * width / self.get_string_width(word)) - 1)
                lines.append(word[:cut])
                word = word[cut:]
            current = word
            if len(lines) >= max_lines:
                break
        if current and len(lines) < max_lines:
            lines.append(current)
        if len(lines) > max_lines or (len(lines) == max_lines and
                                      " ".join(lines) != text):
            lines = lines[:max_lines]
            last = lines[-1]
            while last and self.get_string_width(last + "...") > width:
                last = last[:-1]
            lines[-1] = last + "..."
        return lines

    # ------------------------------------------------------------ tables

    def table_header(self, cols: Sequence[Col]) -> None:
        self.need(LINE + 4)
        self.set_fill_color(226, 232, 240)
        self.rect(MARGIN, self.y_pos, sum(c.width for c in cols), LINE + 1.6, style="F")
        self.font(6.8, bold=True)
        x = MARGIN
        for c in cols:
            self.text(x + 1, self.y_pos + LINE, self.clean(c.title))
            x += c.width
        self.y_pos += LINE + 1.6

    def table_row(self, cols: Sequence[Col], cells: Sequence[str], *, bold: bool = False,
                  shade: bool = False, size: float = 6.8) -> None:
        self.font(size, bold=bold)
        wrapped = [self.wrap(cell, c.width - 2, c.max_lines) for c, cell in zip(cols, cells,
                                                                                 strict=True)]
        height = max(len(w) for w in wrapped) * LINE + 1.2
        if self.y_pos + height > self.bottom:
            self.new_page()
            self.table_header(cols)
            self.font(size, bold=bold)
        if shade:
            self.set_fill_color(247, 250, 252)
            self.rect(MARGIN, self.y_pos, sum(c.width for c in cols), height, style="F")
        x = MARGIN
        for c, lines in zip(cols, wrapped, strict=True):
            y = self.y_pos + LINE - 0.4
            for text in lines:
                if c.align == "R":
                    self.text(x + c.width - 1 - self.get_string_width(text), y, text)
                else:
                    self.text(x + 1, y, text)
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
            self.set_fill_color(*COLORS[name.value])
            self.rect(x, y - 2.2, 2.6, 2.6, style="F")
            self.text(x + 3.4, y, name.value)
            x += 4 + self.get_string_width(name.value) + 4

    def hbar_chart(self, title: str, items: Sequence[tuple[str, dict[str, int]]],
                   width: float) -> None:
        """Horizontal bars per label, stacked by outcome."""
        items = list(items)[:25]
        row = 4.2
        self.need(10 + row * max(len(items), 1) + 6)
        self.font(9, bold=True)
        self.text(MARGIN, self.y_pos + 3, self.clean(title))
        self.legend(MARGIN + 95, self.y_pos + 3)
        self.y_pos += 6
        label_w = 38.0
        plot = width - label_w - 16
        top = max((sum(c.values()) for _, c in items), default=0) or 1
        for label, counts in items:
            self.font(6.8)
            self.text(MARGIN, self.y_pos + row * 0.7, self.clean(label)[:28])
            x = MARGIN + label_w
            for name in OUTCOMES:
                v = counts.get(name.value, 0)
                if v:
                    w = v / top * plot
                    self.set_fill_color(*COLORS[name.value])
                    self.rect(x, self.y_pos + 0.6, w, row - 1.2, style="F")
                    x += w
            self.text(x + 1.5, self.y_pos + row * 0.7, str(sum(counts.values())))
            self.y_pos += row
        if not items:
            self.font(7)
            self.text(MARGIN, self.y_pos + 3, "nothing in this period")
            self.y_pos += row
        self.y_pos += 4

    def column_chart(self, title: str, items: Sequence[tuple[str, dict[str, int]]],
                     width: float, height: float = 42) -> None:
        """Vertical bars per label (time buckets), stacked by outcome."""
        self.need(height + 14)
        self.font(9, bold=True)
        self.text(MARGIN, self.y_pos + 3, self.clean(title))
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
        self.text(MARGIN - 0.5 + width + 1, self.y_pos + 2, str(top))
        every = max(1, n // 16)
        for i, (label, counts) in enumerate(items):
            x = MARGIN + i * slot + (slot - bar) / 2
            y = base
            for name in OUTCOMES:
                v = counts.get(name.value, 0)
                if v:
                    h = v / top * height
                    y -= h
                    self.set_fill_color(*COLORS[name.value])
                    self.rect(x, y, bar, h, style="F")
            if i % every == 0:
                self.text(MARGIN + i * slot, base + 3, self.clean(label))
        self.y_pos = base + 7

    def simple_bars(self, title: str, items: Sequence[tuple[str, int]], width: float) -> None:
        self.need(10 + 4.2 * max(len(items), 1))
        self.font(9, bold=True)
        self.text(MARGIN, self.y_pos + 3, self.clean(title))
        self.y_pos += 6
        top = max((v for _, v in items), default=0) or 1
        for label, v in items:
            self.font(6.8)
            self.text(MARGIN, self.y_pos + 2.9, self.clean(label))
            w = v / top * (width - 40)
            self.set_fill_color(*COLORS["bar"])
            if v:
                self.rect(MARGIN + 24, self.y_pos + 0.6, w, 3, style="F")
            self.text(MARGIN + 25 + w, self.y_pos + 2.9, str(v))
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

DETAIL_COLS = [Col("#", 12), Col("Filed (UTC)", 22), Col("Requester", 18), Col("Role", 13),
               Col("Asked", 11, align="R"), Col("Reason", 52, max_lines=3),
               Col("Outcome", 16), Col("Decided by", 60, max_lines=4),
               Col("Access (UTC)", 44, max_lines=2), Col("Usage", 29, max_lines=2)]


def _summary_row(t: Tally, usage: bool) -> list[str]:
    o = t.outcomes
    return [t.name, str(t.requests), str(o["approved"]), str(o["denied"]),
            str(o["cancelled"]), str(o["expired"]), str(o["pending"]), str(t.automatic),
            str(t.human), str(t.emergency), span(t.median_decision_seconds) or "-",
            str(t.grants), str(len(t.users)), hours(t.access_seconds),
            str(t.statements) if usage else "n/a", str(t.alerts)]


def _decided(line: RequestLine) -> str:
    text = line.decided_by()
    if line.how.value == "people":
        text = "; ".join(f"{a.user} {a.decision}d (step {a.step + 1}, {a.via}, "
                         f"{_day(a.at)})" + (f' "{a.comment}"' if a.comment else "")
                         for a in line.approvals)
        if line.workflow:
            text += f"; route: {line.workflow} {(line.policy_version or '')[:12]} {line.rule}"
    elif line.how.value == "break_glass" and line.review:
        text += f' ({_day(line.review[2])}: "{line.review[3]}")'
    return text


def _access(line: RequestLine) -> str:
    if line.grant_id is None:
        return ""
    if line.access_start is None:
        if line.extends_grant_id and line.access_end_status is None:
            return f"extends grant {line.extends_grant_id}"
        return f"grant {line.grant_id}: {line.access_end_status or ''}"
    held = span(line.access_seconds)
    return (f"{_day(line.access_start)} to {_day(line.access_end)} "
            f"({line.access_end_status}, {held}; {span(line.period_seconds) or '0s'} in period)")


def _usage(line: RequestLine, available: bool) -> str:
    if line.grant_id is None or line.access_start is None:
        return ""
    if not available:
        return "n/a"
    u = line.usage
    if u is None or not u.statements:
        return "not used via gateway"
    return f"{u.statements} statements, {_day(u.first_used_at)} to {_day(u.last_used_at)}"


def _detail_row(line: RequestLine, available: bool) -> list[str]:
    number = str(line.id) + ("" if line.in_period else " *")
    return [number, _day(line.created_at), line.requester, line.role,
            span(line.duration_seconds), line.reason or "(none)",
            line.outcome.value + (" (break-glass)" if line.emergency else ""),
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
    pdf.para(f"{t.requests} requests filed in the period: {o['approved']} approved, "
             f"{o['denied']} denied, {o['cancelled']} cancelled, {o['expired']} expired, "
             f"{o['pending']} pending; {t.automatic} decided by policy, {t.human} by people, "
             f"{t.emergency} break-glass. {t.grants} grants overlap the period "
             f"({t.carried_over} carried over from before it), held by {len(t.users)} "
             f"users for {hours(t.access_seconds)} inside the period. {t.alerts} alerts.")
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
    pdf.para("1. Save the checkpoint above, exactly as printed (4 lines: origin, size, root, "
             "a blank line, then the signature line), to checkpoint.txt. "
             "2. Export the ledger on the Accord server and verify it offline with the key "
             "above; verify recomputes the whole tree, checks every signature, and checks that "
             "the tree extends this checkpoint:")
    for cmd in ev.commands():
        pdf.pre(cmd)
    pdf.para("3. The generation of this report is itself a ledger event (report.generated) "
             "carrying the sha256 of this file and the parameters above: find it with "
             "accord audit tail --type report.generated or GET /api/v1/audit/events"
             "?type=report.generated, and compare the hash with sha256sum of this file.")


def render(report: Report, out: BinaryIO, progress: Progress | None = None) -> None:
    pdf = ReportPDF(report)
    pdf.alias_nb_pages()
    pdf.new_page()
    pdf.font(18, bold=True)
    pdf.text(MARGIN, MARGIN + 8, pdf.clean(report.title))
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
