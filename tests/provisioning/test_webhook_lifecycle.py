"""A webhook target that fails: revocation keeps trying, says so loudly, then completes."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from accord.worker.job_runner import JobRunner
from tests.conftest import make_env

POLICY = """\
users: [alice, bob, dave]
groups: {{engineers: [alice], leads: [bob], auditors: [dave]}}
accord: {{auditors: [auditors]}}
resources:
  - name: saas
    roles: [viewer]
    owners: [leads]
    provision: {{type: webhook, url: "{url}", secret_env: ACCORD_TEST_HOOK_SECRET}}
workflows:
  - {{name: saas, match: 'true', require_reason: false, auto_approve: 'true',
     steps: [{{approvers: [leads]}}]}}
"""


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        srv: Any = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        srv.calls.append(body["action"])
        if body["action"] == "revoke" and srv.fail_revokes > 0:
            srv.fail_revokes -= 1
            self.send_response(503)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps({"connection": {"url": "https://saas.example"}}).encode())

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("ACCORD_TEST_HOOK_SECRET", "s3cret")
    server: Any = HTTPServer(("127.0.0.1", 0), Receiver)
    server.calls, server.fail_revokes = [], 0
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_a_failing_revoke_keeps_retrying_and_is_reported(
    sessions: sessionmaker[Session], tmp_path: Path, receiver: Any
) -> None:
    url = f"http://127.0.0.1:{receiver.server_address[1]}/access"
    env = make_env(sessions, tmp_path, POLICY.format(url=url))
    runner = JobRunner(env.st.sessions, env.st.policies, env.st.connectors, env.st.secrets,
                       env.clock)
    with env.client:
        req = env.ask("alice", resource="saas", role="viewer")
        assert runner.run_once() == 1
        grant = env.get("alice", f"/api/v1/requests/{req['id']}").json()["grant"]
        assert grant["status"] == "active"
        assert grant["connection"] == {"url": "https://saas.example"}
        receiver.fail_revokes = 4
        assert env.act("alice", req["id"], "relinquish").status_code == 200
        for _ in range(4):
            assert runner.run_once() == 0
            env.clock.advance(minutes=11)
        failing = env.events(type="grant.deprovision_failing")
        assert len(failing) == 1 and failing[0]["data"]["attempts"] == 3
        assert runner.run_once() == 1
        assert receiver.calls == ["grant", "revoke", "revoke", "revoke", "revoke", "revoke"]
        types = [e["type"] for e in env.events(subject=f"grant:{grant['id']}")]
        assert types[-1] == "grant.deprovisioned"
