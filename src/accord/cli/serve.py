"""`accord serve` and `accord worker`."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from sqlalchemy import func, select

from accord import logs, metrics
from accord.cli.state import load_state
from accord.errors import AccordError
from accord.ledger.events import Actor
from accord.requests.models import AccessRequest
from accord.settings import Settings
from accord.spec.load import PolicyError

# The server's own modules (the web app, reports, workers) are imported inside the
# commands that run them: every other `accord` command starts a second sooner.

log = logging.getLogger("accord")
err = Console(stderr=True)

# Seconds a stopping server lets open calls finish; live pages' event streams reconnect.
GRACE = 5
# uvicorn's process manager kills a worker that does not answer its ping within this many
# seconds (its default, 5, killed workers still importing on a loaded 2-core machine, and
# would kill one whose GIL is busy with requests): a worker that is really hung waits a
# little longer to be replaced, one that is only busy is not killed with its requests.
WORKER_HEALTHCHECK = 30


def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="accord.yaml (default: $ACCORD_CONFIG).")
    ] = None,
    demo_mode: Annotated[
        bool, typer.Option("--demo", help="Write a demo policy and data under .accord/demo.")
    ] = False,
    no_worker: Annotated[
        bool, typer.Option("--no-worker", help="Do not run background jobs in this process.")
    ] = False,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    workers: Annotated[
        int, typer.Option(min=1, max=64, help="HTTP server processes (background jobs run once, "
                          "in the parent).")
    ] = 1,
    header_timeout: Annotated[
        float | None, typer.Option(min=0.001, help="Seconds a client has to send a request's "
                                   "headers; then 408 and the connection is closed "
                                   "(env ACCORD_HEADER_TIMEOUT; default 10).")
    ] = None,
    timeout_keep_alive: Annotated[
        int | None, typer.Option(min=1, help="Seconds a kept-alive connection may stay idle "
                                 "between requests (env ACCORD_TIMEOUT_KEEP_ALIVE; default 5).")
    ] = None,
    limit_concurrency: Annotated[
        int | None, typer.Option(min=1, help="Open connections or running requests per "
                                 "server process; past it requests get 503 "
                                 "(env ACCORD_LIMIT_CONCURRENCY; default 1000).")
    ] = None,
) -> None:
    """Run the API (and, unless --no-worker, the background jobs)."""
    import dataclasses

    import uvicorn

    from accord import demo
    from accord.api.app import before_serving, create_app

    try:
        settings = Settings.from_env()
        log_config = logs.configure(settings.log_format, log_level)
        setup = None
        if demo_mode:
            base = settings.data_dir / "demo"
            setup = demo.write_policy(base)
            config = setup.policy
            if "ACCORD_DATABASE_URL" not in os.environ:
                settings = Settings.from_env({**os.environ, "ACCORD_DATA_DIR": str(base)})
    except ValueError as exc:
        err.print(f"error: {exc}", markup=False)
        raise typer.Exit(2) from None
    settings = dataclasses.replace(  # flags win over the environment
        settings,
        header_timeout=settings.header_timeout if header_timeout is None else header_timeout,
        timeout_keep_alive=(settings.timeout_keep_alive if timeout_keep_alive is None
                            else timeout_keep_alive),
        limit_concurrency=(settings.limit_concurrency if limit_concurrency is None
                           else limit_concurrency))
    st = load_state(config, upgrade="if-empty", settings=settings)
    url = f"http://{host}:{port}"
    if setup is not None:
        seeded = demo.seed(st)
        tokens = demo.issue_tokens(st)
        _print_demo(url, setup, tokens, settings.data_dir, _next_request_id(st))
        if seeded is not None and setup.gateway_listen and not no_worker:
            demo.show_gateway_use(st, seeded)  # once the worker provisioned its grant
    if not demo_mode:
        if settings.log_format == "json":  # every line a JSON object
            log.info("Accord listening on %s (API docs: %s/docs)", url, url)
        else:
            err.print(f"Accord listening on {url} (API docs: {url}/docs)")
    limits = {**_http_limits(settings), "log_config": log_config}
    if workers > 1:
        _serve_processes(st, config, host, port, workers, log_level, limits,
                         background=not no_worker)
        return
    _install_sighup(st)
    app = create_app(st, background=not no_worker)
    before_serving(st)
    uvicorn.run(app, host=host, port=port, log_level=log_level.lower(), access_log=False,
                timeout_graceful_shutdown=GRACE, **limits)


def _http_limits(settings: Settings) -> dict[str, Any]:
    """uvicorn's settings against slow and idle clients (docs/api.md, "Connections")."""
    from accord.api import connections

    protocol = connections.configure(header_timeout=settings.header_timeout)
    _fit_file_limit(settings.limit_concurrency)
    return {"http": protocol, "timeout_keep_alive": settings.timeout_keep_alive,
            "limit_concurrency": settings.limit_concurrency}


