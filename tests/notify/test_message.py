"""Rendering ledger events into human messages."""

from __future__ import annotations

from typing import Any

import pytest

from accord.ledger.events import Actor, EventType, Via
from accord.notify.channels import RecipientAddress, SlackChannel
from accord.notify.message import render, render_digest
from tests.notify import samples as s


def test_request_created_for_an_approver() -> None:
    m = render(s.created(reason="INC-42 investigate"), base_url=s.BASE_URL, recipient="bob",
               approver=True)
    assert m.headline == "alice asks for orders-db/read for 1h: INC-42 investigate"
    assert m.subject == "[Accord] alice asks for orders-db/read for 1h (request #7)"
    assert m.actions == ["approve", "deny"]
    assert (m.request_id, m.resource, m.role, m.requester) == (7, "orders-db", "read", "alice")
    assert m.link == "https://accord.example.com/requests/7"
    assert "before 2030-05-07 07:08 UTC" in m.text
    assert "accord request approve 7" in m.text
    assert m.text.endswith("Details: https://accord.example.com/requests/7")
    assert m.event["type"] == "request.created"


def test_request_created_for_the_requester_has_no_actions() -> None:
    m = render(s.created(reason="why"), base_url=s.BASE_URL, recipient="alice", approver=False)
    assert m.headline == "You asked for orders-db/read for 1h: why"
    assert m.actions == []
    assert "It waits for approval until 2030-05-07 07:08 UTC." in m.text


def test_policy_decided_creation_needs_no_decision() -> None:
    m = render(s.created(outcome="approve"), base_url=s.BASE_URL, recipient="carol",
               approver=True)
    assert m.actions == []
    assert "Policy approved it at once (rule prod-read). No decision is needed." in m.text


def test_user_text_is_escaped_in_html_only() -> None:
    m = render(s.created(), base_url=s.BASE_URL, recipient="bob", approver=True)
    assert s.EVIL_REASON in m.text
    assert m.html is not None
    assert "<script>" not in m.html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &lt;!channel&gt;" in m.html
    assert '<a href="https://accord.example.com/requests/7">Details</a>' in m.html


def test_subject_is_one_line() -> None:
    event = s.created()
    event["data"]["requester"] = "mallory\r\nBcc: everyone@example.com"
    m = render(event, base_url=s.BASE_URL, recipient="bob", approver=True)
    assert "\n" not in m.subject and "\r" not in m.subject


@pytest.mark.parametrize(("event", "recipient", "headline", "rest"), [
    (s.approved_by_people(), "alice",
     "Request #7 for orders-db/read was approved by bob and gina.", []),
    (s.approved_by_people(), "gina",
     "Request #7 for orders-db/read was approved by bob and you.", []),
    (s.approved_by_policy(), "alice",
     "Request #7 for orders-db/read was approved by policy (workflow staging).",
     ["Reason: staging is self-service"]),
    (s.finished(EventType.REQUEST_DENIED, Actor.user("bob", Via.WEB), "denied by bob: not now"),
     "alice", "Request #7 for orders-db/read was denied by bob.", ["Reason: not now"]),
    (s.finished(EventType.REQUEST_DENIED, Actor("policy", "default-deny", "policy"),
                "no workflow matches"),
     "alice", "Request #7 for orders-db/read was denied by policy (workflow default-deny).",
     ["Reason: no workflow matches"]),
    (s.finished(EventType.REQUEST_EXPIRED, Actor.system(),
                "nobody decided before the request's time ran out"),
     "alice", "Request #7 for orders-db/read expired: nobody decided in time.", []),
    (s.finished(EventType.REQUEST_CANCELLED, Actor.user("alice", Via.CLI),
                "cancelled by the requester: done"),
     "bob", "Request #7 for orders-db/read was withdrawn by alice.", ["Comment: done"]),
    (s.activated(login="alice", connection={"host": "db.internal", "port": 5432}), "alice",
     "You now have orders-db/read until 2030-05-06 08:08 UTC.",
     ["Log in as alice.", "Connection: host=db.internal, port=5432",
      "Done early? accord request relinquish 7"]),
    (s.activated(), "bob", "alice now has orders-db/read until 2030-05-06 08:08 UTC.", []),
    (s.ended(EventType.GRANT_EXPIRED, Actor.system()), "alice",
     "Your access to orders-db/read expired at 2030-05-06 08:08 UTC.", []),
    (s.ended(EventType.GRANT_REVOKED, Actor.user("carol", Via.API), "incident over"), "alice",
     "Your access to orders-db/read was revoked by carol.", ["Comment: incident over"]),
    (s.ended(EventType.GRANT_RELINQUISHED, Actor.user("alice", Via.CLI)), "alice",
     "You gave up access to orders-db/read.", []),
    (s.ended(EventType.GRANT_RELINQUISHED, Actor.user("alice", Via.CLI)), "bob",
     "alice gave up access to orders-db/read.", []),
])
def test_headlines(event: dict[str, Any], recipient: str, headline: str,
                   rest: list[str]) -> None:
    m = render(event, base_url=s.BASE_URL, recipient=recipient, approver=False)
    paragraphs = m.text.split("\n\n")
    assert paragraphs[0] == headline
    assert paragraphs[1:-1] == rest
    assert m.actions == []
    assert m.html is not None and m.subject.startswith("[Accord] ")


