"""`accord request ...` and `accord grant ...`: access requests and grants over the HTTP API.

Every command talks to the server at ACCORD_URL with the token in ACCORD_TOKEN.
`--json` prints the API's JSON unchanged; otherwise the output is a readable table.
Failures print `error: <detail>` on stderr and exit with status 1.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from accord.cli.client import AccordClient, ClientError
from accord.durations import span
from accord.grants.models import GrantStatus
from accord.requests.models import Status

JSON = dict[str, Any]

request_app = typer.Typer(
    help="Ask for access, decide on requests and end access (talks to ACCORD_URL).",
    no_args_is_help=True,
)
grant_app = typer.Typer(
    help="Look at access grants (talks to ACCORD_URL).",
    no_args_is_help=True,
)

# Tests may replace this to point the commands at a stub transport.
client_factory: Callable[[], AccordClient] = AccordClient

_out = Console(highlight=False)
_err = Console(stderr=True, highlight=False)

_STATUS_STYLE = {
    "pending": "yellow", "approved": "cyan", "active": "green", "denied": "red",
    "cancelled": "dim", "expired": "dim", "revoked": "red", "relinquished": "dim",
}


# The statuses come from the server's own enums, so --status choices cannot drift.


# ------------------------------------------------------------------ options

JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print the raw API JSON (indented) and nothing else.")
]
RequestId = Annotated[int, typer.Argument(help="ID of the access request.", min=1)]
LimitOpt = Annotated[
    int,
    typer.Option(
        "--limit", "-n", min=1, max=500,
        help="How many to fetch per page (1-500). Without --all only the first page is shown.",
    ),
]
AllOpt = Annotated[
    bool, typer.Option("--all", help="Follow next_cursor and fetch every page, not just the first.")
]


def _comment(help_text: str) -> Any:
    # One name for one thing: --reason (-r) says why, on every command; --comment (-c)
    # stays as an alias of it for scripts written before.
    return typer.Option("--reason", "-r", "--comment", "-c", help=help_text)


# ------------------------------------------------------------------ plumbing


@contextmanager
def _api() -> Iterator[AccordClient]:
    """A client; a ClientError anywhere inside becomes `error: ...` on stderr and exit 1."""
    try:
        with client_factory() as client:
            yield client
    except ClientError as exc:
        _err.print(f"error: {exc.detail}", markup=False, soft_wrap=True)
        raise typer.Exit(1) from None


def _say(message: str) -> None:
    _out.print(message, markup=False, soft_wrap=True)


def _dump(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2))


def _as_obj(data: Any) -> JSON:
    if not isinstance(data, dict):
        raise ClientError(None, "unexpected response from the server: not a JSON object")
    return data


def _fetch(client: AccordClient, path: str, params: dict[str, Any], every: bool) -> JSON:
    """The first page, or with `every` all pages merged into one page."""
    pages = client.pages(path, params)
    if not every:
        return next(pages)
    items: list[Any] = []
    for page in pages:
        items.extend(page["items"])
    return {"items": items, "next_cursor": None}


# ------------------------------------------------------------------ formatting


def _parse_time(value: str) -> datetime:
    ts = datetime.fromisoformat(value)
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def _when(value: str | None) -> str:
    """A timestamp as `2026-11-27 16:00 UTC`; `-` when absent."""
    if not value:
        return "-"
    try:
        return _parse_time(value).astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    except ValueError:
        return value


def _span(seconds: float) -> str:
    """A compact span: 45s, 12m, 1h29m, 3h, 2d5h (two units at most, never rounded up)."""
    return span(timedelta(seconds=max(seconds, 0)))


def _age(value: str | None) -> str:
    """How long ago a timestamp was, e.g. `5m`."""
    if not value:
        return "-"
    try:
        then = _parse_time(value)
    except ValueError:
        return value
    return _span((datetime.now(UTC) - then).total_seconds())


def _until(value: str | None) -> str:
    """A future timestamp with the time left, e.g. `2026-11-27 17:00 UTC (in 45m)`."""
    if not value:
        return "-"
    try:
        left = (_parse_time(value) - datetime.now(UTC)).total_seconds()
    except ValueError:
        return value
    return f"{_when(value)} (in {_span(left)})" if left > 0 else _when(value)


def _status(value: str | None) -> Text:
    text = value or "-"
    return Text(text, style=_STATUS_STYLE.get(text, ""))


def _cell(value: Any) -> Text:
    """A table cell that shows user-supplied text literally (no rich markup)."""
    return Text("-" if value is None or value == "" else str(value))


def _table(*columns: str) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for name in columns:
        # Values may fold on a narrow terminal; headers never ("RESOURC/E").
        table.add_column(name, overflow="fold", min_width=len(name))
    return table


def _requests_table(items: list[JSON]) -> Table:
    table = _table("ID", "REQUESTER", "RESOURCE", "ROLE", "DURATION", "STATUS", "AGE", "WORKFLOW")
    for r in items:
        workflow = (r.get("workflow") or {}).get("name")
        table.add_row(
            _cell(r.get("id")), _cell(r.get("requester")), _cell(r.get("resource")),
            _cell(r.get("role")), _cell(r.get("duration")), _status(r.get("status")),
            _cell(_age(r.get("created_at"))), _cell(workflow),
        )
    return table


def _grant_end(g: JSON) -> str:
    if g.get("ended_at"):
        return _when(g["ended_at"])
    return _until(g.get("ends_at"))


def _grants_table(items: list[JSON]) -> Table:
    table = _table("ID", "USER", "RESOURCE", "ROLE", "STATUS", "STARTED", "ENDS/ENDED", "REQUEST",
                   "STATEMENTS", "LAST USED")
    for g in items:
        usage = g.get("usage") or {}
        table.add_row(
            _cell(g.get("id")), _cell(g.get("user")), _cell(g.get("resource")),
            _cell(g.get("role")), _status(g.get("status")), _cell(_when(g.get("starts_at"))),
            _cell(_grant_end(g)), _cell(g.get("request_id")),
            _cell(usage.get("statement_count", 0)), _cell(_when(usage.get("last_used_at"))),
        )
    return table


def _usage_rows(g: JSON) -> list[tuple[str, Text]]:
    """A grant's use through the gateway, for `grant show`."""
    usage = g.get("usage")
    if not usage:
        return [("used", _cell("never through the gateway"))]
    return [
        ("first use", _cell(_when(usage.get("first_used_at")))),
        ("last use", _cell(_when(usage.get("last_used_at")))),
        ("statements", _cell(usage.get("statement_count"))),
        ("refused", _cell(usage.get("violation_count"))),
        ("sessions", _cell(usage.get("session_count"))),
    ]


