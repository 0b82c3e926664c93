"""A private PostgreSQL server for the cluster tests (tests/cluster/pgserver.py), one per
test process: they stop and start it, which no shared server should suffer."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.pgserver import PgServer, binaries
from tests.conftest import REQUIRE_PG


@pytest.fixture(scope="session")
def pg() -> Iterator[PgServer]:
    if binaries() is None:
        if REQUIRE_PG:
            pytest.fail("PostgreSQL is required (ACCORD_REQUIRE_POSTGRES=1) but its server "
                        "binaries (initdb, pg_ctl) are not installed")
        pytest.skip("no PostgreSQL server binaries to run a private server")
    server = PgServer(Path(tempfile.mkdtemp(prefix="accord-cluster-pg-")))
    try:
        server.start()
        yield server
    finally:
        server.destroy()
