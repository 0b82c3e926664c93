"""Loading the server-side state for operator commands, with policy errors printed plainly."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

from accord.errors import AccordError
from accord.settings import Settings
from accord.spec.load import PolicyError

if TYPE_CHECKING:
    from accord.state import AppState

err = Console(stderr=True)


DEMO_DIR = Path(".accord") / "demo"


def _demo_hint() -> str:
    """How to reach the demo's data, when `./scripts/demo` left some here."""
    if (DEMO_DIR / "accord.db").exists():
        return (f"; the demo's data is in {DEMO_DIR}: export ACCORD_DATA_DIR={DEMO_DIR.resolve()} "
                f"ACCORD_CONFIG={(DEMO_DIR / 'accord.yaml').resolve()}")
    return ""


def require_existing(settings: Settings, config: Path | None) -> None:
    """Say what is missing, creating nothing: a config file, a SQLite database file."""
    path = config or settings.config_path
    if not path.exists():
        err.print(f"error: {path}: no such file (give --config or set ACCORD_CONFIG)"
                  f"{_demo_hint()}", markup=False, soft_wrap=True)
        raise typer.Exit(1)
    require_database(settings)


def require_database(settings: Settings) -> None:
    """Say so when the SQLite database file is missing, creating nothing."""
    url = settings.database_url.get()
    if url.startswith("sqlite") and "///" in url:
        db = Path(url.split("///", 1)[1])
        if str(db) not in ("", ":memory:") and not db.exists():
            err.print(f"error: no Accord database at {db} (set ACCORD_DATA_DIR or "
                      f"ACCORD_DATABASE_URL; `accord serve` or `accord db upgrade` creates one)"
                      f"{_demo_hint()}", markup=False, soft_wrap=True)
            raise typer.Exit(1)


def load_state(config: Path | None, *, upgrade: str, settings: Settings | None = None
               ) -> AppState:
    """build_state, exiting 1 with every policy problem listed if accord.yaml is broken.

    Only `upgrade="if-empty"` (`accord serve`) may create a database; other commands say
    what they could not find and create nothing."""
    # Imported here: client commands (most of the CLI) never need the server's modules,
    # and loading them costs a second at every start.
    from accord.bootstrap import build_state

    settings = settings or Settings.from_env()
    if upgrade != "if-empty":
        require_existing(settings, config)
    try:
        return build_state(settings, config_path=config, upgrade=upgrade)
    except PolicyError as exc:
        for problem in exc.problems:
            err.print(f"error: {problem}", markup=False)
        raise typer.Exit(1) from None
    except AccordError as exc:  # its own tests failed (recorded), a group in two sources
        err.print(f"error: {exc.detail}", markup=False, soft_wrap=True)
        raise typer.Exit(1) from None
