"""A real `accord worker` SIGKILLed while it holds a job: another worker finishes the job
within seconds (the dead worker's lease is short and nobody renews it any more)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, select

from accord.bootstrap import build_state
from accord.db import transaction
from accord.grants.models import Grant, GrantStatus
from accord.jobs.models import Job
from accord.requests import service as requests
from accord.settings import Settings

pytestmark = pytest.mark.postgres
ACCORD = str(Path(sys.executable).parent / "accord")
POLICY = """\
users: [alice]
groups: {{engineers: [alice]}}
resources:
  - name: saas
    roles: [viewer]
    reconcile: "off"
    provision: {{type: webhook, url: "{url}", secret_env: ACCORD_TEST_HOOK_SECRET}}
workflows:
  - {{name: all, match: 'true', require_reason: false, auto_approve: 'true'}}
"""


class Target(BaseHTTPRequestHandler):
    """Grants access; the first call hangs (a slow target) until the test ends."""

    def do_POST(self) -> None:
        srv: Any = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with srv.lock:
            srv.calls.append(body["action"])
            first = len(srv.calls) == 1
        if first:
            srv.hanging.set()
            srv.release.wait(60)
            return  # its caller was killed meanwhile: nobody to answer
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps({"connection": {"url": "https://saas.example"}}).encode())

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def target() -> Iterator[Any]:
    server: Any = ThreadingHTTPServer(("127.0.0.1", 0), Target)
    server.daemon_threads = True
    server.calls, server.lock = [], threading.Lock()
    server.hanging, server.release = threading.Event(), threading.Event()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()


def until(what: Callable[[], bool], timeout: float) -> bool:
    """Whether `what` turns true within `timeout` (other processes' work: looked at often)."""
    deadline = time.monotonic() + timeout
    while not what():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def listeners(engine: Engine) -> int:
    """Ledger role connections (integrator or standby): one per `accord worker` up."""
    url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(url, autocommit=True) as c:
        row = c.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                        " AND application_name LIKE 'accord ledger %%'").fetchone()
        return int(row[0]) if row else 0


def test_a_killed_worker_s_job_is_finished_by_another_within_seconds(
    fresh_pg: Engine, tmp_path: Path, target: Any
) -> None:
    config = tmp_path / "accord.yaml"
    config.write_text(POLICY.format(url=f"http://127.0.0.1:{target.server_address[1]}/hook"))
    env = {**os.environ, "ACCORD_TEST_HOOK_SECRET": "s3cret", "ACCORD_CONFIG": str(config),
           "ACCORD_DATA_DIR": str(tmp_path / "data"),
           "ACCORD_DATABASE_URL": fresh_pg.url.render_as_string(hide_password=False)
           .replace("+psycopg", "")}
    st = build_state(Settings.from_env(env), config_path=config, upgrade="never")
    log = tmp_path / "workers.log"
    workers: list[subprocess.Popen[bytes]] = []
    try:
        with log.open("ab") as out:
            for _ in range(2):
                workers.append(subprocess.Popen([ACCORD, "worker"], env=env, stdout=out,
                                                stderr=out))
        assert until(lambda: listeners(fresh_pg) == 2, 60), log.read_text()  # both are up
        with transaction(st.sessions) as session:
            req = requests.create(session, policy=st.policies.current,
                                  caller=requests.Caller("alice", "api"), resource="saas",
                                  role="viewer", duration=timedelta(hours=1), reason="",
                                  now=st.now())
        assert target.hanging.wait(30), log.read_text()  # a worker is in the target call
        with st.sessions() as s:
            job = s.execute(select(Job).where(Job.kind == "grant.provision")).scalar_one()
        assert job.leased_by is not None
        pid = int(job.leased_by.split(":")[1])
        holder = next(p for p in workers if p.pid == pid)
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        holder.wait(timeout=30)

        def active() -> bool:
            with st.sessions() as s:
                grant = s.execute(select(Grant).where(Grant.id == req.grant_id)).scalar_one()
                return grant.status == GrantStatus.ACTIVE

        assert until(active, 120), log.read_text()
        took = time.monotonic() - killed
        # The lease (3 s) ran out at most that long after the kill; then a poll, a call.
        assert took < 6, f"{took:.1f}s"
        with st.sessions() as s:
            job = s.execute(select(Job).where(Job.kind == "grant.provision")).scalar_one()
        survivor = next(p for p in workers if p.pid != pid)
        assert job.done_at is not None and job.attempts == 2
        assert survivor.poll() is None and target.calls == ["grant", "grant"]
    finally:
        for p in workers:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=30)
        st.sessions.kw["bind"].dispose()
