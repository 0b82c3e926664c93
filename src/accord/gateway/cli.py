"""`accord gateway` (run the proxy) and `accord connect RESOURCE` (a token and a psql,
mariadb or ssh line)."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from accord import logs, metrics
from accord.cli.output import api
from accord.cli.state import load_state
from accord.settings import Settings

if TYPE_CHECKING:
    from accord.spec.gateway import GatewaySpec
    from accord.state import AppState

# The proxy (with pglast, its SQL parser) and the prefork machinery are imported inside
# the commands that run them: every other `accord` command starts without them.

err = Console(stderr=True, highlight=False)


def gateway(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="accord.yaml (default: $ACCORD_CONFIG).")
    ] = None,
    listen: Annotated[
        str | None, typer.Option(help="HOST:PORT to listen on (default: gateway.listen).")
    ] = None,
    processes: Annotated[
        int | None, typer.Option(
            min=1, max=64, help="Gateway processes behind the one port, each on a core of its "
                                "own (default: gateway.processes; `auto`, its default, is one "
                                "per core, at most 4, on Linux with PostgreSQL; else 1).")
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    metrics_listen: Annotated[
        str | None, typer.Option(help="HOST:PORT to answer Prometheus scrapes on (/metrics: "
                                 "sessions, statements, refusals of every gateway process; "
                                 "default: none).")
    ] = None,
) -> None:
    """Run the database gateway alone (PostgreSQL, and MySQL when `gateway.mysql` is set):
    grants checked, every statement audited."""
    from accord.cli.serve import parse_listen
    from accord.gateway.prefork import auto_count
    from accord.gateway.protocols import build
    from accord.gateway.server import run

    try:
        settings = Settings.from_env()
        logs.configure(settings.log_format, log_level)
        scrapes = parse_listen(metrics_listen) if metrics_listen else None
    except ValueError as exc:
        err.print(f"error: {exc}", markup=False)
        raise typer.Exit(2) from None
    st = load_state(config, upgrade="never")
    spec = st.policies.current.loaded.spec.gateway
    if spec is None:
        err.print("error: accord.yaml has no `gateway:` section", markup=False)
        raise typer.Exit(1)
    host, port = spec.host_port
    if listen:
        host, _, given = listen.rpartition(":")
        if not host or not given.isdigit():
            err.print("error: --listen must be HOST:PORT", markup=False)
            raise typer.Exit(1)
        host, port = host.strip("[]"), int(given)
    engine = st.sessions.kw["bind"]
    wanted = processes or spec.processes
    count = auto_count(engine.dialect.name) if wanted == "auto" else int(wanted)
    if count > 1:  # each process keeps its values in files there; a scrape sums them
        metrics.enable_multiprocess(metrics.multiprocess_dir(st.settings.data_dir, "gateway",
                                                             port))
    if scrapes is not None:
        metrics.serve_http(*scrapes)
    if count == 1:
        run(build(st, spec, listen=(host, port)))
        return
    if not sys.platform.startswith("linux"):  # the handover needs SOCK_SEQPACKET pairs
        err.print(f"error: {count} gateway processes need Linux; use --processes 1",
                  markup=False)
        engine.dispose()
        raise typer.Exit(1)
    if engine.dialect.name != "postgresql":
        logging.getLogger("accord.gateway").warning(
            "%d gateway processes on a %s Accord database: each one's shipper writes the "
            "ledger, one at a time; several processes are tested on PostgreSQL only",
            count, engine.dialect.name)
    raise typer.Exit(_prefork(st, spec, config, host, port, count, log_level))


def _prefork(st: AppState, spec: GatewaySpec, config: Path | None, host: str, port: int,
             count: int, log_level: str) -> int:
    from accord.gateway import packs, prefork
    from accord.gateway.protocols import listeners as listen_all
    from accord.gateway.server import spool_root
    from accord.gateway.shipper import replay_dead

    try:
        listeners = listen_all(spec, host, port)
    except OSError as exc:
        err.print(f"error: cannot listen on {host}:{port}: {exc.strerror}", markup=False)
        return 1
    root = spool_root(st, spec)
    root.mkdir(parents=True, exist_ok=True, mode=0o700)

    def rescue() -> bool:
        """Ship the spools of dead processes; whether some were still held."""
        held: list[Path] = []
        replay_dead(st.sessions, root, per_event=spec.statements_per_event,
                    max_text=spec.max_statement_bytes, waiting=held,
                    recordings_dir=packs.root(st.settings.data_dir, spec))
        return bool(held)

    rescue()
    st.sessions.kw["bind"].dispose()  # the children have engines of their own
    where = ", ".join("{}:{}".format(*s.getsockname()[:2]) for s in listeners)
    logging.getLogger("accord.gateway").info(
        "Accord gateway listening on %s with %d processes", where, count)
    args = ["--log-level", log_level, *(["--config", str(config)] if config else [])]
    return prefork.run_parent(listeners, count, args, rescue)


def connect(
    resource: Annotated[str, typer.Argument(help="The resource (its name is the database name).")],
    role: Annotated[
        str | None, typer.Option("--role", "-r", help="Which grant, if you hold several roles.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the API's JSON.")] = False,
) -> None:
    """A short-lived gateway password for your active grant, as a psql or mariadb command
    and a DSN; for an MCP resource (kind mcp), the gateway's MCP URL and its bearer token."""
    with api() as client:
        kinds = {r["name"]: r["kind"] for r in client.get("/resources")}
        if kinds.get(resource) == "mcp":
            out = client.post("/mcp/connect", {"resource": resource, "role": role})
            if as_json:
                typer.echo(json.dumps(out, indent=2))
                return
            typer.echo(f"URL:     {out['url']}")
            typer.echo(f"token:   {out['token']}")
            typer.echo(f"grant:   {out['grant_id']} ({out['role']}); send the token as "
                       f"'Authorization: Bearer', valid until {out['expires_at']}")
            return
        out = client.post("/connect", {"resource": resource, "role": role})
    if as_json:
        typer.echo(json.dumps(out, indent=2))
        return
    typer.echo(out.get("command") or out["psql"])
    typer.echo("")
    if out.get("protocol") == "ssh":  # ssh asks for the token as the password
        typer.echo(f"password: {out['token']}")
    else:
        typer.echo(f"DSN:     {out['dsn']}")
    typer.echo(f"grant:   {out['grant_id']} ({out['role']}); connect before "
               f"{out['expires_at']}, the session then lasts as long as the grant")


