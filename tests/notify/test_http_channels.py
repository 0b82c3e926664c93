"""The Slack and webhook channels against a real local HTTP server."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from accord.ledger.events import Actor, EventType
from accord.notify.channels import DeliveryError, RecipientAddress, SlackChannel, WebhookChannel
from accord.notify.message import Message, render
from accord.signing import verify as verify_signature
from tests.notify import samples as s

BOB = RecipientAddress("bob", email="bob@example.com", slack="U0BOB")
ALICE = RecipientAddress("alice", slack="U0ALICE")
TOKEN = "xoxb-test-token"
SECRET = b"notify-s3cret"


@pytest.fixture
def receiver() -> Iterator[s.Receiver]:
    with s.http_receiver() as rec:
        yield rec


def for_approver() -> Message:
    return render(s.created(), base_url=s.BASE_URL, recipient="bob", approver=True)


def for_requester() -> Message:
    return render(s.ended(EventType.GRANT_EXPIRED, Actor.system()), base_url=s.BASE_URL,
                  recipient="alice", approver=False)


def _buttons(payload: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for b in payload["blocks"] if b["type"] == "actions" for e in b["elements"]]


# ---------------------------------------------------------------- Slack


def test_slack_webhook_posts_blocks_with_buttons(receiver: s.Receiver) -> None:
    channel = SlackChannel(webhook_url=f"{receiver.url}/services/T0/B0/secret")
    try:
        channel.send(BOB, for_approver(), "notify:7:bob:slack")
    finally:
        channel.close()
    [req] = receiver.seen
    assert req.path == "/services/T0/B0/secret"
    assert req.headers["Content-Type"].startswith("application/json")
    payload = req.json()
    assert "channel" not in payload and "metadata" not in payload
    section = payload["blocks"][0]
    assert section["type"] == "section" and section["text"]["type"] == "mrkdwn"
    # the recipient is mentioned; user text cannot mention, link or inject markup
    assert section["text"]["text"].startswith(
        "<@U0BOB> alice asks for orders-db/read for 1h: INC-42 "
        "&lt;script&gt;alert('x')&lt;/script&gt; &amp; &lt;!channel&gt;")
    assert "<!channel>" not in json.dumps(payload)
    assert payload["text"].startswith("<@U0BOB> alice asks for orders-db/read")
    context = payload["blocks"][1]["elements"][0]["text"]
    assert context.startswith("<https://accord.example.com/requests/7|Request #7>")
    assert _buttons(payload) == [
        {"type": "button", "action_id": "accord_approve", "value": "approve:7",
         "text": {"type": "plain_text", "text": "Approve"}, "style": "primary"},
        {"type": "button", "action_id": "accord_deny", "value": "deny:7",
         "text": {"type": "plain_text", "text": "Deny"}, "style": "danger"},
    ]


def test_slack_web_api_sends_a_direct_message(receiver: s.Receiver) -> None:
    receiver.reply = json.dumps({"ok": True, "channel": "D0BOB", "ts": "1.2"}).encode()
    channel = SlackChannel(bot_token=TOKEN, api_url=f"{receiver.url}/api/")
    try:
        channel.send(BOB, for_approver(), "notify:7:bob:slack")
        channel.send(ALICE, for_requester(), "notify:g3:alice:slack")
    finally:
        channel.close()
    first, second = receiver.seen
    assert first.path == "/api/chat.postMessage"
    assert first.headers["Authorization"] == f"Bearer {TOKEN}"
    payload = first.json()
    assert payload["channel"] == "U0BOB"
    assert payload["metadata"] == {"event_type": "accord_notification", "event_payload": {
        "idempotency_key": "notify:7:bob:slack", "event": "request.created", "request_id": 7}}
    assert [b["value"] for b in _buttons(payload)] == ["approve:7", "deny:7"]
    assert not payload["blocks"][0]["text"]["text"].startswith("<@")  # a DM: no mention
    later = second.json()
    assert later["channel"] == "U0ALICE" and _buttons(later) == []
    assert later["text"] == "Your access to orders-db/read expired at 2030-05-06 08:08 UTC."
    assert TOKEN not in repr(channel)


@pytest.mark.parametrize(("status", "reply", "headers", "retryable", "fragment"), [
    (200, {"ok": False, "error": "channel_not_found"}, {}, False, "channel_not_found"),
    (200, {"ok": False, "error": "invalid_auth"}, {}, False, "invalid_auth"),
    (200, {"ok": False, "error": "internal_error"}, {}, True, "internal_error"),
    (429, {"ok": False, "error": "ratelimited"}, {"Retry-After": "30"}, True, "HTTP 429"),
    (503, None, {}, True, "HTTP 503"),
])
def test_slack_api_failures(receiver: s.Receiver, status: int, reply: Any,
                            headers: dict[str, str], retryable: bool, fragment: str) -> None:
    receiver.status, receiver.headers = status, headers
    receiver.reply = json.dumps(reply).encode() if reply is not None else b"unavailable"
    channel = SlackChannel(bot_token=TOKEN, api_url=receiver.url)
    try:
        with pytest.raises(DeliveryError) as caught:
            channel.send(BOB, for_approver(), "k")
    finally:
        channel.close()
    assert caught.value.retryable is retryable
    assert fragment in str(caught.value)
    assert caught.value.retry_after == (30.0 if status == 429 else None)


@pytest.mark.parametrize(("status", "retryable"), [(404, False), (410, False), (429, True),
                                                   (500, True)])
def test_slack_webhook_failures(receiver: s.Receiver, status: int, retryable: bool) -> None:
    receiver.status, receiver.reply = status, b"channel_not_found"
    channel = SlackChannel(webhook_url=f"{receiver.url}/services/T0/B0/secret")
    try:
        with pytest.raises(DeliveryError) as caught:
            channel.send(BOB, for_approver(), "k")
    finally:
        channel.close()
    assert caught.value.retryable is retryable
    assert "secret" not in str(caught.value)  # the webhook URL is a credential


def test_slack_needs_a_slack_id_for_direct_messages() -> None:
    channel = SlackChannel(bot_token=TOKEN, api_url="http://127.0.0.1:1")
    try:
        with pytest.raises(DeliveryError) as caught:
            channel.send(RecipientAddress("dave"), for_approver(), "k")
    finally:
        channel.close()
    assert not caught.value.retryable and "dave" in str(caught.value)
    with pytest.raises(ValueError):
        SlackChannel()
    with pytest.raises(ValueError):
        SlackChannel(webhook_url="https://hooks.slack.com/x", bot_token=TOKEN)


# ---------------------------------------------------------------- webhook


def test_webhook_channel_signs_like_the_ledger_sink(receiver: s.Receiver) -> None:
    receiver.status, receiver.reply = 204, b""
    channel = WebhookChannel(f"{receiver.url}/notify?token=abc", SECRET)
    message = for_approver()
    try:
        channel.send(BOB, message, "notify:7:bob:webhook")
    finally:
        channel.close()
    [req] = receiver.seen
    assert req.path == "/notify?token=abc"
    assert req.headers["Idempotency-Key"] == "notify:7:bob:webhook"
    stamp, signature = req.headers["X-Accord-Timestamp"], req.headers["X-Accord-Signature"]
    assert verify_signature(SECRET, stamp, req.body, signature, now=time.time())
    assert not verify_signature(b"other", stamp, req.body, signature, now=time.time())
    body = req.json()
    assert body == {"type": "request.created", "request_id": 7, "recipient": "bob",
                    "text": message.text, "event": s.created()}
    assert "token" not in repr(channel)


@pytest.mark.parametrize(("status", "retryable"), [(400, False), (401, False), (408, True),
                                                   (429, True), (502, True)])
def test_webhook_channel_failures(receiver: s.Receiver, status: int, retryable: bool) -> None:
    receiver.status = status
    channel = WebhookChannel(f"{receiver.url}/notify?token=abc", SECRET)
    try:
        with pytest.raises(DeliveryError) as caught:
            channel.send(BOB, for_approver(), "k")
    finally:
        channel.close()
    assert caught.value.retryable is retryable
    assert f"HTTP {status}" in str(caught.value) and "token" not in str(caught.value)


def test_webhook_channel_unreachable_is_retryable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    channel = WebhookChannel(f"http://127.0.0.1:{port}/notify", SECRET)
    try:
        with pytest.raises(DeliveryError) as caught:
            channel.send(BOB, for_approver(), "k")
    finally:
        channel.close()
    assert caught.value.retryable