def test_grant_messages_link_the_grant_and_name_its_first_request() -> None:
    m = render(s.ended(EventType.GRANT_EXPIRED, Actor.system()), base_url=s.BASE_URL,
               recipient="alice", approver=False)
    assert m.link == "https://accord.example.com/grants#grant-3"
    assert (m.request_id, m.requester) == (7, "alice")
    assert m.subject == "[Accord] Access expired: orders-db/read"


def test_approvers_hear_that_nothing_is_left_to_decide() -> None:
    m = render(s.finished(EventType.REQUEST_EXPIRED, Actor.system(), "x"),
               base_url=s.BASE_URL, recipient="bob", approver=True)
    assert m.actions == []
    assert "No decision is needed any more." in m.text


@pytest.mark.parametrize("event", [
    {"type": "token.issued", "resource": None, "data": {}},
    {"type": "request.created", "resource": None, "data": {"request_id": 1}},
    {"type": "request.denied", "resource": {"name": "x", "role": "y"}, "data": {}},
    ["not", "an", "object"],
])
def test_unrenderable_events_are_refused(event: Any) -> None:
    with pytest.raises(ValueError):
        render(event, base_url=s.BASE_URL, recipient="bob", approver=False)


# ---------------------------------------------------------------- digests


def test_a_digest_lists_each_event_once_with_user_text_escaped() -> None:
    events = [(s.created(), False),  # the requester's own: headline carries the reason
              (s.approved_by_people(), False),
              (s.finished(EventType.REQUEST_DENIED, Actor.user("bob", Via.CLI), s.EVIL_REASON),
               False),
              (s.envelope(type=EventType.TOKEN_ISSUED, time=s.NOW, actor=Actor.system(),
                          subject="token:1", resource=None, data={}), False),  # no message
              (s.activated(), False)]
    message = render_digest(events, base_url=s.BASE_URL, recipient="alice", day="2030-05-06")
    assert message is not None
    assert message.event_type == "notification.digest" and message.actions == []
    assert message.subject == "[Accord] Daily digest for 2030-05-06: 4 updates"
    lines = [line for line in message.text.splitlines() if line.startswith("- ")]
    assert lines == [
        "- You asked for orders-db/read for 1h: INC-42 <script>alert('x')</script> & "
        "<!channel>",
        "- Request #7 for orders-db/read was approved by bob and gina.",
        "- Request #7 for orders-db/read was denied by bob.",
        "- You now have orders-db/read until 2030-05-06 08:08 UTC.",
    ]
    assert "https://accord.example.com/grants#grant-3" in message.text
    assert message.html is not None and "<script>" not in message.html
    assert "INC-42 &lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp;" in message.html
    assert len(message.event["events"]) == 4
    one = render_digest(events[:1], base_url=s.BASE_URL, recipient="alice", day="d")
    assert one is not None and one.subject.endswith(": 1 update")
    assert render_digest(events[3:4], base_url=s.BASE_URL, recipient="alice", day="d") is None


def test_a_digest_on_slack_is_labelled_accord() -> None:
    message = render_digest([(s.activated(), False)], base_url=s.BASE_URL, recipient="alice",
                            day="2030-05-06")
    assert message is not None
    channel = SlackChannel(webhook_url="https://hooks.slack.invalid/x")
    try:
        payload = channel.payload(RecipientAddress("alice", slack="U0A"), message, "k")
    finally:
        channel.close()
    assert payload["blocks"][1]["elements"][0]["text"] == (
        "<https://accord.example.com|Accord> · notification.digest")
    assert "actions" not in [b["type"] for b in payload["blocks"]]
