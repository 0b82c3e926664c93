"""Ledger events shaped exactly as the services record them, accord.yaml variants with
notifications configured, and a local HTTP receiver."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from accord.ledger.events import Actor, EventType, PolicyRef, Via, envelope
from tests.conftest import POLICY

NOW = datetime(2030, 5, 6, 7, 8, 9, tzinfo=UTC)
BASE_URL = "https://accord.example.com/"
EVIL_REASON = "INC-42 <script>alert('x')</script> & <!channel>"
RES = {"name": "orders-db", "role": "read"}


def created(*, reason: str = EVIL_REASON, outcome: str = "steps") -> dict[str, Any]:
    return envelope(
        type=EventType.REQUEST_CREATED, time=NOW, actor=Actor.user("alice", Via.CLI),
        subject="request:7", resource=RES,
        data={"request_id": 7, "requester": "alice", "duration_seconds": 3600,
              "duration": "1h", "reason": reason, "extends_grant_id": None,
              "routing": {"outcome": outcome, "reason": "rule prod-read"},
              "steps": [{"approvers": ["group:leads"], "min_approvals": 1}],
              "pending_until": "2030-05-07T07:08:09.000000Z" if outcome == "steps" else None},
    )


def approved_by_people() -> dict[str, Any]:
    return envelope(
        type=EventType.REQUEST_APPROVED, time=NOW, actor=Actor.user("gina", Via.SLACK),
        subject="request:7", resource=RES,
        data={"request_id": 7, "approvers": [{"user": "bob", "step": 0, "via": "web"},
                                             {"user": "gina", "step": 1, "via": "slack"}]},
    )


def approved_by_policy() -> dict[str, Any]:
    return envelope(
        type=EventType.REQUEST_APPROVED, time=NOW, actor=Actor("policy", "staging", "policy"),
        subject="request:7", resource=RES,
        data={"request_id": 7, "reason": "staging is self-service", "inputs": {}},
        policy=PolicyRef("staging", "abc", "match"),
    )


def finished(kind: EventType, actor: Actor, why: str) -> dict[str, Any]:
    return envelope(type=kind, time=NOW, actor=actor, subject="request:7", resource=RES,
                    data={"request_id": 7, "reason": why})


def activated(**extra: Any) -> dict[str, Any]:
    return envelope(
        type=EventType.GRANT_ACTIVATED, time=NOW, actor=Actor.system(), subject="grant:3",
        resource=RES,
        data={"grant_id": 3, "request_id": 7, "user": "alice",
              "starts_at": "2030-05-06T07:08:09.000000Z",
              "ends_at": "2030-05-06T08:08:09.000000Z", **extra},
    )


def ended(kind: EventType, actor: Actor, comment: str = "") -> dict[str, Any]:
    return envelope(
        type=kind, time=NOW, actor=actor, subject="grant:3", resource=RES,
        data={"grant_id": 3, "user": "alice", "request_ids": [9, 7],
              "ends_at": "2030-05-06T08:08:09.000000Z",
              "ended_at": "2030-05-06T08:08:09.000000Z", "comment": comment},
    )


# ---------------------------------------------------------------- accord.yaml

SLACK_ENV = "ACCORD_TEST_SLACK_URL"  # the Slack webhook URL (a local receiver in tests)
PEOPLE = (
    "users: {alice: {email: alice@example.test, slack: U0ALICE}, "
    "bob: {email: bob@example.test, slack: U0BOB}, carol: {email: carol@example.test}, "
    "dave: {}, erin: {email: erin@example.test}, frank: {slack: U0FRANK}, gina: {}}"
)
_MATCH = {"staging": "    match: 'resource.labels.env == \"staging\"'\n",
          "prod": "    match: 'resource.labels.env == \"prod\"'\n"}


def notify_policy(*, smtp_port: int | None = 9, slack: bool = False,
                  workflows: dict[str, str] | None = None) -> str:
    """The shared POLICY with addresses for people, email and/or Slack configured, and
    `workflows` mapping a workflow name to its `notify:` value (YAML flow style)."""
    text = POLICY.replace("users: [alice, bob, carol, dave, erin, frank, gina]", PEOPLE)
    for name, value in (workflows or {}).items():
        text = text.replace(_MATCH[name], f"{_MATCH[name]}    notify: {value}\n")
    text += "notify:\n  base_url: https://accord.example.test\n"
    if smtp_port is not None:
        text += f"  email: {{host: 127.0.0.1, port: {smtp_port}, sender: accord@example.test}}\n"
    if slack:
        text += f"  slack: {{webhook_url_env: {SLACK_ENV}}}\n"
    return text


# ---------------------------------------------------------------- HTTP receiver


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A local HTTP server: answers `status`/`reply` (+ `headers`), records requests."""

    url: str
    status: int = 200
    reply: bytes = b"ok"
    headers: dict[str, str] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    server: Any

    def do_POST(self) -> None:
        receiver: Receiver = self.server.receiver
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        receiver.seen.append(Seen(self.path, dict(self.headers.items()), body))
        self.send_response(receiver.status)
        for name, value in receiver.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(receiver.reply)))
        self.end_headers()
        self.wfile.write(receiver.reply)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def http_receiver() -> Iterator[Receiver]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    receiver = Receiver(url=f"http://127.0.0.1:{server.server_address[1]}")
    server.receiver = receiver  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
