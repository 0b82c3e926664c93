"""Wiring a process: settings → engine → schema → policy → app state."""

from __future__ import annotations

import logging
from pathlib import Path

from accord import migrations
from accord.db import make_engine, make_sessionmaker, transaction, utcnow
from accord.gateway.postgres.cases import guardrail_case
from accord.ledger import keys
from accord.ledger.checkpoints import LedgerConfig
from accord.ledger.events import Actor
from accord.policy.engine import Policy
from accord.policy.store import PolicyStore
from accord.provisioning.secrets import SecretBox
from accord.requests import policy_tests
from accord.requests import reload as reloader
from accord.settings import Settings
from accord.state import AppState

log = logging.getLogger("accord")
DEFAULT_ORIGIN = "accord.local/ledger"


def build_state(
    settings: Settings,
    *,
    config_path: Path | None = None,
    upgrade: str = "if-empty",
    announce_via: str = "cli",
    announce_policy: bool = True,
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
    store.statements = guardrail_case  # the policy's statement test cases: the gateway's parser
    st = AppState(settings=settings, sessions=sessions, policies=store, now=utcnow,
                  ledger=ledger_config(settings, store.current),
                  secrets=SecretBox.load_or_create(settings.secrets_key_file))
    if announce_policy:
        announce(st, Actor("system", "accord", announce_via))
    return st


def ledger_config(settings: Settings, policy: Policy) -> LedgerConfig:
    """The signing key (created on first start), origin, witness and interval."""
    spec = policy.loaded.spec.ledger
    origin = spec.origin or DEFAULT_ORIGIN
    keys.load_or_create(settings.ledger_key_file, origin.replace(" ", "_"))
    return LedgerConfig(
        origin=origin, key_path=settings.ledger_key_file,
        witness_dir=Path(spec.witness_dir) if spec.witness_dir else None,
        interval=spec.checkpoint_interval,
    )


def announce(st: AppState, actor: Actor) -> dict[str, object]:
    """Reload the file, record it if it is a new version, and install it. A version whose
    own tests fail is refused (recorded; PolicyTestsFailed is raised again)."""
    try:
        with transaction(st.sessions) as session:
            result = reloader.reload(session, store=st.policies, actor=actor)
    except policy_tests.PolicyTestsFailed as exc:
        with transaction(st.sessions) as session:
            policy_tests.record_refusal(session, exc=exc, actor=actor)
        raise
    reloader.install_after_commit(st.policies, result)
    if result["changed"]:
        log.info("policy %s loaded: %s", str(result["version"])[:12], result["changes"])
    return result
