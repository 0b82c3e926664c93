"""`accord directory ...`: people and groups from accord.yaml and the identity provider,
each membership with its source (talks to ACCORD_URL; auditors and admins)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from accord.cli import output
from accord.cli.output import AllOpt, JsonOpt, LimitOpt

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
