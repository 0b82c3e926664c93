"""`accord policy replay`: what a candidate policy would change, over the requests recorded.

An operator command: it reads the database directly (ACCORD_DATABASE_URL or
ACCORD_DATA_DIR), like `accord token` and `accord report`, and writes nothing: no policy is
loaded or announced, no key or file is created, its one transaction only reads.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
import yaml
from rich.text import Text

from accord.cli.output import console, say
from accord.cli.state import require_database
from accord.durations import DurationError, parse_duration
from accord.settings import Settings
from accord.spec.load import PolicyError, load_policy_file

if TYPE_CHECKING:
    from accord.requests.replay import Change, Report

EXIT_CHANGED = 0  # a replay that ran reports changes, it does not fail on them
EXIT_BAD_CANDIDATE = 2  # the candidate does not load, or its rules error on recorded requests
SHOWN = 50


def policy_replay(
    candidate: Annotated[Path, typer.Argument(
        help="The candidate accord.yaml (not loaded: only read).", show_default=False)],
    since: Annotated[str, typer.Option(
        "--since", help="The window: requests filed within this long before now (30d, 12h).")
    ] = "30d",
    limit: Annotated[int, typer.Option(
        "--limit", "-n", min=0, help="Changed requests listed (the counts cover all; --json "
                                     "lists all).")] = SHOWN,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Replay recorded requests under a candidate policy: what would change.

    Every request filed in the window is routed again, from the inputs its
    `request.created` event recorded, and those whose outcome, workflow, rule or approvers
    would change are listed, with counts per kind.

    Read-only (it works on the database directly and writes nothing). Exit 2 when the
    candidate does not load (every problem with the file and field) or one of its rules
    cannot be evaluated on some recorded request (the server would fail closed on it); 1
    when the database cannot be read.
    """
    try:
        window = parse_duration(since)
    except DurationError as exc:
        _error(EXIT_BAD_CANDIDATE, f"--since: {exc}")
    try:
        loaded = load_policy_file(candidate)
    except PolicyError as exc:
        raw = _raw(candidate)
        _error(EXIT_BAD_CANDIDATE, *(
            str(p) if not p.path else f"{candidate}: {_named(p.path, raw)}: {p.message}"
            for p in exc.problems))
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        _error(1, str(exc))
    require_database(settings)

    # The database and the routing: only for this command, not at every start.
    from sqlalchemy.exc import SQLAlchemyError

    from accord import migrations
    from accord.db import make_engine, make_sessionmaker, readonly_sessions, utcnow
    from accord.people import snapshot
    from accord.policy.engine import Policy
    from accord.requests.replay import replay

    engine = make_engine(settings.database_url.get())
    try:
        if migrations.current(engine) != migrations.head():
            _error(1, "the database schema is not current; run `accord db upgrade` first")
        until = utcnow()
        with readonly_sessions(make_sessionmaker(engine))() as session:
            try:
                policy = Policy(loaded, snapshot.load(session))
                report = replay(session, policy, since=until - window, until=until)
            finally:
                session.rollback()
    except SQLAlchemyError as exc:
        _error(1, f"cannot read the database: {type(exc).__name__}: "
                  f"{str(exc).splitlines()[0]}")
    finally:
        engine.dispose()
    if as_json:
        typer.echo(json.dumps(report.as_dict(), indent=2))
    else:
        _print(report, limit)
    if report.errors:
        indexes = {w.name: i for i, w in enumerate(loaded.spec.workflows)}
        for e in report.errors:
            field = f"workflows[{indexes.get(e.workflow, '?')}].{e.rule} ({e.workflow})"
            typer.echo(f"error: {candidate}: {field}: could not be evaluated for {e.requests} "
                       f"recorded request(s), first request {e.first_request}: {e.error}; "
                       "the server fails closed on it", err=True)
        raise typer.Exit(EXIT_BAD_CANDIDATE)


def _error(code: int, *lines: str) -> NoReturn:
    for line in lines:
        typer.echo(f"error: {line}", err=True)
    if len(lines) > 1:
        typer.echo(f"{len(lines)} errors", err=True)
    raise typer.Exit(code)


def _raw(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None


def _named(path: str, raw: Any) -> str:
    """A problem's path with the workflow's or resource's name beside its index:
    `workflows[1] (prod).match`."""
    for section in ("workflows", "resources"):
        prefix = f"{section}["
        if path.startswith(prefix) and "]" in path:
            index, rest = path[len(prefix):].split("]", 1)
            try:
                name = str(raw[section][int(index)]["name"])
            except (TypeError, KeyError, IndexError, ValueError):
                return path
            return f"{prefix}{index}] ({name}){rest}"
    return path


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value else "the start"


def _said(side: dict[str, Any]) -> str:
    bits = [x for x in (side.get("workflow"), side.get("rule")) if x]
    text = str(side["outcome"]) + (f" ({', '.join(bits)})" if bits else "")
    if side.get("reason"):
        text += f": {side['reason']}"
    steps = side.get("steps") or []
    if side["outcome"] == "pending" and steps:
        text += ": " + " → ".join(
            "[" + ", ".join(s.get("eligible", s["approvers"])) + "]" for s in steps)
    return text


def _print(report: Report, limit: int) -> None:
    n = report.requests
    say(f"Replayed {n} request{'s' if n != 1 else ''} filed since {_when(report.since)} "
        f"under {report.candidate} (version {report.version[:12]}).")
    counts = ", ".join(f"{k} {v}" for k, v in report.counts.items())
    changed = len(report.changes)
    console.print(Text(f"{changed} would change: {counts}" if changed else
                       "None would change.", style="bold" if changed else "green"))
    if not changed or limit == 0:
        return
    shown: list[Change] = report.changes[:limit]
    for c in shown:
        say("")
        say(f"request {c.request_id}  {_when(c.time)}  {c.requester}  {c.resource}/{c.role}  "
            f"changes: {', '.join(c.kinds)}")
        say(f"  recorded:  {_said(c.recorded)}")
        say(f"  candidate: {_said(c.candidate)}")
    if changed > len(shown):
        say("")
        say(f"... and {changed - len(shown)} more (--limit, or --json for all)")
