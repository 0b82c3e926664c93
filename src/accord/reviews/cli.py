"""`accord review ...`: access review campaigns over the HTTP API (talks to ACCORD_URL).

list, show, certify, revoke, start, report and definitions. `--json` prints the API's
JSON; failures print `error: <detail>` on stderr and exit 1.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from accord.cli.output import (
    AllOpt,
    JsonOpt,
    LimitOpt,
    api,
    as_obj,
    cell,
    console,
    dump,
    fetch,
    grid,
    new_table,
    say,
    when,
)
from accord.reviews.models import CampaignStatus, EntryStatus

review_app = typer.Typer(
    help="Access reviews: certify or revoke standing and recurring access (ACCORD_URL).",
    no_args_is_help=True,
)
ReviewId = Annotated[int, typer.Argument(help="ID of the review campaign.", min=1)]
EntryIds = Annotated[list[int], typer.Argument(help="ID(s) of the entries to decide.", min=1)]
_STYLE = {"pending": "yellow", "certified": "green", "revoked": "red", "expired": "dim",
          "open": "yellow", "completed": "green"}


def _status(value: str) -> Text:
    return Text(value, style=_STYLE.get(value, ""))


def _line(c: dict[str, Any]) -> str:
    n = c["counts"]
    return (f"review #{c['id']} {c['definition']} {c['status']}: {n['total']} entries, "
            f"{n['pending']} pending, {n['certified']} certified, {n['revoked']} revoked, "
            f"{n['expired']} expired; deadline {when(c['deadline'])}")


@review_app.command("list")
def list_reviews(
    status: Annotated[CampaignStatus | None, typer.Option("--status", "-s")] = None,
    definition: Annotated[str | None, typer.Option("--definition", "-d")] = None,
    limit: LimitOpt = 50,
    every: AllOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Review campaigns, newest first (admins and auditors: all; reviewers: theirs)."""
    params = {k: v for k, v in {"status": status, "definition": definition,
                                "limit": limit}.items() if v is not None}
    with api() as client:
        page = fetch(client, "/reviews", params, every)
    if as_json:
        dump(page)
        return
    if not page["items"]:
        say("no reviews")
        return
    table = new_table("ID", "REVIEW", "STATUS", "DEADLINE", "ENTRIES", "PENDING", "YOURS")
    for c in page["items"]:
        n = c["counts"]
        table.add_row(cell(c["id"]), cell(c["definition"]), _status(c["status"]),
                      cell(when(c["deadline"])), cell(n["total"]), cell(n["pending"]),
                      cell(n["mine"]))
    console.print(table)


