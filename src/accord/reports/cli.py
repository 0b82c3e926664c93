"""`accord report access|user|resource`: compliance reports; each is a ledger event.

With ACCORD_TOKEN set (and no --config) they are client commands, like `accord request`:
the server at ACCORD_URL generates the report (an auditor needs only a token). Without it
they are operator commands on the database, like `accord audit export` (ACCORD_DATABASE_URL,
ACCORD_CONFIG)."""

from __future__ import annotations

import getpass
import hashlib
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Annotated
from urllib.parse import quote

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from accord.cli.client import AccordClient, ClientError
from accord.cli.state import load_state
from accord.errors import AccordError
from accord.ledger.events import Actor, Via
from accord.reports import service
from accord.reports.schemas import FORMATS, Kind
from accord.settings import Settings

report_app = typer.Typer(help="Compliance reports with ledger evidence.", no_args_is_help=True)
err = Console(stderr=True, soft_wrap=True)

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="accord.yaml (default: $ACCORD_CONFIG).")
]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="File to write ('-': stdout).")]
FormatOpt = Annotated[
    str | None,
    typer.Option("--format", "-f", help="pdf | csv | json | html (default: from --out's "
                 "suffix, else pdf)."),
]
FromOpt = Annotated[str | None, typer.Option("--from", help="Start: 2026-07-01 or RFC 3339.")]
ToOpt = Annotated[str | None, typer.Option("--to", help="End (exclusive).")]

STAGES = {"requests": "reading requests", "ledger": "counting ledger events",
          "pdf": "writing PDF", "csv": "writing CSV", "json": "writing JSON",
          "html": "writing HTML"}


@contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[str, int, int], None] | None]:
    """A rich progress bar on stderr when it is a terminal; nothing otherwise."""
    if not enabled:
        yield None
        return
    with Progress(TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=err, transient=True) as bar:
        task = bar.add_task("starting", total=None)

        def update(stage: str, done: int, total: int) -> None:
            bar.update(task, description=STAGES.get(stage, stage), completed=done,
                       total=total or None)

        yield update


def _format(fmt: str | None, out: Path) -> str:
    if fmt is None:
        suffix = out.suffix.lower().lstrip(".")
        fmt = suffix if suffix in FORMATS else "pdf"
    if fmt not in FORMATS:
        err.print(f"error: --format must be one of {', '.join(FORMATS)}")
        raise typer.Exit(2)
    return fmt


def _run(kind: Kind, *, out: Path, fmt: str | None, start: str | None, end: str | None,
         config: Path | None, resource: str | None = None, user: str | None = None) -> None:
    settings = Settings.from_env()
    if settings.token is not None and config is None:
        _run_api(kind, settings=settings, out=out, fmt=fmt, start=start, end=end,
                 resource=resource, user=user)
        return
    from accord.reports.generate import generate  # fpdf: only when reporting

    st = load_state(config, upgrade="never", settings=settings)
    chosen = _format(fmt, out)
    to_stdout = str(out) == "-"
    try:
        p = service.params(kind, start=start, end=end, now=st.now(), resource=resource,
                           user=user)
    except AccordError as exc:
        err.print(f"error: --{exc.field}: {exc.detail}" if exc.field else f"error: {exc.detail}",
                  markup=False)
        raise typer.Exit(2) from None
    tmp = out.with_name(out.name + ".partial")
    operator = getpass.getuser()
    try:
        with _progress(err.is_terminal) as progress:
            if to_stdout:
                done = generate(st, p=p, fmt=chosen, out=sys.stdout.buffer,
                                actor=Actor.system(Via.CLI),
                                generated_by=f"operator {operator} (cli)", progress=progress)
                sys.stdout.buffer.flush()
            else:
                with tmp.open("wb") as f:
                    done = generate(st, p=p, fmt=chosen, out=f, actor=Actor.system(Via.CLI),
                                    generated_by=f"operator {operator} (cli)",
                                    progress=progress)
                tmp.replace(out)
    except AccordError as exc:
        tmp.unlink(missing_ok=True)
        err.print(f"error: {exc.detail}", markup=False)
        raise typer.Exit(1) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    r = done.report
    ev = r.evidence
    where = "stdout" if to_stdout else str(out)
    err.print(f"wrote {where}: {chosen}, {done.size} bytes, sha256 {done.sha256}", markup=False)
    events = (f"ledger events {r.ledger.first_index}..{r.ledger.last_index}"
              if r.ledger.first_index is not None else "no ledger events in the period")
    err.print(f"{r.totals.requests} requests in the period, {r.totals.grants} grants overlapping "
              f"it; {events}; checkpoint size {ev.checkpoint_size if ev else 'none'}; recorded "
              f"as report.generated", markup=False)
    failed = [c for c in r.ledger.checks if not c.ok]
    for c in failed:
        err.print(f"warning: {c.name}: tables {c.tables}, ledger {c.ledger}", markup=False)


