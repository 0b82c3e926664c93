"""Notifications end to end: ledger events → routed deliveries → real SMTP and webhook servers."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from accord.worker.job_runner import JobRunner
from tests.conftest import POLICY, Env, make_env
from tests.notify.test_email import Mailbox, smtp_server

EMAILS = (
    "users: {alice: {email: alice@example.test}, bob: {email: bob@example.test}, "
    "carol: {email: carol@example.test}, dave: {}, erin: {email: erin@example.test}, "
    "frank: {}, gina: {}}"
)


class Hook(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        srv: Any = self.server
        self.rfile.read(int(self.headers["Content-Length"]))
        srv.calls += 1
        self.send_response(500 if srv.calls <= srv.fail_first else 200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def hook(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("ACCORD_TEST_NOTIFY_SECRET", "s3cret")
    server: Any = HTTPServer(("127.0.0.1", 0), Hook)
    server.calls, server.fail_first = 0, 0
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def _env(sessions: sessionmaker[Session], tmp_path: Path, smtp_port: int, hook_port: int
         ) -> tuple[Env, JobRunner]:
    text = POLICY.replace("users: [alice, bob, carol, dave, erin, frank, gina]", EMAILS)
    text += f"""notify:
  base_url: https://accord.example.test
  email: {{host: 127.0.0.1, port: {smtp_port}, sender: accord@example.test}}
  webhooks: [{{name: audit, url: "http://127.0.0.1:{hook_port}/n",
              secret_env: ACCORD_TEST_NOTIFY_SECRET}}]
"""
    env = make_env(sessions, tmp_path, text)
    runner = JobRunner(env.st.sessions, env.st.policies, env.st.connectors, env.st.secrets,
                       env.clock)
    return env, runner


def _drain(env: Env, runner: JobRunner, rounds: int = 6) -> None:
    for _ in range(rounds):
        runner.run_once()
        env.clock.advance(minutes=11)  # past any retry backoff


def test_approvers_then_requester_are_told_by_email(
    sessions: sessionmaker[Session], tmp_path: Path, hook: Any
) -> None:
    mailbox = Mailbox()
    with smtp_server(mailbox) as port:
        env, runner = _env(sessions, tmp_path, port, hook.server_address[1])
        with env.client:
            req = env.ask("alice")
            _drain(env, runner, 1)
            to = sorted(r for _f, rcpts, _m in mailbox.received for r in rcpts)
            assert to == ["bob@example.test"]  # step 1: leads with an email (gina has none)
            subject = mailbox.received[0][2]["Subject"]
            assert "alice" in subject and "orders-db" in subject
            mailbox.received.clear()
            env.act("bob", req["id"], "approve")
            _drain(env, runner, 1)
            assert sorted(r for _f, rcpts, _m in mailbox.received for r in rcpts) == [
                "carol@example.test", "erin@example.test"]  # step 2: the owners
            mailbox.received.clear()
            env.act("carol", req["id"], "approve")
            _drain(env, runner, 1)
            told = sorted(r for _f, rcpts, _m in mailbox.received for r in rcpts)
            assert told.count("alice@example.test") >= 1  # approved, then active
            sent = env.events(type="notification.sent")
            assert {e["data"]["channel"] for e in sent} >= {"email", "webhook.audit"}
            assert all(e["data"]["recipient"] for e in sent)


def test_a_receiver_failing_three_times_gets_exactly_one_delivery(
    sessions: sessionmaker[Session], tmp_path: Path, hook: Any
) -> None:
    hook.fail_first = 3
    with smtp_server(Mailbox()) as port:
        env, runner = _env(sessions, tmp_path, port, hook.server_address[1])
        with env.client:
            env.ask("alice", resource="staging-db", role="read", reason="")
            _drain(env, runner, 8)
            hooks = [e["data"] for e in env.events(type="notification.sent")
                     if e["data"]["channel"] == "webhook.audit"]
            indices = [h["index"] for h in hooks]
            assert len(indices) == len(set(indices)) >= 3  # one success per event
            assert hook.calls == len(hooks) + 3  # the three failures were retried, once each
            assert not env.events(type="notification.failed")
            # auto-approved: only the requester hears about it by email
            mails = [e["data"]["recipient"] for e in env.events(type="notification.sent")
                     if e["data"]["channel"] == "email"]
            assert set(mails) == {"alice"}


def test_reminders_and_escalation_fire_at_their_times(
    sessions: sessionmaker[Session], tmp_path: Path, hook: Any
) -> None:
    mailbox = Mailbox()
    with smtp_server(mailbox) as port:
        env, runner = _env(sessions, tmp_path, port, hook.server_address[1])
        text = env.policy_path.read_text().replace(
            "    expire_after: 2h\n",
            "    expire_after: 2h\n    escalation: {remind_after: 15m, escalate_after: 1h, "
            "to: [admins]}\n")
        env.write_policy(text)
        assert env.post("carol", "/api/v1/admin/reload").status_code == 200
        with env.client:
            req = env.ask("alice")
            runner.run_once()
            mailbox.received.clear()
            env.clock.advance(minutes=14)
            runner.run_once()
            assert not env.events(type="request.reminded")  # not yet
            env.clock.advance(minutes=1)
            runner.run_once()
            runner.run_once()  # the reminder's own deliveries
            assert len(env.events(type="request.reminded")) == 1
            assert [r for _f, rcpts, _m in mailbox.received for r in rcpts] == [
                "bob@example.test"]
            mailbox.received.clear()
            # a worker restart: a new runner finds the timers in the database
            runner = JobRunner(env.st.sessions, env.st.policies, env.st.connectors,
                               env.st.secrets, env.clock)
            env.clock.advance(minutes=45)
            runner.run_once()
            runner.run_once()
            escalated = env.events(type="request.escalated")
            assert len(escalated) == 1 and escalated[0]["data"]["added"] == ["carol", "frank"]
            assert [r for _f, rcpts, _m in mailbox.received for r in rcpts] == [
                "carol@example.test"]  # frank has no email
            # the escalation group may now decide the waiting step
            assert env.act("frank", req["id"], "approve").status_code == 200
            runner.run_once()
            assert len(env.events(type="request.reminded")) == 1  # fired once


def test_grantees_are_warned_before_their_access_ends(
    sessions: sessionmaker[Session], tmp_path: Path, hook: Any
) -> None:
    mailbox = Mailbox()
    with smtp_server(mailbox) as port:
        env, runner = _env(sessions, tmp_path, port, hook.server_address[1])
        with env.client:
            req = env.ask("alice", resource="staging-db", role="read", reason="", duration="1h")
            runner.run_once()
            mailbox.received.clear()
            env.clock.advance(minutes=44)
            runner.run_once()
            assert not env.events(type="grant.expiring")
            env.clock.advance(minutes=1)
            runner.run_once()
            runner.run_once()
            assert len(env.events(type="grant.expiring")) == 1
            message = mailbox.received[-1][2]
            assert message["To"] == "alice@example.test"
            assert f"accord request extend {req['id']}" in message.get_body(
                ("plain",)).get_content()
