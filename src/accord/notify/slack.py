"""Requests from Slack: signature verification and button clicks.

Slack signs every request it sends (v0 scheme): `X-Slack-Signature` is `v0=` and the
hex HMAC-SHA256, under the app's signing secret, of `v0:<X-Slack-Request-Timestamp>:`
followed by the raw body. `verify` checks it in constant time and refuses timestamps
more than five minutes from now in either direction, so a captured request cannot be
replayed later. Check the raw bytes before parsing anything.

`parse_interaction` reads a `block_actions` payload (the body is form-encoded with one
`payload` field holding JSON) produced by the Approve/Deny buttons that
`accord.notify.channels.SlackChannel` attaches: action_id `accord_<action>`, value
`<action>:<request_id>`.

The payload's `response_url` is where the worker later posts the updated message, so it
must be Slack's: only https on port 443 of a host in `notify.slack.response_hosts`
(default `hooks.slack.com`, where Slack's response URLs live; `*.example.com` allows
that domain's subdomains). Any other host is refused before anything is decided or
queued, so a payload signed with a leaked secret cannot make the worker call into the
internal network.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

SIGNATURE_HEADER = "X-Slack-Signature"
TIMESTAMP_HEADER = "X-Slack-Request-Timestamp"
VERSION = "v0"
MAX_AGE = 300  # seconds between Slack signing a request and us accepting it
ACTIONS = frozenset({"approve", "deny"})
RESPONSE_HOSTS = ("hooks.slack.com",)  # where Slack's response_url points
RESPOND = "slack.respond"  # the job that updates a clicked message through its response_url


@dataclass(frozen=True)
class Verdict:
    """The outcome of a signature check; `reason` says what was wrong when not `ok`."""

    ok: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok


def signature(signing_secret: str | bytes, timestamp: str, body: bytes) -> str:
    """The `X-Slack-Signature` value Slack would send for `body` at `timestamp`."""
    key = signing_secret.encode() if isinstance(signing_secret, str) else signing_secret
    base = f"{VERSION}:{timestamp}:".encode() + body
    return f"{VERSION}=" + hmac.new(key, base, hashlib.sha256).hexdigest()


def verify(signing_secret: str | bytes, timestamp: str | None, body: bytes,
           signature_header: str | None, *, now: float | None = None,
           max_age: int = MAX_AGE) -> Verdict:
    """Is this request from Slack, signed within `max_age` seconds of `now`?

    `timestamp` and `signature_header` are the X-Slack-Request-Timestamp and
    X-Slack-Signature headers as received (None when absent); `body` the raw bytes.
    """
    if not signing_secret:
        return Verdict(False, "no Slack signing secret is configured")
    if not timestamp:
        return Verdict(False, f"missing {TIMESTAMP_HEADER} header")
    if not signature_header:
        return Verdict(False, f"missing {SIGNATURE_HEADER} header")
    if not (timestamp.isascii() and timestamp.isdigit()):
        return Verdict(False, f"{TIMESTAMP_HEADER} is not a unix time")
    current = time.time() if now is None else now
    skew = int(timestamp) - current
    if skew < -max_age:
        return Verdict(False, f"the request is too old ({int(-skew)} s; the limit is "
                              f"{max_age} s): a replay or a badly wrong clock")
    if skew > max_age:
        return Verdict(False, f"the request is dated {int(skew)} s in the future (the limit "
                              f"is {max_age} s): check the clocks")
    header = signature_header.strip()
    if not header.isascii() or not header.startswith(f"{VERSION}="):
        return Verdict(False, f"unsupported signature version (expected {VERSION}=...)")
    expected = signature(signing_secret, timestamp, body)
    if not hmac.compare_digest(expected.encode(), header.encode()):
        return Verdict(False, "signature mismatch: wrong signing secret or a modified body")
    return Verdict(True)


def verify_request(signing_secret: str | bytes, headers: Mapping[str, str], body: bytes, *,
                   now: float | None = None, max_age: int = MAX_AGE) -> Verdict:
    """`verify` reading the two headers from a mapping (names case-insensitive)."""
    folded = {k.lower(): v for k, v in headers.items()}
    return verify(signing_secret, folded.get(TIMESTAMP_HEADER.lower()), body,
                  folded.get(SIGNATURE_HEADER.lower()), now=now, max_age=max_age)


@dataclass(frozen=True)
class Interaction:
    """One Approve/Deny click."""

    user_id: str  # the Slack member id (matches `slack:` in accord.yaml's users)
    team_id: str | None
    action_id: str  # accord_approve | accord_deny
    action: str  # approve | deny
    request_id: int
    response_url: str | None  # where Slack accepts an update of the message (30 min)


class UntrustedResponseUrl(ValueError):
    """A well-formed click whose response_url is not on a Slack host we trust."""


def parse_interaction(raw_body: bytes, *,
                      response_hosts: Iterable[str] = RESPONSE_HOSTS) -> Interaction:
    """The click in a `block_actions` request body; ValueError says what is malformed
    (UntrustedResponseUrl when only the response_url's host is not allowed)."""
    try:
        text = raw_body.decode("utf-8")
        form = parse_qs(text, keep_blank_values=True, strict_parsing=True,
                        max_num_fields=20)
    except (UnicodeDecodeError, ValueError):
        raise ValueError("the body is not form-encoded (application/x-www-form-urlencoded)") \
            from None
    fields = form.get("payload")
    if not fields:
        raise ValueError("the body has no payload field")
    if len(fields) > 1:
        raise ValueError("the body has more than one payload field")
    try:
        payload = json.loads(fields[0])
    except ValueError:
        raise ValueError("the payload field is not JSON") from None
    if not isinstance(payload, dict):
        raise ValueError("the payload is not a JSON object")
    kind = payload.get("type")
    if kind != "block_actions":
        raise ValueError(f"unsupported interaction type {kind!r} (expected block_actions)")

    user = payload.get("user")
    user_id = user.get("id") if isinstance(user, dict) else None
    if not isinstance(user_id, str) or not user_id:
        raise ValueError("the payload has no user.id")
    team = payload.get("team")
    team_id = team.get("id") if isinstance(team, dict) else None

    actions = payload.get("actions")
    if not isinstance(actions, list) or len(actions) != 1 or not isinstance(actions[0], dict):
        raise ValueError("the payload must carry exactly one action")
    clicked: dict[str, Any] = actions[0]
    action_id, value = clicked.get("action_id"), clicked.get("value")
    if not isinstance(action_id, str) or not action_id.startswith("accord_"):
        raise ValueError(f"unknown action_id {action_id!r}")
    if not isinstance(value, str):
        raise ValueError("the action has no value")
    action, sep, tail = value.partition(":")
    if not sep or action not in ACTIONS:
        raise ValueError(f"the action value {value!r} is not <approve|deny>:<request id>")
    if not (tail.isascii() and tail.isdigit()) or int(tail) <= 0 or len(tail) > 18:
        raise ValueError(f"the action value {value!r} has no valid request id")
    if action_id != f"accord_{action}":
        raise ValueError(f"action_id {action_id!r} does not match the value {value!r}")

    response_url = payload.get("response_url")
    if response_url is not None and not _https(response_url):
        raise ValueError("response_url is not an https URL")
    if response_url is not None and not host_allowed(response_url, response_hosts):
        raise UntrustedResponseUrl(
            f"response_url points to {urlsplit(response_url).netloc}, which is not one of "
            f"notify.slack.response_hosts ({', '.join(response_hosts)})")
    return Interaction(
        user_id=user_id,
        team_id=team_id if isinstance(team_id, str) and team_id else None,
        action_id=action_id,
        action=action,
        request_id=int(tail),
        response_url=response_url,
    )


def host_allowed(url: str, hosts: Iterable[str]) -> bool:
    """Is `url` https on the default port of one of `hosts` ("*.x.com": x.com's subdomains)?"""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        return False
    host = parts.hostname or ""
    if parts.scheme != "https" or port not in (None, 443) or parts.username is not None:
        return False
    for allowed in hosts:
        if allowed.startswith("*."):
            if host.endswith(allowed[1:]):
                return True
        elif host == allowed:
            return True
    return False


def _https(url: Any) -> bool:
    if not isinstance(url, str):
        return False
    try:
        parts = urlsplit(url)
        return parts.scheme == "https" and bool(parts.hostname)
    except ValueError:
        return False