def _workflow_line(r: JSON) -> str:
    wf = r.get("workflow") or {}
    name = wf.get("name") or "(none matched)"
    version = (wf.get("version") or "")[:12]
    extra = ", ".join(p for p in (f"rule {wf.get('rule')}" if wf.get("rule") else "",
                                  f"policy {version}" if version else "") if p)
    return f"{name} ({extra})" if extra else name


def _grid(rows: list[tuple[str, Text]]) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    for key, value in rows:
        grid.add_row(key, value)
    return grid


def _grant_fields(g: JSON) -> Table:
    ended = None
    if g.get("ended_at"):
        by = f" by {g['ended_by']}" if g.get("ended_by") else ""
        ended = f"{_when(g['ended_at'])}{by}"
    rows = [("id", _cell(g.get("id"))), ("status", _status(g.get("status"))),
            ("started", _cell(_when(g.get("starts_at")))),
            ("ends", _cell(_until(g.get("ends_at"))))]
    if ended:
        rows.append(("ended", _cell(ended)))
    conn = g.get("connection") or {}
    if conn:
        where = f"{conn.get('user', g.get('login'))}@{conn.get('host')}:{conn.get('port')}" \
                f"/{conn.get('database', '')}"
        rows.append(("connect", _cell(where)))
    if g.get("secret_available"):
        rows.append(("password", _cell(f"run `accord grant reveal {g.get('id')}` (shown once)")))
    return _grid(rows)


def _fields(r: JSON) -> Table:
    rows: list[tuple[str, Text]] = [
        ("status", _status(r.get("status"))),
        ("requester", _cell(r.get("requester"))),
        ("resource", _cell(r.get("resource"))),
        ("role", _cell(r.get("role"))),
        ("duration", _cell(r.get("duration"))),
        ("reason", _cell(r.get("reason"))),
        ("created", _cell(f"{_when(r.get('created_at'))} via {r.get('created_via') or '-'}")),
        ("workflow", _cell(_workflow_line(r))),
    ]
    optional = [
        ("pending until", _until(r.get("pending_until")) if r.get("pending_until") else None),
        ("decided", _when(r.get("decided_at")) if r.get("decided_at") else None),
        ("decision", r.get("decision_reason")),
        ("extends grant", r.get("extends_grant_id")),
    ]
    rows += [(k, _cell(v)) for k, v in optional if v is not None]
    return _grid(rows)


def _step_state(r: JSON, step: JSON) -> str:
    if step.get("complete"):
        return "complete"
    if r.get("current_step") == step.get("index"):
        return "current"
    return "waiting" if r.get("status") == "pending" else "-"


def _steps_table(r: JSON) -> Table:
    table = _table("STEP", "NAME", "APPROVERS", "ELIGIBLE", "APPROVALS", "STATE")
    for s in r.get("steps") or []:
        approved = sum(1 for a in s.get("approvals") or [] if a.get("decision") == "approve")
        name = s.get("name") or ""
        if s.get("elevated"):
            name = f"{name} (elevated)".strip()
        table.add_row(
            _cell(int(s.get("index", 0)) + 1), _cell(name),
            _cell(", ".join(s.get("approvers") or [])), _cell(", ".join(s.get("eligible") or [])),
            _cell(f"{approved}/{s.get('min_approvals')}"), _cell(_step_state(r, s)),
        )
    return table


