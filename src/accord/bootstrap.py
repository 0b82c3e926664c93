"""Wiring a process: settings → engine → schema → policy → app state."""

from __future__ import annotations

import logging
from pathlib import Path

from accord import migrations
from accord.api.deps import AppState
from accord.config import Settings
from accord.db import make_engine, make_sessionmaker, transaction, utcnow
from accord.ledger.events import Actor
from accord.policy import reload as reloader
from accord.policy.store import PolicyStore

log = logging.getLogger("accord")


def build_state(
    settings: Settings,
    *,
    config_path: Path | None = None,
    upgrade: str = "if-empty",
    announce_via: str = "cli",
) -> AppState:
    """Connect, migrate (`always`, `if-empty`, `never`), load and announce the policy."""
    engine = make_engine(settings.database_url.get())
    if upgrade == "always" or (upgrade == "if-empty" and migrations.is_empty(engine)):
        migrations.upgrade(engine)
    elif migrations.current(engine) != migrations.head():
        raise SystemExit(
            "the database schema is not current; run `accord db upgrade` first"
        )
    sessions = make_sessionmaker(engine)
    store = PolicyStore.from_file(config_path or settings.config_path)
    st = AppState(settings=settings, sessions=sessions, policies=store, now=utcnow)
    announce(st, Actor("system", "accord", announce_via))
    return st


def announce(st: AppState, actor: Actor) -> dict[str, object]:
    """Reload the file, record it if it is a new version, and install it."""
    with transaction(st.sessions) as session:
        result = reloader.reload(session, store=st.policies, actor=actor)
    reloader.install_after_commit(st.policies, result)
    if result["changed"]:
        log.info("policy %s loaded: %s", str(result["version"])[:12], result["changes"])
    return result