def _run_api(kind: Kind, *, settings: Settings, out: Path, fmt: str | None,
             start: str | None, end: str | None, resource: str | None,
             user: str | None) -> None:
    """The same report from the server (GET /api/v1/reports/...), streamed to `out`."""
    chosen = _format(fmt, out)
    path = {"access": "/reports/access", "user": f"/reports/user/{quote(user or '', safe='')}",
            "resource": f"/reports/resource/{quote(resource or '', safe='')}"}[kind]
    params = {"format": chosen, **({"from": start} if start else {}),
              **({"to": end} if end else {}),
              **({"resource": resource} if kind == "access" and resource else {})}
    to_stdout = str(out) == "-"
    tmp = out.with_name(out.name + ".partial")
    headers: dict[str, str] = {}
    digest = hashlib.sha256()

    class _Tee:
        def __init__(self, sink: IO[bytes]) -> None:
            self.sink = sink

        def write(self, data: bytes) -> int:
            digest.update(data)
            return self.sink.write(data)

    try:
        with AccordClient(settings) as client:
            if to_stdout:
                size = client.download(path, _Tee(sys.stdout.buffer),
                                       params, headers_out=headers)
                sys.stdout.buffer.flush()
            else:
                with tmp.open("wb") as f:
                    size = client.download(path, _Tee(f), params,
                                           headers_out=headers)
                tmp.replace(out)
    except ClientError as exc:
        tmp.unlink(missing_ok=True)
        err.print(f"error: {exc.detail}", markup=False)
        raise typer.Exit(1) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    sha = digest.hexdigest()
    if headers.get("x-accord-report-sha256", sha) != sha:
        err.print("error: the report's sha256 differs from what the server recorded",
                  markup=False)
        raise typer.Exit(1)
    where = "stdout" if to_stdout else str(out)
    err.print(f"wrote {where}: {chosen}, {size} bytes, sha256 {sha}; generated by "
              f"{settings.url} and recorded there as report.generated", markup=False)


@report_app.command("access")
def access(
    out: OutOpt,
    start: FromOpt = None,
    end: ToOpt = None,
    resource: Annotated[str | None, typer.Option("--resource", help="Only this resource.")]
    = None,
    fmt: FormatOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Who had access to what in [--from, --to), why, who approved and how, with evidence."""

    if not start or not end:
        err.print("error: give the period with --from and --to")
        raise typer.Exit(2)
    _run("access", out=out, fmt=fmt, start=start, end=end, config=config, resource=resource)


@report_app.command("user")
def user(
    name: Annotated[str, typer.Argument(help="The user (as in accord.yaml).")],
    out: OutOpt,
    start: FromOpt = None,
    end: ToOpt = None,
    fmt: FormatOpt = None,
    config: ConfigOpt = None,
) -> None:
    """One person's requests, access and decisions (all time unless --from/--to)."""
    _run("user", out=out, fmt=fmt, start=start, end=end, config=config, user=name)


@report_app.command("resource")
def resource_cmd(
    name: Annotated[str, typer.Argument(help="The resource (as in accord.yaml).")],
    out: OutOpt,
    start: FromOpt = None,
    end: ToOpt = None,
    fmt: FormatOpt = None,
    config: ConfigOpt = None,
) -> None:
    """One resource's requests and access (all time unless --from/--to)."""
    _run("resource", out=out, fmt=fmt, start=start, end=end, config=config, resource=name)
