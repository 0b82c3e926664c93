"""ASGI factory for `accord serve --workers N`: each server process builds its own state.

The parent process migrates, announces the policy and runs the background jobs once;
the HTTP workers only serve (ACCORD_BACKGROUND=0). A worker whose parent is gone (SIGKILL,
the OOM killer picking the parent) stops itself within `PARENT_CHECK` seconds: uvicorn's
workers do not, and orphans would go on serving the listening socket, without the
background jobs, keeping a restarted `accord serve` from binding its port.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path

from fastapi import FastAPI

from accord.api import connections
from accord.api.app import before_serving, create_app
from accord.bootstrap import build_state
from accord.settings import Settings

log = logging.getLogger("accord.api")
PARENT_CHECK = 1.0  # seconds between looks at whether the parent is still there
SERVE_PID = "ACCORD_SERVE_PID"  # set by `accord serve --workers N` for its workers


def watch_parent(every: float = PARENT_CHECK) -> threading.Thread:
    """A daemon thread that SIGTERMs this process (uvicorn then shuts down gracefully)
    once the `accord serve` that started it is gone (it is re-parented: its ppid is no
    longer that process's, which says who it is in ACCORD_SERVE_PID, so a worker that
    was still starting when its parent died notices too)."""
    parent = int(os.environ.get(SERVE_PID, "0") or 0) or os.getppid()

    def run() -> None:
        while os.getppid() == parent:
            threading.Event().wait(every)
        log.warning("the accord serve process %d that started this HTTP worker is gone; "
                    "stopping", parent)
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=run, name="accord-parent-watch", daemon=True)
    thread.start()
    return thread


def create() -> FastAPI:
    settings = Settings.from_env()
    watch_parent()
    connections.configure(header_timeout=settings.header_timeout)  # this worker's deadline
    config = Path(os.environ["ACCORD_CONFIG"]) if "ACCORD_CONFIG" in os.environ else None
    # Announcing is idempotent (one policy_state row lock): after a SIGHUP restart the first
    # worker up records the new version, the others find it recorded.
    st = build_state(settings, config_path=config, upgrade="never")
    app = create_app(st, background=os.environ.get("ACCORD_BACKGROUND", "1") == "1")
    before_serving(st)
    return app