@review_app.command("show")
def show(
    review_id: ReviewId,
    status: Annotated[EntryStatus | None, typer.Option("--status", "-s")] = None,
    mine: Annotated[bool, typer.Option("--mine", help="Only entries you review.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """A campaign and its entries, with evidence and decisions."""
    params: dict[str, str | int | None] = {"status": status, "mine": "true" if mine else None}
    with api() as client:
        c = as_obj(client.get(f"/reviews/{review_id}", params))
    if as_json:
        dump(c)
        return
    say(_line(c))
    console.print(grid([
        ("period", cell(f"{when(c['period_start'])} .. {when(c['period_end'])}")),
        ("resources", cell(", ".join(c["resources"]))),
        ("started", cell(f"{when(c['started_at'])} ({c['trigger']}, {c['started_by']})")),
        ("completed", cell(when(c["completed_at"]))),
    ]))
    for e in c["entries"]:  # a few lines each: narrow terminals fold tables badly
        mark = "*" if e["can_decide"] else " "
        console.print(Text(f"\n{mark} entry {e['id']}: {e['user']} {e['resource']}/{e['role']} "
                        f"{e['kind']} ({e['period_grants']} grant(s) in period) ")
                   + _status(e["status"]))
        say(f"    grants {', '.join(str(g) for g in e['grant_ids'])}; requests "
             f"{', '.join(str(r) for r in e['request_ids'])}; evidence "
             f"{', '.join(f'#{i}' for i in e['evidence']) or '-'}; reviewers "
             f"{', '.join(e['reviewers']) or 'nobody'}")
        if e["decided_by"]:
            note = f": {e['note']}" if e["note"] else ""
            say(f"    {e['status']} by {e['decided_by']} via {e['decided_via']} "
                 f"{when(e['decided_at'])}{note}")
    if any(e["can_decide"] for e in c["entries"]):
        say(f"\n* yours to decide: accord review certify|revoke {c['id']} ENTRY --note '...'")


def _decide(verb: str, review_id: int, entry_ids: list[int], note: str, as_json: bool) -> None:
    done = []
    with api() as client:
        for eid in entry_ids:
            e = as_obj(client.post(f"/reviews/{review_id}/entries/{eid}/{verb}",
                                    {"note": note}))
            done.append(e)
            if not as_json:
                extra = (f"; revoked grant(s) {', '.join(str(g) for g in e['revoked_grant_ids'])}"
                         if e["revoked_grant_ids"] else "")
                say(f"entry {e['id']} ({e['user']} {e['resource']}/{e['role']}): "
                     f"{e['status']}{extra}")
    if as_json:
        dump(done)


@review_app.command("certify")
def certify(
    review_id: ReviewId,
    entry_ids: EntryIds,
    note: Annotated[str, typer.Option("--reason", "-r", "--note", "-m", help="Why it stays.")] = "",
    as_json: JsonOpt = False,
) -> None:
    """Keep the access of one or more entries."""
    _decide("certify", review_id, entry_ids, note, as_json)


@review_app.command("revoke")
def revoke(
    review_id: ReviewId,
    entry_ids: EntryIds,
    note: Annotated[str, typer.Option("--reason", "-r", "--note", "-m",
                                      help="Why it goes (required).")],
    as_json: JsonOpt = False,
) -> None:
    """Take the access of one or more entries away (ends their live grants)."""
    _decide("revoke", review_id, entry_ids, note, as_json)


@review_app.command("start")
def start(
    definition: Annotated[str, typer.Argument(help="A review's name in accord.yaml.")],
    as_json: JsonOpt = False,
) -> None:
    """Start a campaign of a review now (admins)."""
    with api() as client:
        c = as_obj(client.post("/reviews", {"definition": definition}))
    dump(c) if as_json else say(_line(c))


@review_app.command("definitions")
def definitions(as_json: JsonOpt = False) -> None:
    """The reviews in accord.yaml and when each next starts (admins and auditors)."""
    with api() as client:
        items = client.get("/reviews/definitions")
    if as_json:
        dump(items)
        return
    table = new_table("REVIEW", "EVERY", "OPEN FOR", "RESOURCES", "REVIEWERS", "NEXT START",
                   "OPEN")
    for d in items:
        table.add_row(cell(d["name"]), cell(d["every"]), cell(d["duration"]),
                      cell(", ".join(d["resources"])), cell(", ".join(d["reviewers"])),
                      cell(when(d["next_start"])), cell(d["open_campaign"]))
    console.print(table)


@review_app.command("report")
def report(
    review_id: ReviewId,
    fmt: Annotated[str, typer.Option("--format", "-f", help="json | csv | html")] = "json",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="File (default: stdout).")]
    = None,
) -> None:
    """The completion report: every entry and its decision, checked against the ledger
    (auditors and admins)."""
    with api() as client:
        if out is None:
            client.download(f"/reviews/{review_id}/report", sys.stdout.buffer,
                            {"format": fmt})
            sys.stdout.buffer.flush()
            return
        partial = out.with_name(out.name + ".partial")
        try:
            with partial.open("wb") as f:
                size = client.download(f"/reviews/{review_id}/report", f, {"format": fmt})
            partial.replace(out)
        finally:
            partial.unlink(missing_ok=True)
    say(f"wrote {out}: {size} bytes")
