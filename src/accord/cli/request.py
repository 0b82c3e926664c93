"""`accord request ...` and `accord grant ...`: access requests and grants over the HTTP API.

Every command talks to the server at ACCORD_URL with the token in ACCORD_TOKEN
(through `accord.cli.output`, which the other client commands share).
`--json` prints the API's JSON unchanged; otherwise the output is a readable table.
Failures print `error: <detail>` on stderr and exit with status 1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from accord.cli.output import (
    JSON,
    AllOpt,
    JsonOpt,
    LimitOpt,
    age,
    age_until,
    api,
    as_obj,
    cell,
    console,
    dump,
    err_console,
    fetch,
    grid,
    new_table,
    say,
    until,
    when,
)
from accord.grants.models import GrantStatus
from accord.requests.models import Status

request_app = typer.Typer(
    help="Ask for access, decide on requests and end access (talks to ACCORD_URL).",
    no_args_is_help=True,
)
grant_app = typer.Typer(
    help="Look at access grants (talks to ACCORD_URL).",
    no_args_is_help=True,
)

_STATUS_STYLE = {
    "pending": "yellow", "approved": "cyan", "active": "green", "denied": "red",
    "cancelled": "dim", "expired": "dim", "revoked": "red", "relinquished": "dim",
}


# The statuses come from the server's own enums, so --status choices cannot drift.


# ------------------------------------------------------------------ options

RequestId = Annotated[int, typer.Argument(help="ID of the access request.", min=1)]


def _comment(help_text: str) -> Any:
    # One name for one thing: --reason (-r) says why, on every command; --comment stays
    # as an alias of it for scripts written before (not -c: that is --config elsewhere).
    return typer.Option("--reason", "-r", "--comment", help=help_text)


# ------------------------------------------------------------------ formatting


def _status(value: str | None) -> Text:
    text = value or "-"
    return Text(text, style=_STATUS_STYLE.get(text, ""))


def _requests_table(items: list[JSON]) -> Table:
    table = new_table("ID", "REQUESTER", "RESOURCE", "ROLE", "DURATION", "STATUS", "AGE",
                      "WORKFLOW")
    for r in items:
        workflow = (r.get("workflow") or {}).get("name")
        table.add_row(
            cell(r.get("id")), cell(r.get("requester")), cell(r.get("resource")),
            cell(r.get("role")), cell(r.get("duration")), _status(r.get("status")),
            cell(age(r.get("created_at"))), cell(workflow),
        )
    return table


def _ago(value: str | None) -> str:
    return "-" if not value else f"{age(value)} ago"


def _grant_end(g: JSON) -> str:
    """Compact, for a list on a narrow terminal (`grant show` has the timestamps)."""
    if g.get("ended_at"):
        return f"ended {_ago(g['ended_at'])}"
    if not g.get("ends_at"):
        return "-"
    return f"in {age_until(g['ends_at'])}"


def _grants_table(items: list[JSON]) -> Table:
    # Fits 80 columns: when it started and the timestamps are in `grant show`.
    table = new_table("ID", "USER", "RESOURCE", "ROLE", "STATUS", "ENDS", "REQUEST", "USED")
    for g in items:
        table.add_row(
            cell(g.get("id")), cell(g.get("user")), cell(g.get("resource")),
            cell(g.get("role")), _status(g.get("status")), cell(_grant_end(g)),
            cell(g.get("request_id")), cell(_used(g.get("usage") or {})),
        )
    return table


def _used(usage: JSON) -> str:
    """Its use through the gateway: `82 statements, 5m ago`, or `-`."""
    count = int(usage.get("statement_count") or 0)
    if not count and not usage.get("last_used_at"):
        return "-"
    said = f"{count} statement{'' if count == 1 else 's'}"
    return f"{said}, {_ago(usage['last_used_at'])}" if usage.get("last_used_at") else said


def _usage_rows(g: JSON) -> list[tuple[str, Text]]:
    """A grant's use through the gateway, for `grant show`."""
    usage = g.get("usage")
    if not usage:
        return [("used", cell("never through the gateway"))]
    return [
        ("first use", cell(when(usage.get("first_used_at")))),
        ("last use", cell(when(usage.get("last_used_at")))),
        ("statements", cell(usage.get("statement_count"))),
        ("refused", cell(usage.get("violation_count"))),
        ("sessions", cell(usage.get("session_count"))),
    ]


def _workflow_line(r: JSON) -> str:
    wf = r.get("workflow") or {}
    name = wf.get("name") or "(none matched)"
    version = (wf.get("version") or "")[:12]
    extra = ", ".join(p for p in (f"rule {wf.get('rule')}" if wf.get("rule") else "",
                                  f"policy {version}" if version else "") if p)
    return f"{name} ({extra})" if extra else name


