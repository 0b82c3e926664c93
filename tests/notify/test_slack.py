"""Slack request signatures (v0) and Approve/Deny button payloads."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from typing import Any
from urllib.parse import urlencode

import pytest

from accord.notify.channels import RecipientAddress, SlackChannel
from accord.notify.message import render
from accord.notify.slack import Interaction, parse_interaction, verify, verify_request
from tests.notify import samples as s

SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
NOW = 1_700_000_000.0
BODY = b"payload=%7B%22type%22%3A%22block_actions%22%7D"


def slack_sign(secret: str, timestamp: str, body: bytes) -> str:
    """Independently of the code under test: Slack's documented recipe."""
    base = b"v0:" + timestamp.encode() + b":" + body
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


def test_a_genuine_request_is_accepted() -> None:
    stamp = str(int(NOW) - 10)
    verdict = verify(SIGNING_SECRET, stamp, BODY, slack_sign(SIGNING_SECRET, stamp, BODY),
                     now=NOW)
    assert verdict.ok and verdict and verdict.reason == ""
    headers = {"x-slack-request-timestamp": stamp,
               "X-SLACK-SIGNATURE": slack_sign(SIGNING_SECRET, stamp, BODY)}
    assert verify_request(SIGNING_SECRET.encode(), headers, BODY, now=NOW).ok


@pytest.mark.parametrize(("case", "stamp", "body", "secret", "reason"), [
    ("forged", 0, BODY, "not-the-secret", "signature mismatch"),
    ("stale", -400, BODY, SIGNING_SECRET, "too old (400 s"),
    ("future", 400, BODY, SIGNING_SECRET, "in the future"),
    ("modified", 0, BODY + b"%20", SIGNING_SECRET, "signature mismatch"),
])
def test_bad_requests_are_refused_with_a_reason(case: str, stamp: int, body: bytes,
                                                 secret: str, reason: str) -> None:
    timestamp = str(int(NOW) + stamp)
    signed = slack_sign(secret, timestamp, BODY)  # what was signed: the original body
    verdict = verify(SIGNING_SECRET, timestamp, body, signed, now=NOW)
    assert not verdict.ok and not verdict
    assert reason in verdict.reason, case


def test_a_replay_with_a_fresh_timestamp_does_not_verify() -> None:
    old = str(int(NOW) - 400)
    signed = slack_sign(SIGNING_SECRET, old, BODY)
    verdict = verify(SIGNING_SECRET, str(int(NOW)), BODY, signed, now=NOW)
    assert not verdict.ok and "mismatch" in verdict.reason


@pytest.mark.parametrize(("stamp", "signature", "reason"), [
    (None, "v0=00", "missing X-Slack-Request-Timestamp"),
    ("1700000000", None, "missing X-Slack-Signature"),
    ("17e8", "v0=00", "not a unix time"),
    (" 1700000000", "v0=00", "not a unix time"),
    ("1700000000", "v1=" + "0" * 64, "unsupported signature version"),
    ("1700000000", "v0=é", "unsupported signature version"),
])
def test_malformed_headers(stamp: str | None, signature: str | None, reason: str) -> None:
    verdict = verify(SIGNING_SECRET, stamp, BODY, signature, now=NOW)
    assert not verdict.ok and reason in verdict.reason


def test_an_empty_secret_verifies_nothing() -> None:
    stamp = str(int(NOW))
    verdict = verify("", stamp, BODY, slack_sign("", stamp, BODY), now=NOW)
    assert not verdict.ok and "signing secret" in verdict.reason


# ---------------------------------------------------------------- interactions


def click(button: dict[str, Any], **overrides: Any) -> bytes:
    """A block_actions body as Slack sends it for a click on `button`."""
    payload: dict[str, Any] = {
        "type": "block_actions",
        "user": {"id": "U0BOB", "username": "bob", "name": "bob", "team_id": "T0001"},
        "api_app_id": "A0001",
        "token": "legacy-verification-token",
        "container": {"type": "message", "message_ts": "1700000000.000100",
                      "channel_id": "D0BOB", "is_ephemeral": False},
        "trigger_id": "1700000000.1.abcdef",
        "team": {"id": "T0001", "domain": "example"},
        "enterprise": None,
        "is_enterprise_install": False,
        "channel": {"id": "D0BOB", "name": "directmessage"},
        "message": {"type": "message", "text": "alice asks ...", "ts": "1700000000.000100"},
        "state": {"values": {}},
        "response_url": "https://hooks.slack.com/actions/T0001/1234/abcdef",
        "actions": [{**button, "block_id": "accord_request_7",
                     "text": {**button["text"], "emoji": True},
                     "action_ts": "1700000001.000200"}],
    }
    payload.update(overrides)
    return urlencode({"payload": json.dumps(payload)}).encode()


