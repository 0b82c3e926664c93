"""The daily digest end to end: items stored instead of deliveries, one email at the hour
to a real SMTP server, never twice (a second run, a worker restart), retries that resend
only what was not sent."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from accord.jobs.models import Job
from accord.notify import digest
from accord.notify.models import DigestItem
from accord.worker.job_runner import JobRunner
from accord.worker.sweeper import sweep_once
from tests.conftest import Env, make_env
from tests.notify.samples import notify_policy
from tests.notify.test_email import Mailbox, smtp_server

ME = "/api/v1/me/notifications"


@pytest.fixture
def mailbox() -> Mailbox:
    return Mailbox()


@pytest.fixture
def setup(sessions: sessionmaker[Session], tmp_path: Path, mailbox: Mailbox
          ) -> Iterator[tuple[Env, JobRunner]]:
    with smtp_server(mailbox) as port:
        env = make_env(sessions, tmp_path, notify_policy(smtp_port=port))
        with env.client:
            yield env, _runner(env)


def _runner(env: Env) -> JobRunner:
    """A worker as `accord worker` runs one; a new one is a worker restart."""
    return JobRunner(env.st.sessions, env.st.policies, env.st.connectors, env.st.secrets,
                     env.clock)


def _to(mailbox: Mailbox, address: str) -> list[str]:
    """Subjects of the mails `address` received."""
    return [str(m["Subject"]) for _f, rcpts, m in mailbox.received if address in rcpts]


def _digest_hour(env: Env) -> tuple[int, datetime]:
    """An hour between two and three hours from now, and when its digest is due."""
    hour = (env.clock() + timedelta(hours=3)).hour
    return hour, digest.next_run(env.clock(), hour)


def _items(env: Env, user: str) -> list[DigestItem]:
    with env.st.sessions() as s:
        return list(s.execute(select(DigestItem).where(DigestItem.recipient == user)
                              .order_by(DigestItem.event_index)).scalars())


def _job(env: Env, key: str) -> Job | None:
    with env.st.sessions() as s:
        return s.execute(select(Job).where(Job.key == key)).scalar_one_or_none()


def test_next_run_is_the_first_such_hour_strictly_after_now() -> None:
    at = datetime(2030, 5, 6, 9, 0, tzinfo=UTC)
    assert digest.next_run(at, 9) == datetime(2030, 5, 7, 9, 0, tzinfo=UTC)
    assert digest.next_run(at - timedelta(microseconds=1), 9) == at
    assert digest.next_run(datetime(2030, 12, 31, 23, 30, tzinfo=UTC), 0) == datetime(
        2031, 1, 1, 0, 0, tzinfo=UTC)
    assert digest.job_key("alice", at) == "notify:digest:alice:2030-05-06"


def test_a_digest_collects_the_day_and_is_sent_once_at_the_hour(
    setup: tuple[Env, JobRunner], mailbox: Mailbox
) -> None:
    env, runner = setup
    hour, due = _digest_hour(env)
    assert env.call("PUT", "alice", ME, json={"mode": "digest",
                                              "digest_hour": hour}).status_code == 200
    # auto-approved: request.approved and grant.activated for alice, both for the digest
    staging = env.ask("alice", resource="staging-db", role="read", reason="", duration="1h")
    # pending: bob (immediate) is asked at once; alice hears of the denial in her digest
    prod = env.ask("alice")
    runner.run_once()
    assert _to(mailbox, "bob@example.test") and not _to(mailbox, "alice@example.test")
    assert env.act("bob", prod["id"], "deny", comment="not now").status_code == 200
    runner.run_once()

    # an access-ending warning needs acting on: it comes at once, even in digest mode
    env.clock.advance(minutes=45)
    runner.run_once()
    runner.run_once()
    assert [s for s in _to(mailbox, "alice@example.test")] == [
        "[Accord] Access ending soon: staging-db/read"]
    env.clock.advance(minutes=15)
    assert sweep_once(env.st.sessions, env.clock()) == 1  # the grant expires
    runner = _runner(env)  # a worker restart before the hour: the digest is in the database
    runner.run_once()
    items = _items(env, "alice")
    assert [i.event_type for i in items] == [
        "request.approved", "grant.activated", "request.denied", "grant.expired"]
    assert {i.channel for i in items} == {"email"} and all(i.sent_at is None for i in items)
    key = digest.job_key("alice", due)
    job = _job(env, key)
    assert job is not None and job.run_at == due and job.done_at is None

    env.clock.value = due - timedelta(seconds=1)
    runner.run_once()
    assert len(_to(mailbox, "alice@example.test")) == 1  # not yet

    env.clock.value = due
    runner.run_once()
    mails = [m for _f, rcpts, m in mailbox.received if "alice@example.test" in rcpts]
    assert len(mails) == 2
    mail = mails[-1]
    assert mail["Subject"] == f"[Accord] Daily digest for {due.date().isoformat()}: 4 updates"
    body = mail.get_body(("plain",)).get_content()
    for line in (f"Request #{staging['id']} for staging-db/read was approved by policy",
                 "You now have staging-db/read until",
                 f"Request #{prod['id']} for orders-db/read was denied by bob",
                 "Your access to staging-db/read expired"):
        assert line in body, body
    assert body.index("approved by policy") < body.index("denied by bob")  # oldest first
    sent = [e["data"] for e in env.events(type="notification.sent")
            if e["data"].get("digest") == key]
    assert sorted(d["index"] for d in sent) == sorted(i.event_index for i in items)
    assert {(d["channel"], d["recipient"]) for d in sent} == {("email", "alice")}
    job = _job(env, key)
    assert job is not None and job.done_at == due

    # never twice: another pass, a restarted worker, a later day without news
    runner.run_once()
    _runner(env).run_once()
    env.clock.advance(days=1)
    _runner(env).run_once()
    assert len([m for _f, rcpts, m in mailbox.received if "alice@example.test" in rcpts]) == 2
    assert all(i.sent_at == due and i.digest == key for i in _items(env, "alice"))

    # news after the hour goes to the next day's digest
    env.ask("alice", resource="staging-db", role="read", reason="", duration="1h")
    runner.run_once()
    later = digest.next_run(env.clock(), hour)
    assert later.date() > due.date()
    assert _job(env, digest.job_key("alice", later)) is not None


def test_items_arriving_while_the_days_digest_already_ran_wait_for_the_next_day(
    setup: tuple[Env, JobRunner], mailbox: Mailbox
) -> None:
    env, runner = setup
    hour, due = _digest_hour(env)
    env.call("PUT", "alice", ME, json={"mode": "digest", "digest_hour": hour})
    env.ask("alice", resource="staging-db", role="read", reason="", duration="8h")
    runner.run_once()
    env.clock.value = due
    runner.run_once()
    assert len(_to(mailbox, "alice@example.test")) == 1
    # An event timed before the hour but routed after the digest ran (a slow pump): its
    # day's job is done, so the item is planned for the next day, not lost.
    env.clock.value = due - timedelta(minutes=1)
    env.ask("alice", resource="staging-db", role="write", reason="", duration="1h")  # pending
    prod = env.ask("alice")
    env.act("bob", prod["id"], "deny")
    runner.run_once()
    [waiting] = [i for i in _items(env, "alice") if i.sent_at is None]
    tomorrow = due + timedelta(days=1)
    job = _job(env, digest.job_key("alice", tomorrow))
    assert job is not None and job.run_at == tomorrow and job.done_at is None
    env.clock.value = tomorrow
    runner.run_once()
    assert len(_to(mailbox, "alice@example.test")) == 2
    assert _items(env, "alice")[-1].event_index == waiting.event_index
    assert all(i.sent_at is not None for i in _items(env, "alice"))


def test_a_refused_digest_is_retried_and_then_sent_exactly_once(
    setup: tuple[Env, JobRunner], mailbox: Mailbox
) -> None:
    env, runner = setup
    hour, due = _digest_hour(env)
    env.call("PUT", "alice", ME, json={"mode": "digest", "digest_hour": hour})
    env.ask("alice", resource="staging-db", role="read", reason="", duration="8h")
    runner.run_once()
    mailbox.rcpt_reply = "451 4.3.0 try again later"
    env.clock.value = due
    runner.run_once()
    assert not mailbox.received
    job = _job(env, digest.job_key("alice", due))
    assert job is not None and job.done_at is None and "451" in (job.last_error or "")
    assert all(i.sent_at is None for i in _items(env, "alice"))
    mailbox.rcpt_reply = None
    env.clock.advance(minutes=11)  # past the backoff
    runner.run_once()
    runner.run_once()
    assert len(_to(mailbox, "alice@example.test")) == 1
    assert [e["data"]["attempts"] for e in env.events(type="notification.sent")
            if e["data"].get("digest")] == [2, 2]


def test_a_digest_refused_for_good_is_recorded_as_failed(
    setup: tuple[Env, JobRunner], mailbox: Mailbox
) -> None:
    env, runner = setup
    hour, due = _digest_hour(env)
    env.call("PUT", "alice", ME, json={"mode": "digest", "digest_hour": hour})
    env.ask("alice", resource="staging-db", role="read", reason="", duration="8h")
    runner.run_once()
    mailbox.rcpt_reply = "550 5.1.1 no such user"
    env.clock.value = due
    runner.run_once()
    failed = [e["data"] for e in env.events(type="notification.failed")]
    assert len(failed) == 2 and all("550" in d["error"] for d in failed)
    assert {i.outcome for i in _items(env, "alice")} == {"failed"}
    job = _job(env, digest.job_key("alice", due))
    assert job is not None and job.done_at is not None
