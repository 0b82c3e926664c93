"""kill -9 the server while clients append: nothing acknowledged is lost, the log verifies."""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from accord.bootstrap import build_state
from accord.db import make_engine, transaction
from accord.identity import service as identity
from accord.ledger import bundle, checkpoints
from accord.ledger.events import Actor
from accord.ledger.models import LedgerEntry
from accord.ledger.upkeep import integrate_all
from accord.ledger.verify import verify
from accord.settings import Settings
from tests.conftest import POLICY
from tests.serverproc import Server

CLIENTS = 4
ACKS_BEFORE_KILL = 60


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'accord.db'}"
    else:
        engine = request.getfixturevalue("fresh_pg")
        yield engine.url.render_as_string(hide_password=False)


def test_kill_9_while_clients_append(database: str, tmp_path: Path) -> None:
    config = tmp_path / "accord.yaml"
    config.write_text(POLICY, encoding="utf-8")
    env = {**os.environ, "ACCORD_DATABASE_URL": database, "ACCORD_DATA_DIR": str(tmp_path)}
    st = build_state(Settings.from_env(env), config_path=config, upgrade="always")
    with transaction(st.sessions) as session:
        token = identity.issue(session, policy=st.policies.current, user="alice",
                               actor=Actor.system("cli"), now=st.now())[1]
    st.sessions.kw["bind"].dispose()
    server = Server(env, config, tmp_path / "server.log")
    server.start()

    acked: list[int] = []
    lock = threading.Lock()
    enough = threading.Event()

    def client() -> None:
        with httpx.Client(base_url=server.url, timeout=10,
                          headers={"Authorization": f"Bearer {token}"}) as http:
            for _ in range(1000):  # bounded; the kill ends it far earlier
                try:
                    r = http.post("/api/v1/requests", json={
                        "resource": "staging-db", "role": "read", "duration": "1h"})
                except httpx.TransportError:
                    return
                assert r.status_code == 201, r.text
                with lock:
                    acked.append(r.json()["id"])
                    if len(acked) >= ACKS_BEFORE_KILL:
                        enough.set()

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    assert enough.wait(timeout=120), "clients made no progress"
    server.kill()
    for t in threads:
        t.join(timeout=30)

    server.start()  # restart: the worker integrates whatever was pending, then we stop it
    server.stop()
    engine = make_engine(database)
    st = build_state(Settings.from_env(env), config_path=config, upgrade="never")
    if engine.dialect.name == "postgresql":
        integrate_all(st.sessions)
    with st.sessions() as s:
        rows = s.execute(select(LedgerEntry.idx, LedgerEntry.subject)).all()
    indices = sorted(r.idx for r in rows)
    assert None not in indices
    assert indices == list(range(len(indices)))
    subjects = {r.subject for r in rows}
    missing = [rid for rid in acked if f"request:{rid}" not in subjects]
    assert not missing, f"acknowledged requests without their events: {missing}"

    with transaction(st.sessions) as session:
        cp = checkpoints.sign(session, st.ledger, now=st.now(), force=True)
    assert cp is not None
    buf = io.BytesIO()
    with st.sessions() as session:
        bundle.write(session, buf, origin=st.ledger.origin,
                     key=st.ledger.signer.verifier.encode(), exported_at=st.now())
    report = verify(lambda: io.BytesIO(buf.getvalue()), key=st.ledger.signer.verifier)
    assert report.ok, report.problems
    engine.dispose()
    st.sessions.kw["bind"].dispose()
