"""Loading the server-side state for operator commands, with policy errors printed plainly."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

from accord.config import PolicyError, Settings

if TYPE_CHECKING:
    from accord.api.deps import AppState

err = Console(stderr=True)


def load_state(config: Path | None, *, upgrade: str, settings: Settings | None = None
               ) -> AppState:
    """build_state, exiting 1 with every policy problem listed if accord.yaml is broken."""
    # Imported here: client commands (most of the CLI) never need the server's modules,
    # and loading them costs a second at every start.
    from accord.bootstrap import build_state

    try:
        return build_state(settings or Settings.from_env(), config_path=config, upgrade=upgrade)
    except PolicyError as exc:
        for problem in exc.problems:
            err.print(f"error: {problem}", markup=False)
        raise typer.Exit(1) from None
