"""SIGHUP reloads accord.yaml in a running server and records who loaded what."""

from __future__ import annotations

import hashlib
import os
import signal
import time
from pathlib import Path

import httpx

from accord.bootstrap import build_state
from accord.db import transaction
from accord.identity import service as identity
from accord.ledger.events import Actor
from accord.settings import Settings
from tests.conftest import POLICY
from tests.serverproc import Server


def test_sighup_reloads_and_records_the_new_version(tmp_path: Path) -> None:
    config = tmp_path / "accord.yaml"
    config.write_text(POLICY, encoding="utf-8")
    env = {**os.environ, "ACCORD_DATABASE_URL": f"sqlite:///{tmp_path / 'accord.db'}",
           "ACCORD_DATA_DIR": str(tmp_path)}
    st = build_state(Settings.from_env(env), config_path=config, upgrade="always")
    with transaction(st.sessions) as session:
        token = identity.issue(session, policy=st.policies.current, user="dave",
                               actor=Actor.system("cli"), now=st.now())[1]
    st.sessions.kw["bind"].dispose()
    server = Server(env, config, tmp_path / "server.log")
    server.start()
    try:
        new = POLICY.replace("roles: [use]}", "roles: [use, debug]}")
        config.write_text(new, encoding="utf-8")
        version = hashlib.sha256(new.encode()).hexdigest()
        assert server.proc is not None
        os.kill(server.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 30
        seen = None
        while time.monotonic() < deadline:  # another process: poll its health endpoint
            seen = httpx.get(server.url + "/readyz", timeout=5).json()["policy"]
            if seen == version:
                break
            time.sleep(0.05)
        assert seen == version
        events = httpx.get(server.url + "/api/v1/audit/events",
                           params={"type": "policy.loaded"},
                           headers={"Authorization": f"Bearer {token}"}, timeout=5).json()
        last = events["items"][-1]["event"]
        assert last["actor"]["id"] == "sighup"
        assert last["data"]["version"] == version
        assert last["data"]["changes"] == {"resources": {"added": [], "removed": [],
                                                         "changed": ["lab"]}}
    finally:
        server.stop()
