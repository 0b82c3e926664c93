"""`accord alert ...`: list, show, acknowledge and resolve alerts (talks to ACCORD_URL)."""

from __future__ import annotations

import enum
from typing import Annotated, Any

import typer

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
from accord.detect.models import AlertStatus, Severity

alert_app = typer.Typer(
    help="Alerts raised by the detectors: list, groups, show, acknowledge, resolve "
         "(ACCORD_URL).",
    no_args_is_help=True,
)
AlertId = Annotated[int, typer.Argument(help="ID of the alert.", min=1)]


class GroupBy(enum.StrEnum):
    rule = "rule"
    user = "user"
    resource = "resource"
    subject = "subject"


_SEVERITY = {"low": "dim", "medium": "yellow", "high": "red", "critical": "bold red"}


def _line(a: dict[str, Any]) -> str:
    return f"alert #{a['id']} [{a['severity']}] {a['status']}: {a['title']}"


@alert_app.command("list")
def list_alerts(
    status: Annotated[AlertStatus | None, typer.Option("--status", "-s")] = None,
    severity: Annotated[Severity | None, typer.Option("--severity")] = None,
    rule: Annotated[str | None, typer.Option("--rule", help="e.g. repeated_denials")] = None,
    user: Annotated[str | None, typer.Option("--user")] = None,
    limit: LimitOpt = 50,
    every: AllOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Alerts, newest first (auditors and admins)."""
    params = {k: v for k, v in {"status": status, "severity": severity, "rule": rule,
                                "user": user, "limit": limit}.items() if v is not None}
    with api() as client:
        page = fetch(client, "/alerts", params, every)
    if as_json:
        dump(page)
        return
    if not page["items"]:
        say("no alerts")
        return
    table = new_table("ID", "Severity", "Status", "Rule", "User", "Opened", "Title")
    for a in page["items"]:
        table.add_row(str(a["id"]), f"[{_SEVERITY.get(a['severity'], '')}]{a['severity']}[/]",
                      a["status"], a["rule"], cell(a["user"]), when(a["opened_at"]),
                      cell(a["title"]))
    console.print(table)


@alert_app.command("groups")
def alert_groups(
    by: Annotated[GroupBy, typer.Option(
        "--by", help="count per rule, or per rule and user, resource or subject")
    ] = GroupBy.rule,
    status: Annotated[AlertStatus | None, typer.Option("--status", "-s")] = None,
    severity: Annotated[Severity | None, typer.Option("--severity")] = None,
    rule: Annotated[str | None, typer.Option("--rule", help="e.g. off_hours")] = None,
    limit: LimitOpt = 50,
    as_json: JsonOpt = False,
) -> None:
    """Alerts counted per rule (and user, resource or subject): many alerts of one kind read
    as one line, the group with the newest alert first (auditors and admins)."""
    params = {k: v for k, v in {"by": by.value, "status": status, "severity": severity,
                                "rule": rule, "limit": limit}.items() if v is not None}
    with api() as client:
        body = as_obj(client.get("/alerts/groups", params=params))
    if as_json:
        dump(body)
        return
    if not body["items"]:
        say("no alerts")
        return
    key = {"user": "User", "resource": "Resource", "subject": "Subject"}.get(by.value)
    table = new_table("Rule", *([key] if key else []), "Alerts", "Severity", "Newest",
                      "Title")
    for g in body["items"]:
        newest = g["newest"]
        table.add_row(g["rule"], *([cell(g[by.value])] if key else []), str(g["count"]),
                      f"[{_SEVERITY.get(g['severity'], '')}]{g['severity']}[/]",
                      f"#{newest['id']} {when(newest['opened_at'])}", cell(newest["title"]))
    console.print(table)


@alert_app.command("show")
def show(alert_id: AlertId, as_json: JsonOpt = False) -> None:
    """One alert with its evidence (ledger indices) and who handled it."""
    with api() as client:
        a = as_obj(client.get(f"/alerts/{alert_id}"))
    if as_json:
        dump(a)
        return
    say(_line(a))
    rows = [("rule", a["rule"]), ("user", a["user"]), ("resource", a["resource"]),
            ("about", a["subject"]), ("evidence", ", ".join(f"#{i}" for i in a["evidence"])),
            ("opened", when(a["opened_at"])),
            ("acknowledged", f"{when(a['acknowledged_at'])} by {a['acknowledged_by']}"
             if a["acknowledged_at"] else None),
            ("resolved", f"{when(a['resolved_at'])} by {a['resolved_by']}"
             if a["resolved_at"] else None), ("note", a["note"] or None)]
    console.print(grid([(k, cell(v)) for k, v in rows if v]))


@alert_app.command("ack")
def acknowledge(
    alert_id: AlertId,
    note: Annotated[str, typer.Option("--reason", "-r", "--note",
                                      help="What you are doing about it.")] = "",
    as_json: JsonOpt = False,
) -> None:
    """Say you are on it (admins)."""
    with api() as client:
        a = as_obj(client.post(f"/alerts/{alert_id}/acknowledge", {"comment": note}))
    dump(a) if as_json else say(_line(a))


@alert_app.command("resolve")
def resolve(
    alert_id: AlertId,
    note: Annotated[str, typer.Option("--reason", "-r", "--note",
                                      help="How it was resolved (required).")],
    as_json: JsonOpt = False,
) -> None:
    """Close an alert with a note (admins). Break-glass alerts close by review."""
    with api() as client:
        a = as_obj(client.post(f"/alerts/{alert_id}/resolve", {"comment": note}))
    dump(a) if as_json else say(_line(a))
