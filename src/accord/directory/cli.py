"""`accord directory ...`: people and groups from accord.yaml and the identity provider,
each membership with its source (talks to ACCORD_URL; auditors and admins); and `accord scim
token ...`: the bearer tokens identity providers push to /scim/v2 with (operator commands:
they work on the database directly)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from accord.cli import output
from accord.cli.output import AllOpt, JsonOpt, LimitOpt
from accord.cli.state import load_state
from accord.db import transaction
from accord.directory import tokens
from accord.errors import AccordError
from accord.ledger.events import Actor, Via

out = Console()
err = Console(stderr=True)

scim_app = typer.Typer(help="SCIM 2.0 (/scim/v2), where the identity provider pushes people "
                       "and groups.", no_args_is_help=True)
token_app = typer.Typer(help="Tokens for /scim/v2 (works on the database directly).",
                        no_args_is_help=True)
scim_app.add_typer(token_app, name="token")

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="accord.yaml (default: $ACCORD_CONFIG).")
]
CLI = Actor("system", "accord-cli", Via.CLI)


@token_app.command("issue")
def issue(
    name: Annotated[str, typer.Argument(help="Who pushes with it, e.g. okta or entra.")],
    config: ConfigOpt = None,
) -> None:
    """Issue a token for /scim/v2 and print it once; only its hash is stored. It is valid
    nowhere else (not on /api/v1)."""
    st = load_state(config, upgrade="never")
    try:
        with transaction(st.sessions) as session:
            row, secret = tokens.issue(session, name=name, actor=CLI, now=st.now())
    except AccordError as exc:
        err.print(f"error: {exc.detail}", markup=False)
        raise typer.Exit(1) from None
    off = "" if st.policies.current.loaded.spec.identity.scim else (
        "; SCIM is off until accord.yaml says identity: {scim: true}")
    err.print(f"SCIM token {row.id} for {row.name}{off}; it is shown only this once:",
              markup=False, highlight=False)
    print(secret)


@token_app.command("list")
def list_tokens(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    config: ConfigOpt = None,
) -> None:
    """SCIM tokens (never their secrets)."""
    st = load_state(config, upgrade="never")
    with st.sessions() as session:
        rows = tokens.list_clients(session)
    if as_json:
        print(json.dumps([
            {"id": t.id, "name": t.name, "prefix": t.prefix, "created_at":
             t.created_at.isoformat(), "created_by": t.created_by,
             "revoked_at": t.revoked_at.isoformat() if t.revoked_at else None}
            for t in rows], indent=2))
        return
    if not rows:
        err.print("no SCIM tokens; `accord scim token issue NAME` makes one")
        return
    table = Table("ID", "NAME", "PREFIX", "CREATED", "STATE")
    for t in rows:
        table.add_row(str(t.id), t.name, t.prefix + "…", t.created_at.strftime("%Y-%m-%d %H:%M"),
                      f"revoked {t.revoked_at:%Y-%m-%d %H:%M}" if t.revoked_at else "live")
    out.print(table)


@token_app.command("revoke")
def revoke(
    token_id: Annotated[int, typer.Argument(help="The token's ID (see `accord scim token list`).")],
    config: ConfigOpt = None,
) -> None:
    """Revoke a SCIM token: the provider's next call with it is refused."""
    st = load_state(config, upgrade="never")
    try:
        with transaction(st.sessions) as session:
            row = tokens.revoke(session, client_id=token_id, actor=CLI, now=st.now())
    except AccordError as exc:
        err.print(f"error: {exc.detail}", markup=False)
        raise typer.Exit(1) from None
    out.print(f"SCIM token {row.id} ({row.name}) revoked", markup=False, highlight=False)


directory_app = typer.Typer(
    help="People and groups from accord.yaml and the identity provider (ACCORD_URL).",
    no_args_is_help=True,
)


@directory_app.command("users")
def users(
    source: Annotated[str | None, typer.Option(
        "--source", help="Only people from file, scim or oidc.")] = None,
    inactive: Annotated[bool, typer.Option(
        "--inactive", help="Only people the provider deactivated.")] = False,
    limit: LimitOpt = 100,
    every: AllOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """People by name, with where they come from and whether they are active."""
    params: dict[str, Any] = {"limit": limit}
    if source:
        params["source"] = source
    if inactive:
        params["active"] = "false"
    with output.api() as client:
        page = output.fetch(client, "/directory/users", params, every)
    if as_json:
        output.dump(page)
        return
    if not page["items"]:
        output.say("nobody")
        return
    table = output.new_table("Name", "Source", "Status", "Email", "Manager")
    for p in page["items"]:
        table.add_row(output.cell(p["name"]), p["source"],
                      "active" if p["active"] else "[red]deactivated[/]",
                      output.cell(p["email"]), output.cell(p["manager"]))
    output.console.print(table)
    if page.get("next_cursor"):
        output.say("more: --all, or --limit")


@directory_app.command("groups")
def groups(as_json: JsonOpt = False) -> None:
    """Every group with its source and size."""
    with output.api() as client:
        rows = client.get("/directory/groups")
    if as_json:
        output.dump(rows)
        return
    table = output.new_table("Group", "Source", "Members")
    for g in rows:
        table.add_row(output.cell(g["name"]), g["source"], str(g["members"]))
    output.console.print(table)


@directory_app.command("show")
def show(user: Annotated[str, typer.Argument(help="The person's Accord name.")],
         as_json: JsonOpt = False) -> None:
    """One person: their groups with each one's source, their manager, their live grants."""
    with output.api() as client:
        p = output.as_obj(client.get(f"/directory/users/{user}"))
    if as_json:
        output.dump(p)
        return
    groups = ", ".join(f"{m['group']} ({m['source']})" for m in p["groups"]) or None
    grants = "; ".join(f"#{g['id']} {g['resource']}/{g['role']} until {output.when(g['ends_at'])}"
                       for g in p["grants"]) or None
    rows = [("name", p["name"]), ("source", p["source"]),
            ("status", "active" if p["active"] else "deactivated by the identity provider"),
            ("email", p["email"]), ("manager", p["manager"]), ("groups", groups),
            ("live grants", grants), ("userName", p["user_name"]), ("id", p["id"])]
    output.console.print(output.grid([(k, output.cell(v)) for k, v in rows if v is not None
                                      or k in ("manager", "groups", "live grants")]))