def _fit_file_limit(connections: int, spare: int = 256) -> None:
    """Raise the soft open-files limit (toward the hard one) so that `connections` sockets
    plus `spare` (database pool, logs, spool files) fit: uvicorn should answer 503 at its
    limit before accept() fails for want of descriptors."""
    try:
        import resource
    except ImportError:  # not on Windows
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = connections + spare
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        if new < want:
            log.warning("open-files limit %d is below --limit-concurrency %d + %d spare: "
                        "raise it (ulimit -n) or lower the limit", new, connections, spare)


def _serve_processes(st: Any, config: Path | None, host: str, port: int, workers: int,
                     log_level: str, limits: dict[str, Any], *, background: bool) -> None:
    """uvicorn's process manager with N HTTP workers; the background jobs and the gateway
    run here, once (not in every HTTP worker)."""
    import uvicorn

    from accord.api.app import before_serving, start_background

    os.environ["ACCORD_CONFIG"] = str((config or st.settings.config_path).resolve())
    os.environ["ACCORD_DATABASE_URL"] = st.settings.database_url.get()
    os.environ["ACCORD_DATA_DIR"] = str(st.settings.data_dir)
    os.environ["ACCORD_BACKGROUND"] = "0"
    # Each worker sets its header deadline from this (accord.api.asgi).
    os.environ["ACCORD_HEADER_TIMEOUT"] = str(st.settings.header_timeout)
    # Each scrape lands on one worker: every process (the workers, and this one's jobs and
    # gateway) keeps its values in files there, and a scrape sums them.
    metrics.enable_multiprocess(metrics.multiprocess_dir(st.settings.data_dir, "serve", port))
    stop = start_background(st) if background else None
    before_serving(st)
    try:
        # SIGHUP makes uvicorn's manager restart the workers, which re-read accord.yaml.
        uvicorn.run("accord.api.asgi:create", factory=True, host=host, port=port,
                    timeout_graceful_shutdown=GRACE,
                    timeout_worker_healthcheck=WORKER_HEALTHCHECK,
                    workers=workers, log_level=log_level.lower(), access_log=False, **limits)
    finally:
        if stop is not None:
            stop()


def _next_request_id(st: Any) -> int:
    with st.sessions() as session:
        return int(session.execute(select(func.max(AccessRequest.id))).scalar_one() or 0) + 1