def _grant_fields(g: JSON) -> Table:
    ended = None
    if g.get("ended_at"):
        by = f" by {g['ended_by']}" if g.get("ended_by") else ""
        ended = f"{when(g['ended_at'])}{by}"
    rows = [("id", cell(g.get("id"))), ("status", _status(g.get("status"))),
            ("started", cell(when(g.get("starts_at")))),
            ("ends", cell(until(g.get("ends_at"))))]
    if ended:
        rows.append(("ended", cell(ended)))
    conn = g.get("connection") or {}
    if conn:
        where = f"{conn.get('user', g.get('login'))}@{conn.get('host')}:{conn.get('port')}" \
                f"/{conn.get('database', '')}"
        rows.append(("connect", cell(where)))
    if g.get("secret_available"):
        rows.append(("password", cell(f"run `accord grant reveal {g.get('id')}` (shown once)")))
    return grid(rows)


def _fields(r: JSON) -> Table:
    rows: list[tuple[str, Text]] = [
        ("status", _status(r.get("status"))),
        ("requester", cell(r.get("requester"))),
        ("resource", cell(r.get("resource"))),
        ("role", cell(r.get("role"))),
        ("duration", cell(r.get("duration"))),
        ("reason", cell(r.get("reason"))),
        ("created", cell(f"{when(r.get('created_at'))} via {r.get('created_via') or '-'}")),
        ("workflow", cell(_workflow_line(r))),
    ]
    optional = [
        ("pending until", until(r.get("pending_until")) if r.get("pending_until") else None),
        ("decided", when(r.get("decided_at")) if r.get("decided_at") else None),
        ("decision", r.get("decision_reason")),
        ("extends grant", r.get("extends_grant_id")),
    ]
    rows += [(k, cell(v)) for k, v in optional if v is not None]
    return grid(rows)


def _step_state(r: JSON, step: JSON) -> str:
    if step.get("complete"):
        return "complete"
    if r.get("current_step") == step.get("index"):
        return "current"
    return "waiting" if r.get("status") == "pending" else "-"


def _steps_table(r: JSON) -> Table:
    table = new_table("STEP", "NAME", "APPROVERS", "ELIGIBLE", "APPROVALS", "STATE")
    for s in r.get("steps") or []:
        approved = sum(1 for a in s.get("approvals") or [] if a.get("decision") == "approve")
        name = s.get("name") or ""
        if s.get("elevated"):
            name = f"{name} (elevated)".strip()
        table.add_row(
            cell(int(s.get("index", 0)) + 1), cell(name),
            cell(", ".join(s.get("approvers") or [])), cell(", ".join(s.get("eligible") or [])),
            cell(f"{approved}/{s.get('min_approvals')}"), cell(_step_state(r, s)),
        )
    return table


def _approvals_table(r: JSON) -> Table:
    table = new_table("STEP", "APPROVER", "DECISION", "VIA", "AT", "COMMENT")
    for s in r.get("steps") or []:
        for a in s.get("approvals") or []:
            table.add_row(
                cell(int(s.get("index", 0)) + 1), cell(a.get("approver")),
                cell(a.get("decision")), cell(a.get("via")), cell(when(a.get("at"))),
                cell(a.get("comment")),
            )
    return table


def _show(r: JSON) -> None:
    console.print(Text(f"Request {r.get('id')}", style="bold"))
    console.print(_fields(r))
    steps = r.get("steps") or []
    if steps:
        console.print(Text("\nSteps", style="bold"))
        console.print(_steps_table(r))
    if any(s.get("approvals") for s in steps):
        console.print(Text("\nDecisions", style="bold"))
        console.print(_approvals_table(r))
    if r.get("grant"):
        console.print(Text("\nGrant", style="bold"))
        console.print(_grant_fields(r["grant"]))


def _next_step(r: JSON) -> str:
    steps = r.get("steps") or []
    index = r.get("current_step")
    if index is None or not 0 <= index < len(steps):
        return "waiting for approval"
    approvers = ", ".join(steps[index].get("approvers") or []) or "-"
    return f"waiting on step {index + 1} of {len(steps)} ({approvers})"


def _grant_line(grant: JSON) -> str:
    status = grant.get("status")
    if status == "active":
        return f"grant {grant.get('id')} ends {until(grant.get('ends_at'))}"
    if status == "provisioning":
        return (f"grant {grant.get('id')} is being provisioned on the target; access starts "
                f"when that is done")
    if status == "provision_failed":
        return f"grant {grant.get('id')}: provisioning failed and is retried"
    by = f" by {grant['ended_by']}" if grant.get("ended_by") else ""
    return f"grant {grant.get('id')} ended {when(grant.get('ended_at'))}{by}"


