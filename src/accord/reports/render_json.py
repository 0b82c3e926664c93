"""JSON: the whole report model, with every request, written piece by piece."""

from __future__ import annotations

import json
from typing import Any, BinaryIO

from accord.reports.schemas import AlertLine, Report, RequestLine, iso
from accord.reports.service import Progress


def _alert(a: AlertLine) -> dict[str, Any]:
    return {"id": a.id, "rule": a.rule, "severity": a.severity, "status": a.status,
            "title": a.title, "user": a.user, "resource": a.resource, "subject": a.subject,
            "opened_at": iso(a.opened_at), "evidence": list(a.evidence)}


def line_dict(line: RequestLine) -> dict[str, Any]:
    u = line.usage
    return {
        "id": line.id, "in_period": line.in_period, "resource": line.resource,
        "role": line.role, "requester": line.requester, "created_at": iso(line.created_at),
        "created_via": line.created_via, "reason": line.reason,
        "requested_seconds": line.duration_seconds, "outcome": line.outcome.value,
        "status": line.status, "decided_at": iso(line.decided_at) or None,
        "decided_how": line.how.value, "decided_by": line.decided_by(),
        "decision_reason": line.decision_reason,
        "policy": {"workflow": line.workflow, "version": line.policy_version,
                   "rule": line.rule},
        "approvals": [{"user": a.user, "decision": a.decision, "step": a.step + 1,
                       "via": a.via, "at": iso(a.at), "comment": a.comment}
                      for a in line.approvals],
        "emergency": line.emergency,
        "review": ({"verdict": line.review[0], "by": line.review[1],
                    "at": iso(line.review[2]), "note": line.review[3]}
                   if line.review else None),
        "extends_grant_id": line.extends_grant_id,
        "grant": None if line.grant_id is None else {
            "id": line.grant_id, "start": iso(line.access_start) or None,
            "end": iso(line.access_end) or None, "status": line.access_end_status,
            "ended_by": line.ended_by, "seconds": line.access_seconds,
            "seconds_in_period": line.period_seconds, "in_period": line.access_in_period,
            "usage": None if u is None else {
                "statements": u.statements, "sessions": u.sessions,
                "violations": u.violations, "first_used_at": iso(u.first_used_at) or None,
                "last_used_at": iso(u.last_used_at) or None},
        },
    }


def head(report: Report) -> dict[str, Any]:
    """Everything but the request lines."""
    ev = report.evidence
    lf = report.ledger
    return {
        "title": report.title,
        "parameters": report.params.as_dict(),
        "period": report.period_text,
        "generated_at": iso(report.generated_at),
        "generated_by": report.generated_by,
        "usage_available": report.usage_available,
        "totals": report.totals.as_dict(),
        "resources": [s.tally.as_dict() for s in report.sections],
        "timeline": {"unit": report.timeline_unit,
                     "buckets": [{"label": label, **counts}
                                 for label, counts in report.timeline]},
        "decision_times": dict(report.decision_buckets),
        "alerts": [_alert(a) for s in report.sections for a in s.alerts]
        + [_alert(a) for a in report.other_alerts],
        "decisions_by_user": [
            {"request_id": d.request_id, "requester": d.requester, "resource": d.resource,
             "role": d.role, "decision": d.decision, "step": d.step + 1, "via": d.via,
             "at": iso(d.at), "comment": d.comment} for d in report.decisions_by_user],
        "ledger": {"size": lf.size, "events_in_period": lf.events,
                   "first_index": lf.first_index, "last_index": lf.last_index,
                   "by_type": lf.by_type,
                   "checks": [{"name": c.name, "tables": c.tables, "ledger": c.ledger,
                               "ok": c.ok} for c in lf.checks]},
        "evidence": None if ev is None else {
            "origin": ev.origin, "key": ev.key, "checkpoint_size": ev.checkpoint_size,
            "checkpoint_root": ev.checkpoint_root, "checkpoint": ev.checkpoint_note,
            "signed_at": iso(ev.signed_at), "covers_period": lf.last_index is None
            or ev.checkpoint_size > lf.last_index, "commands": ev.commands()},
    }


def render(report: Report, out: BinaryIO, progress: Progress | None = None) -> None:
    """`{... , "requests": [...]}`: the head, then one request at a time."""
    text = json.dumps(head(report), ensure_ascii=False, indent=1)
    out.write(text[:-2].encode("utf-8"))  # reopen the object after its last member
    out.write(b',\n "requests": [')
    lines = report.lines()
    for i, line in enumerate(lines):
        out.write((("\n  " if i == 0 else ",\n  ")
                   + json.dumps(line_dict(line), ensure_ascii=False)).encode("utf-8"))
        if progress and (i + 1) % 5000 == 0:
            progress("json", i + 1, len(lines))
    out.write(b"\n ]\n}\n")
    if progress:
        progress("json", len(lines), len(lines))
