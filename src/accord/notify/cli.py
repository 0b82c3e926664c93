"""`accord notify prefs`: your notification channels and delivery mode, over the HTTP API.

A client command: it talks to ACCORD_URL with the token in ACCORD_TOKEN. Without
options it shows the preference; with options it reads the preference, changes what
the options say and puts it back (`PUT /api/v1/me/notifications`). Failures print
`error: <detail>` on stderr and exit with status 1.
"""

from __future__ import annotations

import json
from typing import Annotated, Any
from urllib.parse import quote

import typer

from accord.cli.output import api, as_obj

notify_app = typer.Typer(
    help="Your notifications: channels, and one message per event or a daily digest "
         "(talks to ACCORD_URL).",
    no_args_is_help=True,
)



def parse_channels(value: str) -> list[str] | None:
    """`email,slack` → ["email", "slack"]; `default` → None (every channel); `none` → []."""
    text = value.strip().lower()
    if text == "default":
        return None
    if text in ("", "none"):
        return []
    return [part.strip() for part in text.split(",") if part.strip()]


def _describe(p: dict[str, Any]) -> str:
    available = ", ".join(p.get("available_channels") or []) or "none"
    chosen = p.get("channels")
    if chosen is None:
        channels = f"every channel available ({available})"
    else:
        channels = ", ".join(chosen) or "none (no personal messages)"
    if p.get("mode") == "digest":
        mode = (f"daily digest at {int(p.get('digest_hour') or 0):02d}:00 UTC (requests to "
                "approve and access-ending warnings still come at once)")
    else:
        mode = "immediate (one message per event)"
    lines = [f"user:       {p.get('user')}",
             f"channels:   {channels}",
             f"in use:     {', '.join(p.get('effective_channels') or []) or 'none'}",
             f"mode:       {mode}"]
    if p.get("updated_at"):
        lines.append(f"changed:    {p.get('updated_at')} by {p.get('updated_by')}")
    return "\n".join(lines)


@notify_app.command("prefs")
def prefs(
    channels: Annotated[
        str | None,
        typer.Option("--channels", metavar="LIST",
                     help="Comma-separated channels to use: email, slack (each must be "
                          "configured and have your address). 'default': every channel "
                          "available to you; 'none': no personal messages."),
    ] = None,
    digest: Annotated[
        int | None,
        typer.Option("--digest", metavar="HOUR",
                     help="One daily digest at HOUR:00 UTC (0-23) instead of a message per "
                          "event. Requests for you to approve and warnings that your "
                          "access ends still come at once."),
    ] = None,
    immediate: Annotated[
        bool, typer.Option("--immediate", help="One message per event (the default mode).")
    ] = False,
    user: Annotated[
        str | None,
        typer.Option("--user", help="Another user's preference: admins change it, "
                                    "auditors may read it."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the API's JSON (indented) and nothing else.")
    ] = False,
) -> None:
    """Show your notification preference, or change it with --channels, --digest or --immediate."""
    if digest is not None and immediate:
        raise typer.BadParameter("give --digest HOUR or --immediate, not both")
    path = "/me/notifications" if user is None else f"/users/{quote(user, safe='')}/notifications"
    with api() as client:
        current = as_obj(client.get(path))
        result = current
        if channels is not None or digest is not None or immediate:
            body = {k: current.get(k) for k in ("channels", "mode", "digest_hour")}
            if channels is not None:
                body["channels"] = parse_channels(channels)
            if digest is not None:
                body.update(mode="digest", digest_hour=digest)
            if immediate:
                body.update(mode="immediate", digest_hour=None)
            result = client.call("PUT", path, json=body)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        typer.echo(_describe(result))