def rendered_buttons() -> list[dict[str, Any]]:
    message = render(s.created(), base_url=s.BASE_URL, recipient="bob", approver=True)
    channel = SlackChannel(webhook_url="https://hooks.slack.invalid/x")
    try:
        payload = channel.payload(RecipientAddress("bob", slack="U0BOB"), message, "k")
    finally:
        channel.close()
    return [e for b in payload["blocks"] if b["type"] == "actions" for e in b["elements"]]


def test_clicks_on_our_buttons_parse() -> None:
    approve, deny = rendered_buttons()
    assert parse_interaction(click(approve)) == Interaction(
        user_id="U0BOB", team_id="T0001", action_id="accord_approve", action="approve",
        request_id=7, response_url="https://hooks.slack.com/actions/T0001/1234/abcdef")
    parsed = parse_interaction(click(deny))
    assert (parsed.action, parsed.request_id, parsed.action_id) == ("deny", 7, "accord_deny")


def test_a_click_without_response_url_still_parses() -> None:
    approve, _ = rendered_buttons()
    assert parse_interaction(click(approve, response_url=None)).response_url is None


BUTTON = {"type": "button", "action_id": "accord_approve", "value": "approve:7",
          "text": {"type": "plain_text", "text": "Approve"}}


@pytest.mark.parametrize(("body", "reason"), [
    (b"", "no payload"),
    (b"\xff\xfe", "not form-encoded"),
    (b"just some text", "not form-encoded"),
    (b"token=abc&team_id=T1", "no payload"),
    (b"payload=%7Bnot-json", "not JSON"),
    (b"payload=%5B1%2C2%5D", "not a JSON object"),
    (urlencode([("payload", "{}"), ("payload", "{}")]).encode(), "more than one"),
    (click(BUTTON, type="view_submission"), "unsupported interaction type"),
    (click(BUTTON, user={}), "user.id"),
    (click(BUTTON, actions=[]), "exactly one action"),
    (click(BUTTON, actions=[BUTTON, BUTTON]), "exactly one action"),
    (click({**BUTTON, "action_id": "other_app_button"}), "unknown action_id"),
    (click({**BUTTON, "value": "approve"}), "is not <approve|deny>"),
    (click({**BUTTON, "value": "delete:7"}), "is not <approve|deny>"),
    (click({**BUTTON, "value": "approve:seven"}), "no valid request id"),
    (click({**BUTTON, "value": "approve:0"}), "no valid request id"),
    (click({**BUTTON, "value": "approve:-3"}), "no valid request id"),
    (click({**BUTTON, "value": "deny:7"}), "does not match"),
    (click(BUTTON, response_url="http://evil.example/x"), "response_url"),
    (click(BUTTON, response_url="https://[::1"), "response_url"),
])
def test_garbage_is_refused_clearly(body: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        parse_interaction(body)


@pytest.mark.parametrize(("url", "allowed"), [
    ("https://hooks.slack.com/actions/T1/1/x", True),
    ("https://hooks.slack.com:443/actions/T1/1/x", True),
    ("https://HOOKS.SLACK.COM/actions/T1/1/x", True),
    ("https://hooks.slack.com:444/actions/T1/1/x", False),
    ("https://hooks.slack.com.evil.example/x", False),
    ("https://evilhooks.slack.com/x", False),
    ("https://user@hooks.slack.com/x", False),
    ("http://hooks.slack.com/x", False),
    ("https://a.grid.example/x", True),
    ("https://grid.example/x", False),
    ("https://a.evilgrid.example/x", False),
])
def test_response_url_hosts(url: str, allowed: bool) -> None:
    from accord.notify.slack import host_allowed

    assert host_allowed(url, ["hooks.slack.com", "*.grid.example"]) is allowed


def test_an_off_slack_response_url_is_refused_by_the_parser() -> None:
    from accord.notify.slack import UntrustedResponseUrl

    with pytest.raises(UntrustedResponseUrl, match=r"evil\.example"):
        parse_interaction(click(BUTTON, response_url="https://evil.example/x"))


@pytest.mark.parametrize("host", ["https://hooks.slack.com", "hooks.slack.com/x", "Hooks.Slack.com",
                                  "*", "localhost", "*.com.", ""])
def test_bad_response_hosts_are_policy_errors(host: str) -> None:
    from accord.spec.load import PolicyError, parse_policy_text

    text = (f"users: [alice]\nnotify: {{slack: {{webhook_url_env: X, "
            f"response_hosts: [{json.dumps(host)}]}}}}\n")
    with pytest.raises(PolicyError, match=r"notify\.slack\.response_hosts\[0\]"):
        parse_policy_text(text, "accord.yaml")