def _approvals_table(r: JSON) -> Table:
    table = _table("STEP", "APPROVER", "DECISION", "VIA", "AT", "COMMENT")
    for s in r.get("steps") or []:
        for a in s.get("approvals") or []:
            table.add_row(
                _cell(int(s.get("index", 0)) + 1), _cell(a.get("approver")),
                _cell(a.get("decision")), _cell(a.get("via")), _cell(_when(a.get("at"))),
                _cell(a.get("comment")),
            )
    return table


def _show(r: JSON) -> None:
    _out.print(Text(f"Request {r.get('id')}", style="bold"))
    _out.print(_fields(r))
    steps = r.get("steps") or []
    if steps:
        _out.print(Text("\nSteps", style="bold"))
        _out.print(_steps_table(r))
    if any(s.get("approvals") for s in steps):
        _out.print(Text("\nDecisions", style="bold"))
        _out.print(_approvals_table(r))
    if r.get("grant"):
        _out.print(Text("\nGrant", style="bold"))
        _out.print(_grant_fields(r["grant"]))


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
        return f"grant {grant.get('id')} ends {_until(grant.get('ends_at'))}"
    if status == "provisioning":
        return (f"grant {grant.get('id')} is being provisioned on the target; access starts "
                f"when that is done")
    if status == "provision_failed":
        return f"grant {grant.get('id')}: provisioning failed and is retried"
    by = f" by {grant['ended_by']}" if grant.get("ended_by") else ""
    return f"grant {grant.get('id')} ended {_when(grant.get('ended_at'))}{by}"


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
        _err.print(f"more {what} exist: use --all to list every page", markup=False)


def _print_list(page: JSON, what: str, table: Callable[[list[JSON]], Table]) -> None:
    items = [i for i in page["items"] if isinstance(i, dict)]
    if not items:
        _say(f"no {what} found")
        return
    _out.print(table(items))
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
    with _api() as client:
        req = _as_obj(client.post("/requests", body))
    if as_json:
        _dump(req)
    else:
        _say(_summary(req))
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
    with _api() as client:
        page = _fetch(client, "/requests", params, every)
    if as_json:
        _dump(page)
    else:
        _print_list(page, "requests", _requests_table)


@request_app.command("show")
def show(request_id: RequestId, as_json: JsonOpt = False) -> None:
    """Show one request: its steps, decisions, grant, decision reason and workflow."""
    with _api() as client:
        req = _as_obj(client.get(f"/requests/{request_id}"))
    if as_json:
        _dump(req)
    else:
        _show(req)


def _act(action: str, request_id: int, comment: str, as_json: bool) -> None:
    with _api() as client:
        req = _as_obj(client.post(f"/requests/{request_id}/{action}", {"comment": comment}))
    if as_json:
        _dump(req)
    else:
        _say(_summary(req))


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
    with _api() as client:
        req = _as_obj(client.post(f"/requests/{request_id}/extend", body))
    if as_json:
        _dump(req)
    else:
        _say(_summary(req))


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
    with _api() as client:
        req = _as_obj(client.post(f"/requests/{request_id}/review",
                                  {"verdict": verdict, "note": note}))
    if as_json:
        _dump(req)
    else:
        _say(f"request #{req['id']} reviewed: {verdict}; now {req['status']}")


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
    with _api() as client:
        page = _fetch(client, "/grants", params, every)
    if as_json:
        _dump(page)
    else:
        _print_list(page, "grants", _grants_table)


@grant_app.command("show")
def show_grant(
    grant_id: Annotated[int, typer.Argument(help="The grant's ID (see `accord grant list`).",
                                            min=1)],
    as_json: JsonOpt = False,
) -> None:
    """Show one grant: who, what, until when, and its use through the gateway."""
    with _api() as client:
        g = _as_obj(client.get(f"/grants/{grant_id}"))
    if as_json:
        _dump(g)
        return
    _out.print(Text(f"Grant {g.get('id')}", style="bold"))
    rows = [("user", _cell(g.get("user"))), ("resource", _cell(g.get("resource"))),
            ("role", _cell(g.get("role"))), ("request", _cell(g.get("request_id")))]
    _out.print(_grid(rows))
    _out.print(_grant_fields(g))
    _out.print(_grid(_usage_rows(g)))


@grant_app.command("reveal")
def reveal(
    grant_id: Annotated[int, typer.Argument(help="The grant's ID (see `accord grant list`).",
                                            min=1)],
    as_json: JsonOpt = False,
) -> None:
    """Print your one-time password for a grant's target; it cannot be shown again."""
    with _api() as client:
        out = _as_obj(client.post(f"/grants/{grant_id}/reveal"))
    if as_json:
        _dump(out)
        return
    conn = out.get("connection") or {}
    print(f"login:    {out.get('login')}")
    print(f"password: {out.get('password')}")
    if conn:
        print(f"connect:  psql 'host={conn.get('host')} port={conn.get('port')} "
              f"dbname={conn.get('database')} user={conn.get('user')}'")
