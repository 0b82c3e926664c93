"""`accord worker` outlives its database restarting: it keeps running, and does its jobs
again once the server is back (its expiry sweep ended the process on the first error)."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest

from accord.bootstrap import build_state
from accord.db import transaction
from accord.requests import service as requests
from accord.settings import Settings
from tests.cluster.cluster import Proc, sql, until
from tests.cluster.pgserver import PgServer

pytestmark = pytest.mark.postgres
POLICY = """\
users: [alice]
resources: [{name: lab, roles: [use]}]
workflows: [{name: all, match: 'true', require_reason: false, auto_approve: 'true'}]
"""


def test_a_worker_survives_its_database_restarting(pg: PgServer, tmp_path: Path) -> None:
    base = tmp_path
    sql(pg.url(), "CREATE DATABASE outage")
    config = base / "accord.yaml"
    config.write_text(POLICY)
    env = {**os.environ, "ACCORD_DATABASE_URL": pg.url("outage"), "ACCORD_CONFIG": str(config),
           "ACCORD_DATA_DIR": str(base / "data")}
    st = build_state(Settings.from_env(env), config_path=config, upgrade="always")
    worker = Proc("worker", ["worker"], env, base / "worker.log")
    worker.start()
    try:
        assert until(lambda: bool(sql(pg.url("outage"), "SELECT 1 FROM pg_stat_activity"
                                      " WHERE application_name LIKE 'accord ledger %%'")),
                     60), worker.tail()
        pg.stop()
        try:  # its sweep (every second) and its other loops fail meanwhile
            assert until(lambda: "sweep failed" in worker.tail(100_000) or not worker.alive(),
                         30), worker.tail()
        finally:
            pg.start()
        assert worker.alive(), worker.tail()
        st.sessions.kw["bind"].dispose()  # its connections died with the server
        with transaction(st.sessions) as session:
            req = requests.create(session, policy=st.policies.current,
                                  caller=requests.Caller("alice", "api"), resource="lab",
                                  role="use", duration=timedelta(seconds=1), reason="",
                                  now=st.now())
        expired = f"SELECT 1 FROM grants WHERE id = {req.grant_id} AND status = 'expired'"
        assert until(lambda: bool(sql(pg.url("outage"), expired)), 30), worker.tail()
    finally:
        worker.stop()
        st.sessions.kw["bind"].dispose()
