"""What the client commands share: the API client, their options, and their output.

Every client command (`accord request`, `grant`, `alert`, `review`, `session`, `notify`,
`connect`) talks to the server at ACCORD_URL with the token in ACCORD_TOKEN through
`api()`. `--json` prints the API's JSON unchanged; otherwise the output is a readable
table. Failures print `error: <detail>` on stderr and exit with status 1.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from accord.cli.client import AccordClient, ClientError
from accord.durations import span

JSON = dict[str, Any]

# Tests may replace this to point the commands at a stub transport.
client_factory: Callable[[], AccordClient] = AccordClient

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print the raw API JSON (indented) and nothing else.")
]
LimitOpt = Annotated[
    int,
    typer.Option(
        "--limit", "-n", min=1, max=500,
        help="How many to fetch per page (1-500). Without --all only the first page is shown.",
    ),
]
AllOpt = Annotated[
    bool, typer.Option("--all", help="Follow next_cursor and fetch every page, not just the first.")
]


# ------------------------------------------------------------------ plumbing


@contextmanager
def api() -> Iterator[AccordClient]:
    """A client; a ClientError anywhere inside becomes `error: ...` on stderr and exit 1."""
    try:
        with client_factory() as client:
            yield client
    except ClientError as exc:
        err_console.print(f"error: {exc.detail}", markup=False, soft_wrap=True)
        raise typer.Exit(1) from None


def say(message: str) -> None:
    """Print one line as it is (no rich markup), wrapped by the terminal, not by rich."""
    console.print(message, markup=False, soft_wrap=True)


def dump(data: Any) -> None:
    """Print the API's JSON, indented (`--json`)."""
    typer.echo(json.dumps(data, indent=2))


def as_obj(data: Any) -> JSON:
    """The response as a JSON object, or a ClientError saying it is not one."""
    if not isinstance(data, dict):
        raise ClientError(None, "unexpected response from the server: not a JSON object")
    return data


def fetch(client: AccordClient, path: str, params: dict[str, Any], every: bool) -> JSON:
    """The first page, or with `every` all pages merged into one page."""
    pages = client.pages(path, params)
    if not every:
        return next(pages)
    items: list[Any] = []
    for page in pages:
        items.extend(page["items"])
    return {"items": items, "next_cursor": None}


# ------------------------------------------------------------------ formatting


def _parse_time(value: str) -> datetime:
    ts = datetime.fromisoformat(value)
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def when(value: str | None) -> str:
    """A timestamp as `2026-11-27 16:00 UTC`; `-` when absent."""
    if not value:
        return "-"
    try:
        return _parse_time(value).astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    except ValueError:
        return value


def compact_span(seconds: float) -> str:
    """A compact span: 45s, 12m, 1h29m, 3h, 2d5h (two units at most, never rounded up)."""
    return span(timedelta(seconds=max(seconds, 0)))


def age(value: str | None) -> str:
    """How long ago a timestamp was, e.g. `5m`."""
    if not value:
        return "-"
    try:
        then = _parse_time(value)
    except ValueError:
        return value
    return compact_span((datetime.now(UTC) - then).total_seconds())


def age_until(value: str) -> str:
    """How long until a timestamp, e.g. `45m` (`0s` once it passed)."""
    try:
        return compact_span((_parse_time(value) - datetime.now(UTC)).total_seconds())
    except ValueError:
        return value


def until(value: str | None) -> str:
    """A future timestamp with the time left, e.g. `2026-11-27 17:00 UTC (in 45m)`."""
    if not value:
        return "-"
    try:
        left = (_parse_time(value) - datetime.now(UTC)).total_seconds()
    except ValueError:
        return value
    return f"{when(value)} (in {compact_span(left)})" if left > 0 else when(value)


def cell(value: Any) -> Text:
    """A table cell that shows user-supplied text literally (no rich markup)."""
    return Text("-" if value is None or value == "" else str(value))


def new_table(*columns: str) -> Table:
    """An empty table with these column headers, for a list of things."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    for name in columns:
        # Values may fold on a narrow terminal; headers never ("RESOURC/E").
        table.add_column(name, overflow="fold", min_width=len(name))
    return table


def grid(rows: list[tuple[str, Text]]) -> Table:
    """Name/value pairs, one a line, for one thing."""
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in rows:
        table.add_row(key, value)
    return table
