"""A campaign's completion report: every entry with its evidence and decision (who, when,
why), the revocations, the expired entries, and the ledger events that back it all.

The report is built from the tables and checked against the ledger: the digest of the
entries recorded in review.started and the digest of the outcomes recorded in
review.completed are recomputed, and each decision names the index of its review.decided
event (and each revocation that of its grant.revoked), so an auditor can verify every line
with an inclusion proof.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime
from html import escape
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from accord.ledger import service as ledger
from accord.ledger.events import EventType, format_time
from accord.ledger.models import LedgerEntry
from accord.reviews import service
from accord.reviews.models import EntryStatus, ReviewCampaign, ReviewEntry

FORMATS = ("json", "csv", "html")
MEDIA_TYPES = {"json": "application/json", "csv": "text/csv; charset=utf-8",
               "html": "text/html; charset=utf-8"}


def _t(value: datetime | None) -> str | None:
    return format_time(value) if value is not None else None


def campaign_dict(camp: ReviewCampaign) -> dict[str, Any]:
    return {"id": camp.id, "definition": camp.definition, "status": camp.status,
            "trigger": camp.trigger, "started_by": camp.started_by,
            "started_at": _t(camp.started_at), "deadline": _t(camp.deadline),
            "completed_at": _t(camp.completed_at),
            "period": {"start": _t(camp.period_start), "end": _t(camp.period_end)},
            "policy_version": camp.policy_version, "spec": dict(camp.spec)}


def build(session: Session, *, camp: ReviewCampaign, now: datetime) -> dict[str, Any]:
    """The report as plain data (the JSON format is exactly this)."""
    rows = list(session.execute(
        select(ReviewEntry).where(ReviewEntry.campaign_id == camp.id)
        .order_by(ReviewEntry.id)).scalars())
    people = service.reviewers_of(session, entry_ids=[e.id for e in rows])
    events = [(int(e.idx or 0), ledger.decode(e)) for e in session.execute(
        ledger.query_events(subject=service.subject(camp.id))).scalars()]
    decided = {ev["data"]["entry_id"]: idx for idx, ev in events
               if ev["type"] == EventType.REVIEW_DECIDED}
    started = next((ev for _i, ev in events if ev["type"] == EventType.REVIEW_STARTED), None)
    completed = next((ev for _i, ev in events if ev["type"] == EventType.REVIEW_COMPLETED),
                     None)
    revoked_ids = sorted(g for e in rows for g in e.revoked_grant_ids)
    revocations: dict[int, int] = {}
    if revoked_ids:
        for subj, idx in session.execute(
                select(LedgerEntry.subject, LedgerEntry.idx)
                .where(LedgerEntry.type == str(EventType.GRANT_REVOKED),
                       LedgerEntry.subject.in_([f"grant:{g}" for g in revoked_ids]),
                       LedgerEntry.idx.is_not(None))):
            revocations[int(subj.split(":", 1)[1])] = int(idx or 0)
    tally = {"entries": len(rows), **{str(s): 0 for s in EntryStatus}}
    for e in rows:
        tally[e.status] += 1
    entries = [{
        "id": e.id, "user": e.user, "resource": e.resource, "role": e.role,
        "kind": "standing" if e.standing else "recurring", "period_grants": e.period_grants,
        "grant_ids": list(e.grant_ids), "request_ids": list(e.request_ids),
        "evidence": list(e.evidence), "reviewers": people.get(e.id, []), "status": e.status,
        "decided_by": e.decided_by, "decided_at": _t(e.decided_at), "via": e.decided_via,
        "note": e.note, "revoked_grant_ids": list(e.revoked_grant_ids),
        "decision_index": decided.get(e.id),
        "revocation_indices": [revocations[g] for g in e.revoked_grant_ids if g in revocations],
    } for e in rows]
    indices = [i for i, _ev in events]
    digest = service.entries_digest(rows)
    outcomes = service.outcomes_digest(rows)
    return {
        "report": "access-review",
        "generated_at": format_time(now),
        "campaign": campaign_dict(camp),
        "summary": tally,
        "entries": entries,
        "revocations": [{"entry_id": e.id, "user": e.user, "resource": e.resource,
                         "role": e.role, "grant_id": g, "by": e.decided_by,
                         "ledger_index": revocations.get(g)}
                        for e in rows for g in e.revoked_grant_ids],
        "expired": [e.id for e in rows if e.status == EntryStatus.EXPIRED],
        "ledger": {
            "first_index": min(indices) if indices else None,
            "last_index": max(indices) if indices else None,
            "events": [{"index": i, "type": ev["type"], "time": ev["time"],
                        "actor": ev["actor"]["id"]} for i, ev in events],
            "entries_sha256": digest,
            "entries_match": started is not None
            and started["data"].get("entries_sha256") == digest,
            "outcomes_sha256": outcomes,
            "outcomes_match": None if completed is None
            else completed["data"].get("outcomes_sha256") == outcomes,
        },
    }


CSV_COLUMNS = ("entry_id", "user", "resource", "role", "kind", "period_grants", "grant_ids",
               "request_ids", "evidence", "reviewers", "status", "decided_by", "decided_at",
               "via", "note", "revoked_grant_ids", "decision_index")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    text = str(value)
    # A spreadsheet runs a cell that starts like a formula: notes are user text.
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def to_csv(data: dict[str, Any]) -> str:
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(CSV_COLUMNS)
    for e in data["entries"]:
        w.writerow([_cell(e["id"] if c == "entry_id" else e[c]) for c in CSV_COLUMNS])
    return out.getvalue()


def to_json(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


COLUMNS = (("id", "Entry"), ("user", "User"), ("resource", "Resource"), ("role", "Role"),
           ("kind", "Kind"), ("grant_ids", "Grants"), ("request_ids", "Requests"),
           ("evidence", "Evidence (grant.activated)"), ("reviewers", "Reviewers"),
           ("status", "Outcome"), ("decided_by", "By"), ("decided_at", "When"),
           ("note", "Note"), ("revoked_grant_ids", "Revoked grants"),
           ("decision_index", "Decision event"))
STYLE = """\
*{box-sizing:border-box}body{font-family:sans-serif;margin:2em;overflow-wrap:anywhere}
table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:.3em .5em;text-align:left;vertical-align:top}
@media (max-width:640px){body{margin:1em}
thead{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0)}
table,tbody,tr,td{display:block;width:100%}
tr{border:1px solid #ccc;border-radius:6px;margin:0 0 .75em;padding:.3em .5em}
td{border:0;padding:.15em 0;display:grid;grid-template-columns:8em 1fr;gap:.5em}
td::before{content:attr(data-label);font-weight:600;color:#555}}"""


def to_html(data: dict[str, Any]) -> str:
    c, s, lg = data["campaign"], data["summary"], data["ledger"]

    def h(value: Any) -> str:
        return escape(_cell(value) if not isinstance(value, str) else value)

    # Each cell names its column (data-label): on a phone each row is a card of labelled
    # lines instead of a table wider than the screen.
    rows = "".join(
        "<tr>" + "".join(f'<td data-label="{head}">{h(e[k])}</td>' for k, head in COLUMNS)
        + "</tr>\n" for e in data["entries"])
    heads = "".join(f"<th>{head}</th>" for _, head in COLUMNS)
    checks = (f"entries digest {'matches' if lg['entries_match'] else 'DOES NOT MATCH'} "
              "review.started; outcomes digest "
              + {None: "not recorded yet (campaign open)", True: "matches review.completed",
                 False: "DOES NOT MATCH review.completed"}[lg["outcomes_match"]])
    expired = ", ".join(f"#{i}" for i in data["expired"]) or "none"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Access review {h(c['definition'])} #{c['id']}</title>
<style>{STYLE}</style>
</head><body>
<h1>Access review {h(c['definition'])} #{c['id']}</h1>
<p>Status: {h(c['status'])}. Started {h(c['started_at'])} ({h(c['trigger'])}, by
{h(c['started_by'])}); deadline {h(c['deadline'])}; completed {h(c['completed_at'] or '-')}.
Period under review: {h(c['period']['start'])} to {h(c['period']['end'])}.
Resources: {h(c['spec'].get('resources', []))}.</p>
<p>{s['entries']} entries: {s['certified']} certified, {s['revoked']} revoked,
{s['expired']} expired (nobody decided before the deadline), {s['pending']} pending.
Expired entries: {h(expired)}.</p>
<p>Ledger events {h(lg['first_index'])} to {h(lg['last_index'])}; {h(checks)}.</p>
<table><thead><tr>{heads}</tr></thead><tbody>
{rows}</tbody></table>
<p>Generated {h(data['generated_at'])}.</p>
</body></html>
"""


def render(data: dict[str, Any], fmt: str) -> str:
    return {"json": to_json, "csv": to_csv, "html": to_html}[fmt](data)
