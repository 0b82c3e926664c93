"""`accord serve` runs the gateway where it runs the background jobs, and stops it cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from accord.api.app import create_app
from tests.gateway.conftest import DSN_ENV, World, free_port, policy_text
from tests.gateway.test_crash import ACCORD, _wait_port

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


def test_serve_with_several_http_workers_runs_one_gateway(world: World, tmp_path: Path) -> None:
    """`accord serve --workers 2`: the HTTP workers are uvicorn's processes; the gateway runs
    once, in the parent beside the background jobs, and SIGTERM ships what it recorded."""
    gw_port, http_port = free_port(), free_port()
    config = tmp_path / "accord.yaml"
    config.write_text(policy_text(world.resource, world.database, port=gw_port),
                      encoding="utf-8")
    env = {**os.environ, "ACCORD_DATA_DIR": str(tmp_path / "data"), DSN_ENV: world.target_dsn,
           "ACCORD_DATABASE_URL": world.engine.url.render_as_string(False).replace(
               "+psycopg", "")}
    log = tmp_path / "serve.log"
    grant = world.grant("alice", "read")
    token = world.token(grant)
    with log.open("wb") as out:
        proc = subprocess.Popen([ACCORD, "serve", "--workers", "2", "--port", str(http_port),
                                 "--config", str(config), "--log-level", "warning"],
                                env=env, stdout=out, stderr=out)
    try:
        _wait_port(gw_port, proc, log)
        _wait_port(http_port, proc, log)
        with world.connect(token, port=gw_port) as conn:
            assert conn.execute("select count(*) from orders").fetchone() == (100,)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert [s["text"] for s in world.statements(grant["id"])] == ["select count(*) from orders"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_serve_stops_cleanly_when_its_whole_process_group_is_signalled(
        world: World, tmp_path: Path, sig: signal.Signals) -> None:
    """Ctrl-C in a terminal (SIGINT) or an init system (SIGTERM) signals every process of
    the group, the gateway's audit shipper too. The shipper leaves stopping to the server,
    so it ships what was recorded; nothing hangs, nothing is left in the spool, and no
    multiprocessing semaphore is left for Python's resource tracker to warn about."""
    gw_port, http_port = free_port(), free_port()
    config = tmp_path / "accord.yaml"
    config.write_text(policy_text(world.resource, world.database, port=gw_port),
                      encoding="utf-8")
    data = tmp_path / "data"
    env = {**os.environ, "ACCORD_DATA_DIR": str(data), DSN_ENV: world.target_dsn,
           "ACCORD_DATABASE_URL": world.engine.url.render_as_string(False).replace(
               "+psycopg", "")}
    log = tmp_path / "serve.log"
    grant = world.grant("alice", "read")
    token = world.token(grant)
    with log.open("wb") as out:
        proc = subprocess.Popen([ACCORD, "serve", "--port", str(http_port), "--config",
                                 str(config), "--log-level", "warning"],
                                env=env, stdout=out, stderr=out, start_new_session=True)
    try:
        _wait_port(gw_port, proc, log)
        with world.connect(token, port=gw_port) as conn:
            assert conn.execute("select count(*) from orders").fetchone() == (100,)
        os.killpg(proc.pid, sig)  # the whole group, as a terminal or systemd does
        # After its graceful shutdown uvicorn raises the signal it caught again, so SIGTERM
        # ends the process as SIGTERM would (SIGINT's KeyboardInterrupt ends it quietly).
        assert proc.wait(timeout=60) in (0, -sig), log.read_text()
        # Every process of the group has gone (the resource tracker warns as it exits).
        deadline = time.monotonic() + 30
        while _group_alive(proc.pid):  # other processes: nothing to await but their exit
            assert time.monotonic() < deadline, "a process of the group outlived the server"
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    text = log.read_text()
    assert "leaked semaphore" not in text, text
    assert "Traceback" not in text and "did not finish" not in text, text
    assert not any((data / "gateway-spool").iterdir()), "the spool was not shipped"
    assert [s["text"] for s in world.statements(grant["id"])] == ["select count(*) from orders"]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
