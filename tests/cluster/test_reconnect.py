"""After PostgreSQL restarts, the first unit of work on a pool of connections it closed
succeeds: the dead connections are noticed at checkout (it used to fail once per process,
a 500 after /readyz had said ready)."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from accord.db import make_engine
from tests.cluster.cluster import sql
from tests.cluster.pgserver import PgServer

pytestmark = pytest.mark.postgres


def test_the_first_query_after_a_restart_succeeds(pg: PgServer) -> None:
    sql(pg.url(), "CREATE DATABASE reconnect")
    engine = make_engine(pg.url("reconnect"), pool_size=3)
    try:
        conns = [engine.connect() for _ in range(3)]  # a pool of three, idle
        for c in conns:
            c.execute(text("SELECT 1"))
        for c in conns:
            c.close()
        pg.stop()
        pg.start()
        for _ in range(4):  # every pooled connection is dead; none of them is handed out
            with engine.connect() as c:
                assert c.execute(text("SELECT 1")).scalar() == 1
    finally:
        engine.dispose()