def _summary(r: JSON) -> str:
    """One line about a request after a command: its status and what happens next."""
    head = (f"request {r.get('id')} ({r.get('requester')}: {r.get('resource')}/{r.get('role')} "
            f"for {r.get('duration')}): {r.get('status')}")
    if r.get("status") == "pending":
        return f"{head}; {_next_step(r)}"
    if r.get("grant"):
        return f"{head}; {_grant_line(r['grant'])}"
    reason = r.get("decision_reason")
    return f"{head}; {reason}" if reason else head


def _more_hint(page: JSON, what: str) -> None:
    if page.get("next_cursor"):
        err_console.print(f"more {what} exist: use --all to list every page", markup=False)


def _print_list(page: JSON, what: str, table: Callable[[list[JSON]], Table]) -> None:
    items = [i for i in page["items"] if isinstance(i, dict)]
    if not items:
        say(f"no {what} found")
        return
    console.print(table(items))
    _more_hint(page, what)


# ------------------------------------------------------------------ requests


@request_app.command("create")
def create(
    resource: Annotated[str, typer.Argument(help="Resource to access, e.g. orders-db.")],
    role: Annotated[str, typer.Argument(help="Role on that resource, e.g. read.")],
    duration: Annotated[
        str,
        typer.Option("--duration", "-d",
                     help="How long you need access: 45m, 1h30m, 2d, 90s or PT1H30M."),
    ],
    reason: Annotated[
        str, typer.Option("--reason", "-r", help="Why you need access (most workflows require it).")
    ] = "",
    emergency: Annotated[
        bool, typer.Option("--emergency", help=(
            "Break the glass: granted at once if you are in a `break_glass` group, raises a "
            "high-severity alert and is reviewed afterwards."))
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Ask for access to a resource for yourself; prints whether it is pending, active or denied.

    Exits 1 when the policy denied it at once (the request is still recorded)."""
    body: JSON = {"resource": resource, "role": role, "duration": duration, "reason": reason}
    if emergency:
        body["emergency"] = True
    with api() as client:
        req = as_obj(client.post("/requests", body))
    if as_json:
        dump(req)
    else:
        say(_summary(req))
    if req.get("status") == "denied":  # filed, and refused at once: a script must know
        raise typer.Exit(1)


@request_app.command("list")
def list_requests(
    status: Annotated[
        Status | None, typer.Option("--status", "-s", help="Only requests in this status.")
    ] = None,
    resource: Annotated[
        str | None, typer.Option("--resource", help="Only requests for this resource.")
    ] = None,
    requester: Annotated[
        str | None, typer.Option("--requester", help="Only requests made by this user.")
    ] = None,
    role: Annotated[str | None, typer.Option("--role", help="Only requests for this role.")] = None,
    awaiting_me: Annotated[
        bool,
        typer.Option("--awaiting-me",
                     help="Only pending requests whose current step you may approve."),
    ] = False,
    limit: LimitOpt = 50,
    every: AllOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """List the access requests you may see, newest first."""
    params: dict[str, Any] = {
        "status": status.value if status else None, "resource": resource,
        "requester": requester, "role": role, "awaiting": "me" if awaiting_me else None,
        "limit": limit,
    }
    with api() as client:
        page = fetch(client, "/requests", params, every)
    if as_json:
        dump(page)
    else:
        _print_list(page, "requests", _requests_table)


@request_app.command("show")
def show(request_id: RequestId, as_json: JsonOpt = False) -> None:
    """Show one request: its steps, decisions, grant, decision reason and workflow."""
    with api() as client:
        req = as_obj(client.get(f"/requests/{request_id}"))
    if as_json:
        dump(req)
    else:
        _show(req)


def _act(action: str, request_id: int, comment: str, as_json: bool) -> None:
    with api() as client:
        req = as_obj(client.post(f"/requests/{request_id}/{action}", {"comment": comment}))
    if as_json:
        dump(req)
    else:
        say(_summary(req))


@request_app.command("approve")
def approve(
    request_id: RequestId,
    comment: Annotated[str, _comment("A comment recorded with your approval.")] = "",
    as_json: JsonOpt = False,
) -> None:
    """Approve the current step of a request (eligible approvers only; never your own)."""
    _act("approve", request_id, comment, as_json)


@request_app.command("deny")
def deny(
    request_id: RequestId,
    comment: Annotated[str, _comment("Why you deny it; recorded with the denial.")] = "",
    as_json: JsonOpt = False,
) -> None:
    """Deny a pending request (eligible approvers of the current step); one denial ends it."""
    _act("deny", request_id, comment, as_json)


@request_app.command("cancel")
def cancel(
    request_id: RequestId,
    comment: Annotated[str, _comment("A comment recorded with the cancellation.")] = "",
    as_json: JsonOpt = False,
) -> None:
    """Withdraw your own request while it is still pending."""
    _act("cancel", request_id, comment, as_json)


@request_app.command("relinquish")
def relinquish(
    request_id: RequestId,
    comment: Annotated[str, _comment("A comment recorded when you give up the access.")] = "",
    as_json: JsonOpt = False,
) -> None:
    """Give up your active access early."""
    _act("relinquish", request_id, comment, as_json)


@request_app.command("revoke")
def revoke(
    request_id: RequestId,
    comment: Annotated[str, _comment("Why you revoke it; recorded with the revocation.")] = "",
    as_json: JsonOpt = False,
) -> None:
    """End approved or active access (approvers of the resource's workflow, admins)."""
    _act("revoke", request_id, comment, as_json)


@request_app.command("extend")
def extend(
    request_id: Annotated[
        int, typer.Argument(help="ID of the request whose active grant you want extended.", min=1)
    ],
    duration: Annotated[
        str,
        typer.Option("--duration", "-d",
                     help="How much longer you need access: 45m, 1h30m, 2d or PT1H30M."),
    ],
    reason: Annotated[
        str, typer.Option("--reason", "-r", help="Why you need more time.")
    ] = "",
    as_json: JsonOpt = False,
) -> None:
    """Ask for more time on your active grant: a new request through the same workflows."""
    body = {"duration": duration, "reason": reason}
    with api() as client:
        req = as_obj(client.post(f"/requests/{request_id}/extend", body))
    if as_json:
        dump(req)
    else:
        say(_summary(req))


# ------------------------------------------------------------------ grants


@request_app.command("review")
def review(
    request_id: RequestId,
    verdict: Annotated[str, typer.Option(
        "--verdict", help="justified, or unjustified (which also ends access still running).")],
    note: Annotated[str, typer.Option("--reason", "-r", "--note", help="What you checked.")],
    as_json: JsonOpt = False,
) -> None:
    """Review a break-glass request after the fact (reviewer groups only)."""
    with api() as client:
        req = as_obj(client.post(f"/requests/{request_id}/review",
                                  {"verdict": verdict, "note": note}))
    if as_json:
        dump(req)
    else:
        say(f"request #{req['id']} reviewed: {verdict}; now {req['status']}")


@grant_app.command("list")
def list_grants(
    status: Annotated[
        GrantStatus | None, typer.Option("--status", "-s", help="Only grants in this status.")
    ] = None,
    resource: Annotated[
        str | None, typer.Option("--resource", help="Only grants on this resource.")
    ] = None,
    user: Annotated[
        str | None, typer.Option("--user", help="Only grants held by this user.")
    ] = None,
    limit: LimitOpt = 50,
    every: AllOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """List the grants you may see: yours and those you approve; admins and auditors see all."""
    params: dict[str, Any] = {
        "status": status.value if status else None, "resource": resource, "user": user,
        "limit": limit,
    }
    with api() as client:
        page = fetch(client, "/grants", params, every)
    if as_json:
        dump(page)
    else:
        _print_list(page, "grants", _grants_table)


@grant_app.command("show")
def show_grant(
    grant_id: Annotated[int, typer.Argument(help="The grant's ID (see `accord grant list`).",
                                            min=1)],
    as_json: JsonOpt = False,
) -> None:
    """Show one grant: who, what, until when, and its use through the gateway."""
    with api() as client:
        g = as_obj(client.get(f"/grants/{grant_id}"))
    if as_json:
        dump(g)
        return
    console.print(Text(f"Grant {g.get('id')}", style="bold"))
    rows = [("user", cell(g.get("user"))), ("resource", cell(g.get("resource"))),
            ("role", cell(g.get("role"))), ("request", cell(g.get("request_id")))]
    console.print(grid(rows))
    console.print(_grant_fields(g))
    console.print(grid(_usage_rows(g)))


@grant_app.command("reveal")
def reveal(
    grant_id: Annotated[int, typer.Argument(help="The grant's ID (see `accord grant list`).",
                                            min=1)],
    as_json: JsonOpt = False,
) -> None:
    """Print your one-time password for a grant's target; it cannot be shown again."""
    with api() as client:
        out = as_obj(client.post(f"/grants/{grant_id}/reveal"))
    if as_json:
        dump(out)
        return
    conn = out.get("connection") or {}
    print(f"login:    {out.get('login')}")
    print(f"password: {out.get('password')}")
    if conn:
        print(f"connect:  psql 'host={conn.get('host')} port={conn.get('port')} "
              f"dbname={conn.get('database')} user={conn.get('user')}'")
