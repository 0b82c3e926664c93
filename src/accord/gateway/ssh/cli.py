"""`accord session play ID`: replay a recorded SSH session in this terminal (ACCORD_URL,
ACCORD_TOKEN), each channel in turn, saying whether its recording verified against the
ledger; `accord ssh-key add`: register a public key for the SSH gateway."""

from __future__ import annotations

import io
import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from accord.cli.output import api
from accord.gateway.ssh.cast import frames, parse


def play(
    session_id: Annotated[str, typer.Argument(help="A recorded SSH session (the request page "
                                                   "and GET /grants/ID/ssh-sessions list them).")],
    channel: Annotated[int | None, typer.Option("--channel", help="Only this channel.")] = None,
    speed: Annotated[float, typer.Option(min=0.01, help="Replay this many times faster.")]
    = 1.0,
    max_idle: Annotated[float, typer.Option(min=0.0, help="Cut pauses to this many seconds.")]
    = 2.0,
    instant: Annotated[bool, typer.Option("--instant", help="Print it all without waiting.")]
    = False,
) -> None:
    """Replay a recorded SSH session (output as it was shown, at its pace)."""
    out = sys.stdout.buffer  # the bytes as they were (a binary file's too)
    with api() as client:
        info = client.get(f"/ssh-sessions/{session_id}")
        channels = [c for c in info["channels"] if channel is None or c["channel"] == channel]
        if not channels:
            raise typer.BadParameter(f"session {session_id} has no channel {channel}")
        for ch in channels:
            buf = io.BytesIO()
            headers: dict[str, str] = {}
            client.download(f"/ssh-sessions/{session_id}/channels/{ch['channel']}/cast", buf,
                            headers_out=headers)
            verified = headers.get("x-accord-verified") == "true"
            what = ch["command"] if ch["command"] else ch["kind"]
            typer.echo(f"── {info['user']} on {info['resource']}, session {info['session']} "
                       f"channel {ch['channel']}: {what} "
                       f"({'verified' if verified else 'NOT VERIFIED'}) ──", err=True)
            for problem in ch["problems"]:
                typer.echo(f"   {problem}", err=True)
            _, events = parse(buf.getvalue())
            for wait, data in frames(events, speed=speed, max_idle=max_idle):
                if wait and not instant:
                    out.flush()
                    time.sleep(wait)
                out.write(data)
            out.flush()
            typer.echo("", err=True)


ssh_key_app = typer.Typer(help="Your public keys for the SSH gateway (ACCORD_URL).",
                          no_args_is_help=True)


@ssh_key_app.command("add")
def add_key(
    path: Annotated[Path, typer.Argument(help="An OpenSSH public key file.")] =
    Path("~/.ssh/id_ed25519.pub"),
    name: Annotated[str, typer.Option(help="A name for it (default: its comment).")] = "",
) -> None:
    """Register a public key: then `ssh -p PORT USER+RESOURCE@GATEWAY` logs in with it, no
    connection token needed (an active grant still is)."""
    text = path.expanduser().read_text(encoding="utf-8").strip()
    with api() as client:
        out = client.post("/ssh-keys", {"public_key": text, "name": name})
    typer.echo(f"registered {out['fingerprint']} ({out['name'] or 'no name'}) for {out['user']}")


@ssh_key_app.command("list")
def list_keys(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Your registered public keys."""
    with api() as client:
        keys = client.get("/ssh-keys")
    if as_json:
        typer.echo(json.dumps(keys, indent=2))
        return
    for k in keys:
        typer.echo(f"{k['id']}\t{k['fingerprint']}\t{k['name']}\t{k['created_at']}")


@ssh_key_app.command("remove")
def remove_key(key_id: Annotated[int, typer.Argument(help="From `accord ssh-key list`.")]
               ) -> None:
    """Remove a registered public key (logins with it stop at once)."""
    with api() as client:
        out = client.call("DELETE", f"/ssh-keys/{key_id}")
    typer.echo(f"removed {out['fingerprint']} of {out['user']}")
