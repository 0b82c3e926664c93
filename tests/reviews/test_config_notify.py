"""`reviews:` in accord.yaml is checked with paths like the rest; reviewers are told of a
new campaign and reminded, with a link to it."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from accord.notify.message import render
from accord.notify.outbox import recipients
from accord.spec.load import parse_policy_text
from tests.conftest import POLICY, Env, make_env
from tests.policy.test_config import problems
from tests.reviews.conftest import REVIEW_POLICY, START, review_events, runner, scenario, start


def test_review_definitions_are_validated_with_paths() -> None:
    spec = parse_policy_text(REVIEW_POLICY).spec.reviews
    assert [r.name for r in spec] == ["prod-quarterly", "lab-monthly"]
    assert spec[0].every == timedelta(days=90) and spec[1].remind_every is None
    assert spec[0].recurring is not None and spec[0].recurring.min_grants == 3
    bad = POLICY + """\
reviews:
  - {name: a, resources: [orders-db, nope], reviewers: [owners, lead]}
  - {name: a, match: 'request.role == "x"', resources: [lab]}
  - {name: Bad, match: 'resource.labels.env ==', duration: 100d}
  - {name: c, resources: [lab], every: 7d, duration: 2d, remind_every: 3d, reviewers: []}
  - {name: d, resources: [lab], recurring: {min_grants: 0}, every: soon}
"""
    found = problems(bad)
    for expected in (
        'reviews[0].resources[1]: unknown resource "nope"',
        'reviews[0].reviewers[1]: unknown group "lead"',
        'reviews[1].name: duplicate review "a"',
        "reviews[1]: give either resources or match",
        "reviews[1].match: invalid CEL: only resource is known here",
        "reviews[2].name: invalid review name",
        "reviews[2].match: invalid CEL",
        "reviews[2].duration: must not be longer than every",
        "reviews[3].remind_every: must be shorter than duration",
        "reviews[3].reviewers: name at least one reviewer",
        "reviews[4].recurring.min_grants: Input should be greater than or equal to 1",
        "reviews[4].every: ",
    ):
        assert any(p.startswith(expected) for p in found), (expected, found)


def test_reviewers_are_told_and_reminded_with_a_link(env: Env) -> None:
    scenario(env)
    review = start(env)
    env.clock.advance(days=2, seconds=1)
    runner(env).run_once()
    started, reminded = review_events(env, review["id"])
    policy = env.st.policies.current
    with env.st.sessions() as session:
        assert recipients(session, policy, started) == [("carol", True), ("erin", True)]
        assert recipients(session, policy, reminded) == [("carol", True), ("erin", True)]
    m = render(started, base_url="https://accord.example.test", recipient="carol",
               approver=True)
    assert m.link == f"https://accord.example.test/reviews/{review['id']}"
    assert "prod-quarterly" in m.subject and "3 entries" in m.subject
    assert f"accord review show {review['id']} --mine" in m.text
    r = render(reminded, base_url="https://accord.example.test", recipient="erin",
               approver=True)
    assert r.subject.startswith("[Accord] Reminder: 3 entries to review in prod-quarterly")
    assert "expire" in r.text and r.link == m.link


def test_reviewers_get_the_email(sessions: sessionmaker[Session], tmp_path: Path) -> None:
    from tests.notify.test_email import Mailbox, smtp_server
    from tests.notify.test_outbox import EMAILS

    mailbox = Mailbox()
    with smtp_server(mailbox) as port:
        text = REVIEW_POLICY.replace("users: [alice, bob, carol, dave, erin, frank, gina]",
                                     EMAILS)
        text += ("notify: {base_url: 'https://accord.example.test', email: "
                 f"{{host: 127.0.0.1, port: {port}, sender: accord@example.test}}}}\n")
        env = make_env(sessions, tmp_path, text)
        env.clock.value = START
        with env.client:
            scenario(env)
            mailbox.received.clear()
            review = start(env)
            for _ in range(2):  # the outbox queues, then delivers
                runner(env).run_once()
            mail: list[Any] = [m for _f, _r, m in mailbox.received
                               if "Access review" in m["Subject"]]
            assert sorted(m["To"] for m in mail) == ["carol@example.test", "erin@example.test"]
            body = mail[0].get_body(("plain",)).get_content()
            assert f"https://accord.example.test/reviews/{review['id']}" in body
