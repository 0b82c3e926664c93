"""What a protocol's data path hands the audit trail: statements sent (`Run`), how each
ended (`Finished`), refusals (`Violation`), and who the session is (`SessionInfo`).

Protocol-neutral: a PostgreSQL statement, a MySQL query, an SSH command or an MCP tool call
is a `Run` alike; `protocol` says which sub-protocol carried it (it is one of
`spool.PROTOCOLS`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class Run:
    """One statement sent upstream: its text, parameters and how it ended."""

    __slots__ = ("infile", "masked", "params", "protocol", "rows", "seq", "t0", "text")

    def __init__(self, seq: int, protocol: str, text: bytes, params: object, t0: int) -> None:
        self.seq = seq
        self.protocol = protocol  # e.g. simple | extended | function (PostgreSQL)
        self.text = text
        self.params = params  # None, a parameter count (redacted), or a list of values
        self.t0 = t0  # perf_counter_ns when sent
        self.rows = 0  # rows seen (the command tag's count wins when it has one)
        self.masked: set[str] | None = None  # result columns whose values were masked
        # A file the client sent with it (MySQL's LOAD DATA LOCAL): {"bytes", "sha256"}.
        self.infile: dict[str, object] | None = None


# (run, command tag or None, rows or None, duration ns, (code, message) or None, outcome)
Finished = tuple[Run, str | None, int | None, int, tuple[str, str] | None, str]


class Violation:
    """A statement the session's role may not run: refused, never sent upstream.

    `escalation` names an attempt to leave the grant (`identity`, `encoding`, `server`),
    which the detectors alert on; None for an ordinary refusal. `reason`: why, when it is
    not the statement's classes but how it was sent (a parameter that is not UTF-8).
    """

    __slots__ = ("classes", "escalation", "missing", "protocol", "reason", "t0", "text")

    def __init__(self, text: bytes, classes: frozenset[str], missing: frozenset[str],
                 protocol: str, t0: int, escalation: str | None = None,
                 reason: str | None = None) -> None:
        self.text = text
        self.classes = classes
        self.missing = missing
        self.protocol = protocol
        self.t0 = t0
        self.escalation = escalation
        self.reason = reason


class GuardrailHit:
    """A statement that matched guardrail rules: what was done (`block`, `warn`, `review`),
    the rule that decided it and every rule it matched; for a review, the request and
    whether this run executed the approved statement."""

    __slots__ = ("action", "detail", "protocol", "request_id", "rule", "rules", "t0", "text")

    def __init__(self, text: bytes, protocol: str, t0: int, action: str, rule: str,
                 rules: tuple[str, ...], request_id: int | None = None,
                 detail: str = "") -> None:
        self.text = text
        self.protocol = protocol
        self.t0 = t0
        self.action = action
        self.rule = rule
        self.rules = rules
        self.request_id = request_id
        self.detail = detail  # review: executed | filed | pending | refused_again | ...


@dataclass
class SessionInfo:
    """Who a gateway session is, for its events."""

    id: str  # <instance>-<number>: unique across processes
    number: int
    grant_id: int
    user: str
    resource: str
    role: str
    client: str
    application: str
    tls: bool
    upstream_role: str | None
    opened_ns: int = 0  # perf_counter_ns
    owner: str | None = None  # set: `user` is an agent acting for `owner`
    statements: int = 0
    violations: int = 0

    def as_dict(self) -> dict[str, Any]:
        out = {"id": self.id, "number": self.number, "grant_id": self.grant_id,
               "user": self.user, "resource": self.resource, "role": self.role,
               "client": self.client, "application": self.application, "tls": self.tls,
               "upstream_role": self.upstream_role}
        if self.owner is not None:
            out["owner"] = self.owner
        return out

    @classmethod
    def of(cls, data: dict[str, Any]) -> SessionInfo:
        return cls(**{k: data[k] for k in ("id", "number", "grant_id", "user", "resource",
                                            "role", "client", "application", "tls",
                                            "upstream_role")}, owner=data.get("owner"))
