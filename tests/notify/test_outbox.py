"""Notifications end to end: ledger events → routed deliveries → real SMTP and webhook servers;
routing by people's preferences and by workflows' `notify:` choices."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from accord.db import transaction
from accord.jobs.models import Job
from accord.ledger.models import LedgerEntry, SinkCursor
from accord.notify import outbox
from accord.notify import service as prefs
from accord.notify.channels import RecipientAddress
from accord.notify.models import DigestItem
from accord.spec.load import PolicyError, parse_policy_text
from accord.worker.job_runner import JobRunner
from tests.conftest import POLICY, Env, make_env
from tests.notify.samples import SLACK_ENV, http_receiver, notify_policy
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


# ---------------------------------------------------------------- preferences and workflows


def _pump(env: Env) -> None:
    with transaction(env.st.sessions) as s:
        outbox.pump(s, policy=env.st.policies.current, now=env.clock())


def _index(env: Env, kind: str, subject: str, nth: int = 0) -> int:
    """The ledger index of the `nth` event of `kind` about `subject`."""
    with env.st.sessions() as s:
        found = s.execute(select(LedgerEntry.idx).where(LedgerEntry.type == kind,
                                                        LedgerEntry.subject == subject)
                          .order_by(LedgerEntry.idx)).scalars().all()
        return int(found[nth] or 0)


def _immediate(env: Env, index: int) -> set[tuple[str, str]]:
    """(user, channel) of the deliveries queued for one ledger event."""
    with env.st.sessions() as s:
        jobs = s.execute(select(Job).where(Job.kind == outbox.DELIVER,
                                           Job.key.like(f"notify:{index}:%"))).scalars()
        return {(j.payload["user"], j.payload["channel"]) for j in jobs}


def _digested(env: Env, index: int) -> set[tuple[str, str]]:
    with env.st.sessions() as s:
        items = s.execute(select(DigestItem).where(DigestItem.event_index == index)).scalars()
        return {(i.recipient, i.channel) for i in items}


def _grant_subject(env: Env, rid: int) -> str:
    r = env.get("alice", f"/api/v1/requests/{rid}")
    return f"grant:{r.json()['grant']['id']}"


def test_digest_mode_keeps_news_for_later_but_asks_to_decide_at_once(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    env = make_env(sessions, tmp_path, notify_policy())
    with env.client:
        for user in ("alice", "bob"):
            r = env.call("PUT", user, "/api/v1/me/notifications",
                         json={"mode": "digest", "digest_hour": 6})
            assert r.status_code == 200, r.text
        req = env.ask("alice")
        _pump(env)  # as a running worker would, after each step
        assert env.act("bob", req["id"], "approve").status_code == 200
        _pump(env)
        assert env.act("carol", req["id"], "approve").status_code == 200
        _pump(env)
        subject = f"request:{req['id']}"
        # bob is in digest mode, but being asked to decide cannot wait
        assert _immediate(env, _index(env, "request.created", subject)) == {("bob", "email")}
        # step two's approvers (immediate mode) are asked at once as before
        assert _immediate(env, _index(env, "approval.recorded", subject)) >= {
            ("carol", "email"), ("erin", "email")}
        approved = _index(env, "request.approved", subject)
        assert _immediate(env, approved) == set()
        assert _digested(env, approved) == {("alice", "email")}
        activated = _index(env, "grant.activated", _grant_subject(env, req["id"]))
        assert _immediate(env, activated) == {("carol", "email"), ("erin", "email")}  # owners
        assert _digested(env, activated) == {("alice", "email")}
        # routing the same events again (a cursor rewound) stores nothing twice
        with transaction(env.st.sessions) as s:
            cursor = s.get(SinkCursor, outbox.CURSOR)
            assert cursor is not None
            cursor.position = 0
        _pump(env)
        with env.st.sessions() as s:
            assert len(list(s.execute(select(DigestItem)).scalars())) == 2
            digests = list(s.execute(select(Job).where(
                Job.key.like("notify:digest:%"))).scalars())
        assert [j.payload["user"] for j in digests] == ["alice"]
        assert digests[0].run_at.hour == 6


def test_a_workflows_channels_decide_where_its_requests_are_told(
    sessions: sessionmaker[Session], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mailbox = Mailbox()
    with smtp_server(mailbox) as port, http_receiver() as slack:
        monkeypatch.setenv(SLACK_ENV, f"{slack.url}/services/T0/B0/x")
        env = make_env(sessions, tmp_path, notify_policy(
            smtp_port=port, slack=True, workflows={"prod": "{channels: [slack]}"}))
        runner = JobRunner(env.st.sessions, env.st.policies, env.st.connectors,
                           env.st.secrets, env.clock)
        with env.client:
            env.ask("alice")  # prod: the leads hear on Slack only
            runner.run_once()
            assert mailbox.received == []
            assert [p.json()["text"].split(" ")[0] for p in slack.seen] == ["<@U0BOB>"]
            slack.seen.clear()
            env.ask("alice", resource="staging-db", role="write", reason="")  # staging: both
            runner.run_once()
            assert [r for _f, rcpts, _m in mailbox.received for r in rcpts] == [
                "bob@example.test"]
            assert [p.json()["text"].split(" ")[0] for p in slack.seen] == ["<@U0BOB>"]
            sent = {(e["data"]["recipient"], e["data"]["channel"])
                    for e in env.events(type="notification.sent")}
            assert sent == {("bob", "slack"), ("bob", "email")}
            # a person's choice narrows it further: bob wants email only, prod says Slack
            assert env.call("PUT", "bob", "/api/v1/me/notifications",
                            json={"channels": ["email"]}).status_code == 200
            slack.seen.clear()
            mailbox.received.clear()
            env.ask("erin")
            runner.run_once()
            assert slack.seen == [] and mailbox.received == []


def test_route_takes_what_is_available_chosen_and_allowed() -> None:
    spec = parse_policy_text(notify_policy(slack=True)).spec.notify
    both = RecipientAddress("bob", email="bob@x.test", slack="U0BOB")
    default = prefs.Preferences("bob", None)
    assert prefs.route(spec, both, default, None) == ["email", "slack"]
    assert prefs.route(spec, both, default, ["slack"]) == ["slack"]
    assert prefs.route(spec, both, prefs.Preferences("bob", ("slack",)), None) == ["slack"]
    assert prefs.route(spec, both, prefs.Preferences("bob", ("email",)), ["slack"]) == []
    assert prefs.route(spec, both, prefs.Preferences("bob", ()), None) == []
    assert prefs.route(spec, RecipientAddress("bob", email="bob@x.test"), default,
                       None) == ["email"]
    email_only = parse_policy_text(notify_policy()).spec.notify
    assert prefs.route(email_only, both, prefs.Preferences("bob", ("slack", "email")),
                       None) == ["email"]  # Slack was turned off since bob chose it


@pytest.mark.parametrize(("setting", "approved", "activated"), [
    (None, {"alice"}, {"alice"}),
    ("requester", {"alice"}, {"alice"}),
    ("all", {"alice"}, {"alice", "carol", "erin"}),
    ("none", set(), set()),
])
def test_who_hears_of_an_auto_approval_is_the_workflows_choice(
    sessions: sessionmaker[Session], tmp_path: Path, setting: str | None,
    approved: set[str], activated: set[str]
) -> None:
    workflows = {"staging": f"{{auto_approved: {setting}}}"} if setting else {}
    env = make_env(sessions, tmp_path, notify_policy(workflows=workflows))
    with env.client:
        req = env.ask("alice", resource="staging-db", role="read", reason="")
        assert req["status"] == "active"
        _pump(env)
        subject = f"request:{req['id']}"
        users = {u for u, _c in _immediate(env, _index(env, "request.approved", subject))}
        assert users == approved
        grant = _grant_subject(env, req["id"])
        users = {u for u, _c in _immediate(env, _index(env, "grant.activated", grant))}
        assert users == activated
        # people approving tells the owners whatever auto_approved says
        prod = env.ask("alice", resource="staging-db", role="write")
        assert env.act("bob", prod["id"], "approve").status_code == 200
        _pump(env)
        grant = _grant_subject(env, prod["id"])
        users = {u for u, _c in _immediate(env, _index(env, "grant.activated", grant))}
        assert users == {"alice", "carol", "erin"}


def test_a_provisioned_auto_approval_is_still_an_auto_approval(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    """A provisioned grant is activated by the system once the target confirms: the
    request's rule, not the actor, says a policy approved it."""
    env = make_env(sessions, tmp_path, notify_policy())
    with env.client:
        req = env.ask("alice", resource="staging-db", role="read", reason="")
        [event] = [e for e in env.events(type="grant.activated")
                   if e["data"]["request_id"] == req["id"]]
        confirmed = {**event, "actor": {"kind": "system", "id": "accord", "via": "worker"}}
        with env.st.sessions() as s:
            policy = env.st.policies.current
            assert outbox.recipients(s, policy, event) == [("alice", False)]
            assert outbox.recipients(s, policy, confirmed) == [("alice", False)]


