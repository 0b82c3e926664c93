"""`accord serve` runs the gateway where it runs the background jobs, and stops it cleanly."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from accord.api.app import create_app
from tests.gateway.conftest import World

pytestmark = pytest.mark.postgres


def test_serve_runs_the_gateway_in_its_lifespan(world: World) -> None:
    world.gateway.stop_thread()  # free the configured port for the app's own gateway
    grant = world.grant("alice", "read")
    token = world.token(grant)
    with TestClient(create_app(world.env.st, background=True)), world.connect(token) as conn:
        assert conn.execute("select count(*) from orders").fetchone() == (100,)
    # Leaving the lifespan stopped the gateway and shipped everything it recorded.
    texts = [s["text"] for s in world.statements(grant["id"])]
    assert texts == ["select count(*) from orders"]
    closed = world.events("gateway.session_closed", grant["id"])
    assert [e["data"]["reason"] for e in closed] == ["client terminated"]
