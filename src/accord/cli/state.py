"""Loading the server-side state for operator commands, with policy errors printed plainly."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from accord.api.deps import AppState
from accord.bootstrap import build_state
from accord.config import PolicyError, Settings

err = Console(stderr=True)


def load_state(config: Path | None, *, upgrade: str, settings: Settings | None = None
               ) -> AppState:
    """build_state, exiting 1 with every policy problem listed if accord.yaml is broken."""
    try:
        return build_state(settings or Settings.from_env(), config_path=config, upgrade=upgrade)
    except PolicyError as exc:
        for problem in exc.problems:
            err.print(f"error: {problem}", markup=False)
        raise typer.Exit(1) from None