@pytest.mark.parametrize(("value", "problem"), [
    ("{channels: [sms]}",
     "workflows[1].notify.channels[0]: Input should be 'email' or 'slack'"),
    ("{channels: [slack]}",
     "workflows[1].notify.channels[0]: slack is not configured (add notify.slack)"),
    ("{channels: [email, email]}",
     "workflows[1].notify.channels[1]: duplicate channel email"),
    ("{auto_approved: everyone}",
     "workflows[1].notify.auto_approved: Input should be 'requester', 'none' or 'all'"),
    ("{channel: [email]}", "workflows[1].notify.channel: unknown field"),
])
def test_bad_workflow_notify_settings_are_reported_with_their_path(
    value: str, problem: str
) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy_text(notify_policy(workflows={"prod": value}))
    assert [str(p) for p in info.value.problems] == [problem]


def test_existing_configs_stay_valid() -> None:
    for text in (POLICY, notify_policy(), notify_policy(slack=True)):
        loaded = parse_policy_text(text)
        assert all(w.notify.channels is None and w.notify.auto_approved == "requester"
                   for w in loaded.spec.workflows)
    loaded = parse_policy_text(notify_policy(workflows={"prod": "{channels: []}"}))
    assert loaded.spec.workflows[1].notify.channels == []


def test_a_channel_that_cannot_be_built_fails_for_good_and_says_why(
    sessions: sessionmaker[Session], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(SLACK_ENV, raising=False)
    env = make_env(sessions, tmp_path, notify_policy(smtp_port=None, slack=True))
    runner = JobRunner(env.st.sessions, env.st.policies, env.st.connectors, env.st.secrets,
                       env.clock)
    with env.client:
        env.ask("alice")
        runner.run_once()
        [failed] = [e["data"] for e in env.events(type="notification.failed")]
        assert (failed["recipient"], failed["channel"], failed["attempts"]) == ("bob", "slack", 1)
        assert failed["error"] == ("slack is misconfigured: slack: give either webhook_url "
                                   "or bot_token")
