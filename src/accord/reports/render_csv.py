"""CSV: one row per request (the period's, and those whose access carried over into it).

A plain table for spreadsheets and scripts; the summary, charts and evidence are in the
PDF, HTML and JSON forms, and every form's sha256 is in its `report.generated` event.
"""

from __future__ import annotations

import csv
import io
from typing import BinaryIO

from accord.reports.schemas import Report, RequestLine, iso
from accord.reports.service import Progress

COLUMNS = (
    "request_id", "in_period", "resource", "role", "requester", "created_at", "created_via",
    "reason", "requested_seconds", "outcome", "status", "decided_at", "decided_how",
    "decided_by", "approvals", "workflow", "policy_version", "rule", "emergency",
    "review_verdict", "reviewed_by", "reviewed_at", "extends_grant_id", "grant_id",
    "access_start", "access_end", "access_end_status", "ended_by", "access_seconds",
    "access_seconds_in_period", "gateway_statements", "first_used_at", "last_used_at",
)


def approvals_text(line: RequestLine) -> str:
    return " | ".join(
        f"{a.user} {a.decision} step {a.step + 1} via {a.via} at {iso(a.at)}"
        + (f": {a.comment}" if a.comment else "")
        for a in line.approvals)


def row(line: RequestLine) -> list[object]:
    u = line.usage
    review = line.review
    return [
        line.id, "yes" if line.in_period else "carried over", line.resource, line.role,
        line.requester, iso(line.created_at), line.created_via, line.reason,
        line.duration_seconds, line.outcome.value, line.status, iso(line.decided_at),
        line.how.value, line.decided_by(), approvals_text(line), line.workflow or "",
        line.policy_version or "", line.rule or "", "yes" if line.emergency else "",
        review[0] if review else "", review[1] if review else "",
        iso(review[2]) if review else "", line.extends_grant_id or "", line.grant_id or "",
        iso(line.access_start), iso(line.access_end), line.access_end_status or "",
        line.ended_by or "", line.access_seconds, line.period_seconds,
        u.statements if u else "", iso(u.first_used_at) if u else "",
        iso(u.last_used_at) if u else "",
    ]


def render(report: Report, out: BinaryIO, progress: Progress | None = None) -> None:
    """Write the CSV (UTF-8, RFC 4180 quoting, CRLF line ends)."""
    text = io.TextIOWrapper(out, encoding="utf-8", newline="", write_through=True)
    try:
        w = csv.writer(text)
        w.writerow(COLUMNS)
        lines = report.lines()
        for i, line in enumerate(lines, 1):
            w.writerow(row(line))
            if progress and i % 5000 == 0:
                progress("csv", i, len(lines))
        if progress:
            progress("csv", len(lines), len(lines))
        text.flush()
    finally:
        text.detach()  # the caller owns `out`
