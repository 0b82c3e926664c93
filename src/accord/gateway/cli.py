"""`accord gateway` (run the proxy) and `accord connect RESOURCE` (a token and a psql line)."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import signal
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from accord.cli.client import ClientError

err = Console(stderr=True, highlight=False)
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def gateway(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="accord.yaml (default: $ACCORD_CONFIG).")
    ] = None,
    listen: Annotated[
        str | None, typer.Option(help="HOST:PORT to listen on (default: gateway.listen).")
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Run the PostgreSQL gateway alone: grants checked, every statement audited."""
    from accord.cli.state import load_state
    from accord.gateway.proxy import Gateway, new_loop

    logging.basicConfig(level=log_level.upper(), format=LOG_FORMAT)
    st = load_state(config, upgrade="never")
    spec = st.policies.current.loaded.spec.gateway
    if spec is None:
        err.print("error: accord.yaml has no `gateway:` section", markup=False)
        raise typer.Exit(1)
    where = None
    if listen:
        host, _, port = listen.rpartition(":")
        if not host or not port.isdigit():
            err.print("error: --listen must be HOST:PORT", markup=False)
            raise typer.Exit(1)
        where = (host, int(port))
    gw = Gateway(st, spec, listen=where)
    # The data path allocates small short-lived objects; collecting the startup heap over
    # and over is wasted work in a process that does nothing else.
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    loop = new_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        loop.run_until_complete(gw.serve_forever(stop))
    finally:
        loop.close()


def connect(
    resource: Annotated[str, typer.Argument(help="The resource (its name is the database name).")],
    role: Annotated[
        str | None, typer.Option("--role", "-r", help="Which grant, if you hold several roles.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the API's JSON.")] = False,
) -> None:
    """A short-lived gateway password for your active grant, as a psql command and a DSN."""
    from accord.cli import request as client_commands  # its client_factory, swappable in tests

    try:
        with client_commands.client_factory() as client:
            out = client.post("/connect", {"resource": resource, "role": role})
    except ClientError as exc:
        err.print(f"error: {exc.detail}", markup=False, soft_wrap=True)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps(out, indent=2))
        return
    typer.echo(out["psql"])
    typer.echo("")
    typer.echo(f"DSN:     {out['dsn']}")
    typer.echo(f"grant:   {out['grant_id']} ({out['role']}); connect before "
               f"{out['expires_at']}, the session then lasts as long as the grant")
