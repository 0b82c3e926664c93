"""`accord session ...`: list and end browser sessions (admins; talks to ACCORD_URL)."""

from __future__ import annotations

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
    new_table,
    say,
    when,
)

session_app = typer.Typer(
    help="Browser sessions of the web dashboard: list, end (admins); recorded SSH sessions: "
         "play (ACCORD_URL).",
    no_args_is_help=True,
)
SessionId = Annotated[int, typer.Argument(help="ID of the session (see `accord session list`).",
                                          min=1)]
_METHOD = {"token": "API token", "oidc": "single sign-on", "local": "demo picker"}


def _line(s: dict[str, Any]) -> str:
    return f"session #{s['id']} of {s['user']} ({s['method']}): {s['state']}"


@session_app.command("list")
def list_sessions(
    user: Annotated[str | None, typer.Option("--user", help="Only this user's.")] = None,
    ended: Annotated[bool, typer.Option("--ended", help="Include ended and expired ones.")]
    = False,
    limit: LimitOpt = 50,
    every: AllOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Web sessions, newest first: the live ones unless --ended (admins). Never cookies."""
    params: dict[str, Any] = {"user": user, "limit": limit}
    if ended:
        params["include_ended"] = "true"
    with api() as client:
        page = fetch(client, "/sessions", params, every)
    if as_json:
        dump(page)
        return
    if not page["items"]:
        say("no sessions")
        return
    table = new_table("ID", "User", "Signed in with", "Created", "Expires", "State")
    for s in page["items"]:
        how = _METHOD.get(s["method"], s["method"])
        if s["token_id"] is not None:
            how += f" #{s['token_id']}"
        state = f"{s['state']} {when(s['ended_at'])}" if s["ended_at"] else s["state"]
        table.add_row(str(s["id"]), cell(s["user"]), how, when(s["created_at"]),
                      when(s["expires_at"]), state)
    console.print(table)


@session_app.command("revoke")
def revoke(session_id: SessionId, as_json: JsonOpt = False) -> None:
    """End a session now: that browser is signed out at its next page (admins)."""
    with api() as client:
        s = as_obj(client.call("DELETE", f"/sessions/{session_id}"))
    dump(s) if as_json else say(_line(s))
