"""ASGI factory for `accord serve --workers N`: each server process builds its own state.

The parent process migrates, announces the policy and runs the background jobs once;
the HTTP workers only serve (ACCORD_BACKGROUND=0).
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI

from accord.api import connections
from accord.api.app import before_serving, create_app
from accord.bootstrap import build_state
from accord.settings import Settings


def create() -> FastAPI:
    settings = Settings.from_env()
    connections.configure(header_timeout=settings.header_timeout)  # this worker's deadline
    config = Path(os.environ["ACCORD_CONFIG"]) if "ACCORD_CONFIG" in os.environ else None
    # Announcing is idempotent (one policy_state row lock): after a SIGHUP restart the first
    # worker up records the new version, the others find it recorded.
    st = build_state(settings, config_path=config, upgrade="never")
    app = create_app(st, background=os.environ.get("ACCORD_BACKGROUND", "1") == "1")
    before_serving(st)
    return app