def _print_demo(url: str, setup: Any, tokens: dict[str, str], data_dir: Path, next_id: int
                ) -> None:
    # Plain lines, not a table: tokens must survive narrow terminals and copy-paste whole.
    roles = {"alice": "engineer", "bob": "lead (approver)", "carol": "dba, admin",
             "dave": "auditor", "erin": "engineer, dba, billing owner",
             "frank": "admin, billing owner", "gina": "lead, admin"}
    config = setup.policy
    lines = [
        "",
        f"Accord demo: {url}   (API docs: {url}/docs)",
        f"Policy file: {config}",
        f"Open {url} and pick a demo user to sign in (alice asks, bob approves, dave audits).",
        "Demo logins (API tokens, new on every start):",
        *[f"  {user:<6} {roles.get(user, ''):<21} {token}" for user, token in tokens.items()],
        "",
        "Try, in another shell (client commands talk to the server as alice):",
        "  source .venv/bin/activate",
        f"  export ACCORD_URL={url} ACCORD_TOKEN={tokens['alice']}",
        "  accord request create orders-db read --duration 1h --reason 'INC-1: look at orders'",
        "  accord request list",
    ]
    if setup.gateway_listen:
        host, port = setup.gateway_listen.rsplit(":", 1)
        lines += [
            f"The PostgreSQL gateway listens on {setup.gateway_listen}; {setup.note}",
            "Approve that request as bob, then as carol (its two steps), and connect:",
            f"  ACCORD_TOKEN={tokens['bob']} accord request approve {next_id} --reason ok",
            f"  ACCORD_TOKEN={tokens['carol']} accord request approve {next_id} --reason ok",
            "  accord connect orders-db     # prints a psql line and a DSN with a token:",
            f"  PGPASSWORD='acg_…' psql 'host={host} port={port} dbname=orders-db user=alice "
            "sslmode=disable'",
        ]
    else:
        lines.append(setup.note)
    lines += [
        "Operator commands (accord token, audit key, report, ...) read the demo's data:",
        f"  export ACCORD_DATA_DIR={data_dir.resolve()} ACCORD_CONFIG={config.resolve()}",
        "",
    ]
    sys.stderr.write("\n".join(lines) + "\n")
    sys.stderr.flush()


def _install_sighup(st: Any) -> None:
    from accord.bootstrap import announce

    def handler(_signum: int, _frame: Any) -> None:
        def run() -> None:
            try:
                result = announce(st, Actor("system", "sighup", "cli"))
                log.info("reloaded policy %s (changed: %s)", str(result["version"])[:12],
                         result["changed"])
            except (AccordError, PolicyError) as exc:
                log.error("reload refused, running policy unchanged: %s", exc)

        threading.Thread(target=run, name="accord-reload", daemon=True).start()

    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, handler)


def worker(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="accord.yaml (default: $ACCORD_CONFIG).")
    ] = None,
    interval: Annotated[float, typer.Option(help="Seconds between passes.")] = 1.0,
    once: Annotated[bool, typer.Option("--once", help="Run one pass and exit.")] = False,
    metrics_listen: Annotated[
        str | None, typer.Option(help="HOST:PORT to answer Prometheus scrapes on "
                                 "(/metrics: notifications, provisioning; default: none).")
    ] = None,
) -> None:
    """Run background jobs until stopped: expiries, ledger integration and checkpoints."""
    from accord.ledger.upkeep import catch_up, sign_if_due
    from accord.worker.integrity import monitor_for
    from accord.worker.job_runner import JobRunner
    from accord.worker.ledger_jobs import LedgerWorker
    from accord.worker.sweeper import sweep_once

    try:
        logs.configure(Settings.from_env().log_format, "info")
        where = parse_listen(metrics_listen) if metrics_listen else None
    except ValueError as exc:
        err.print(f"error: {exc}", markup=False)
        raise typer.Exit(2) from None
    st = load_state(config, upgrade="never")
    if where is not None:
        metrics.serve_http(*where)
    if once:
        n = sweep_once(st.sessions, st.now())
        n_ledger = catch_up(st.sessions)
        sign_if_due(st.sessions, st.ledger, st.now())
        log.info("recorded %d expiries, integrated %d ledger events", n, n_ledger)
        return
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    ledger = LedgerWorker(st.sessions, st.ledger, st.now,
                          st.policies.current.loaded.spec.ledger.sinks)
    runner = JobRunner(st.sessions, st.policies, st.connectors, st.secrets, st.now)
    monitor = monitor_for(st.sessions, st.ledger, st.now,
                          st.policies.current.loaded.spec.ledger.integrity)
    ledger.start()
    runner.start()
    if monitor is not None:
        monitor.start()
    try:
        while not stop.is_set():
            n = sweep_once(st.sessions, st.now())
            if n:
                log.info("recorded %d expiries", n)
            stop.wait(interval)
    finally:
        if monitor is not None:
            monitor.stop()
        runner.stop()
        ledger.stop()


def parse_listen(value: str) -> tuple[str, int]:
    """HOST:PORT (an IPv6 host in brackets) as (host, port); ValueError if it is not."""
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, not {value!r}")
    return host.strip("[]"), int(port)