def exec_request(
    request_id: Annotated[int, typer.Argument(help="A statement request, approved.")],
) -> None:
    """Run an approved statement request's statement once, through the gateway, on your
    active grant, and print its result."""
    import psycopg

    with api() as client:
        req = client.get(f"/requests/{request_id}")
        st = req.get("statement")
        if req.get("kind") != "statement" or not st:
            raise typer.BadParameter(f"request {request_id} is not a statement request")
        if st["param_count"] and st["params"] is None:
            raise typer.BadParameter(
                f"request {request_id}'s parameter values were not recorded "
                "(redact_parameters); run it again from the client that sent it")
        out = client.post("/connect", {"resource": req["resource"], "role": req["role"]})
    try:
        with psycopg.connect(out["dsn"], autocommit=True) as conn:
            if st["params"]:
                cur: psycopg.Cursor[Any] = psycopg.RawCursor(conn)
                cur.execute(st["sql"], st["params"])
            else:
                cur = psycopg.ClientCursor(conn)
                cur.execute(st["sql"])
            if cur.description:
                typer.echo("\t".join(c.name for c in cur.description))
                for row in cur.fetchall():
                    typer.echo("\t".join("" if v is None else str(v) for v in row))
            typer.echo(cur.statusmessage or "")
    except psycopg.Error as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


def child_main(argv: list[str]) -> None:
    """One gateway process: connections come from the parent over --fd."""
    import argparse
    import socket

    from accord.gateway import prefork_msg as msg
    from accord.gateway.protocols import build
    from accord.gateway.server import run

    ap = argparse.ArgumentParser(prog="accord.gateway.cli")
    ap.add_argument("--fd", type=int, required=True)
    ap.add_argument("--index", type=int, required=True)
    ap.add_argument("--config", type=Path)
    ap.add_argument("--log-level", default="info")
    args = ap.parse_args(argv)
    logs.configure(Settings.from_env().log_format, args.log_level)
    inbox = socket.socket(fileno=args.fd)
    st = load_state(args.config, upgrade="never")
    spec = st.policies.current.loaded.spec.gateway
    if spec is None:
        raise SystemExit("accord.yaml has no `gateway:` section")
    gw = build(st, spec, inbox=inbox, index=args.index)
    run(gw, on_ready=lambda: inbox.send(msg.READY))


if __name__ == "__main__":  # a prefork child (`prefork.Parent` starts it)
    child_main(sys.argv[1:])
