"""The report's data model: what every format (PDF, HTML, CSV, JSON) renders.

Period semantics: a request belongs to the period when it was *created* in
[start, end). Access shown is every grant that overlaps the period, so a grant
that began before the period (its request filed earlier) is listed too, marked
as carried over. Facts about each request (its outcome, its grant's end) are as
of the report's generation.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

Kind = Literal["access", "user", "resource"]
KINDS: tuple[Kind, ...] = ("access", "user", "resource")
Format = Literal["pdf", "csv", "json", "html"]
FORMATS: tuple[Format, ...] = ("pdf", "csv", "json", "html")
MEDIA_TYPES: dict[str, str] = {
    "pdf": "application/pdf",
    "csv": "text/csv; charset=utf-8",
    "json": "application/json",
    "html": "text/html; charset=utf-8",
}


class Outcome(enum.StrEnum):
    """What became of a request, as of the report's generation."""

    APPROVED = "approved"
    DENIED = "denied"
    CANCELLED = "cancelled"
    EXPIRED = "expired"  # nobody decided in time
    PENDING = "pending"


OUTCOMES: tuple[Outcome, ...] = tuple(Outcome)


class How(enum.StrEnum):
    """Who decided: people (approvals), a policy rule, break-glass, the requester, Accord."""

    PEOPLE = "people"
    POLICY = "policy"
    BREAK_GLASS = "break_glass"
    REQUESTER = "requester"
    SYSTEM = "system"
    UNDECIDED = "undecided"


@dataclass(frozen=True, slots=True)
class Params:
    """What was asked for. `start` None means from the beginning of the ledger."""

    kind: Kind
    start: datetime | None
    end: datetime
    resource: str | None = None
    user: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "from": _iso(self.start), "to": _iso(self.end),
                "resource": self.resource, "user": self.user}


@dataclass(frozen=True, slots=True)
class ApprovalLine:
    user: str
    decision: str  # approve | deny
    step: int  # 0-based
    via: str
    at: datetime
    comment: str


@dataclass(frozen=True, slots=True)
class Usage:
    """Use of a grant through the gateway."""

    first_used_at: datetime | None
    last_used_at: datetime | None
    statements: int
    sessions: int | None = None
    violations: int | None = None


@dataclass(slots=True)
class RequestLine:
    """One request, with its decision and the access it gave (if any)."""

    id: int
    requester: str
    resource: str
    role: str
    created_at: datetime
    created_via: str
    reason: str
    duration_seconds: int
    status: str  # the request's effective status now
    outcome: Outcome
    how: How
    decided_at: datetime | None
    decision_reason: str | None
    workflow: str | None
    policy_version: str | None
    rule: str | None
    approvals: tuple[ApprovalLine, ...]
    emergency: bool
    review: tuple[str, str, datetime, str] | None  # verdict, by, at, note
    extends_grant_id: int | None
    in_period: bool  # created in the period (False: listed for access carried over)
    grant_id: int | None = None
    access_start: datetime | None = None
    access_end: datetime | None = None  # when it ended, or is scheduled to
    access_end_status: str | None = None  # active | expired | revoked | relinquished | ...
    ended_by: str | None = None
    access_seconds: int = 0  # held so far (up to the report's generation)
    period_seconds: int = 0  # of which inside the period
    access_in_period: bool = False  # the grant overlaps the period
    usage: Usage | None = None

    @property
    def decision_seconds(self) -> float | None:
        if self.decided_at is None:
            return None
        return (self.decided_at - self.created_at).total_seconds()

    def decided_by(self) -> str:
        """Who decided and how, in words."""
        if self.how is How.PEOPLE:
            people = ", ".join(f"{a.user} ({a.decision}, step {a.step + 1}, via {a.via})"
                               for a in self.approvals)
            return people or "people"
        if self.how is How.POLICY:
            return (f"policy: workflow {self.workflow or '(none matched)'}, version "
                    f"{(self.policy_version or '')[:12]}, rule {self.rule}")
        if self.how is How.BREAK_GLASS:
            if self.review is None:
                return "break-glass (not yet reviewed)"
            verdict, by, _at, _note = self.review
            return f"break-glass, reviewed {verdict} by {by}"
        if self.how is How.REQUESTER:
            return f"withdrawn by {self.requester}"
        if self.how is How.SYSTEM:
            return f"accord: {self.decision_reason or self.outcome}"
        return "pending"


@dataclass(slots=True)
class Tally:
    """Counts for one resource (or for everything)."""

    name: str
    requests: int = 0  # created in the period
    outcomes: dict[str, int] = field(default_factory=lambda: {o.value: 0 for o in OUTCOMES})
    automatic: int = 0  # decided by a policy rule
    human: int = 0  # decided by people
    emergency: int = 0
    approvals: int = 0  # approval rows (approve or deny) on the period's requests
    grants: int = 0  # grants overlapping the period
    carried_over: int = 0  # of which began before the period
    users: set[str] = field(default_factory=set)  # who held access in the period
    access_seconds: int = 0  # access held inside the period, summed over grants
    decision_seconds: list[float] = field(default_factory=list)  # human decisions only
    statements: int = 0
    used_grants: int = 0
    alerts: int = 0

    @property
    def median_decision_seconds(self) -> float | None:
        values = sorted(self.decision_seconds)
        if not values:
            return None
        mid = len(values) // 2
        return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "requests": self.requests, "outcomes": dict(self.outcomes),
            "automatic": self.automatic, "human": self.human, "emergency": self.emergency,
            "approvals": self.approvals, "grants": self.grants,
            "carried_over": self.carried_over, "users": sorted(self.users),
            "access_seconds": self.access_seconds,
            "median_decision_seconds": self.median_decision_seconds,
            "statements": self.statements, "used_grants": self.used_grants,
            "alerts": self.alerts,
        }


@dataclass(frozen=True, slots=True)
class AlertLine:
    id: int
    rule: str
    severity: str
    status: str
    title: str
    user: str | None
    resource: str | None
    subject: str | None
    opened_at: datetime
    evidence: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class DecisionLine:
    """A decision the report's user made on someone else's request (user reports)."""

    request_id: int
    requester: str
    resource: str
    role: str
    decision: str
    step: int
    via: str
    at: datetime
    comment: str


@dataclass(slots=True)
class Check:
    """A number counted twice, from the tables and from the ledger: they must agree."""

    name: str
    tables: int
    ledger: int

    @property
    def ok(self) -> bool:
        return self.tables == self.ledger


@dataclass(slots=True)
class LedgerFacts:
    """The ledger's events in the period, counted from the ledger itself."""

    size: int  # entries integrated when the report was built
    events: int  # events whose time lies in the period
    first_index: int | None
    last_index: int | None
    by_type: dict[str, int]
    checks: list[Check]


@dataclass(frozen=True, slots=True)
class Evidence:
    origin: str
    key: str
    checkpoint_size: int
    checkpoint_root: str  # base64, as in the note
    checkpoint_note: str
    signed_at: datetime

    def commands(self) -> list[str]:
        return [
            "accord audit export --out ledger.bundle",
            f"accord audit verify --bundle ledger.bundle --key '{self.key}'"
            " --pin checkpoint.txt",
        ]


@dataclass(slots=True)
class Section:
    """One resource: its tally, its requests (and carried-over access), its alerts."""

    tally: Tally
    lines: list[RequestLine] = field(default_factory=list)
    alerts: list[AlertLine] = field(default_factory=list)


@dataclass(slots=True)
class Report:
    params: Params
    generated_at: datetime
    generated_by: str
    title: str
    sections: list[Section]
    totals: Tally
    timeline: list[tuple[str, dict[str, int]]]  # bucket label -> outcome counts
    timeline_unit: str  # day | week | month
    decision_buckets: list[tuple[str, int]]
    other_alerts: list[AlertLine]  # alerts naming no resource (or another one)
    decisions_by_user: list[DecisionLine]
    ledger: LedgerFacts
    usage_available: bool
    evidence: Evidence | None = None

    @property
    def period_text(self) -> str:
        start = _iso(self.params.start) or "the beginning"
        return f"requests created from {start} (inclusive) to {_iso(self.params.end)} (exclusive)"

    def lines(self) -> list[RequestLine]:
        return [line for s in self.sections for line in s.lines]


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.strftime("%Y-%m-%dT%H:%M:%SZ") if not value.microsecond \
        else value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def iso(value: datetime | None) -> str:
    """A UTC time as RFC 3339, or empty."""
    return _iso(value) or ""


def plural(n: int, word: str) -> str:
    """`1 request`, `2 requests`."""
    return f"{n} {word}" + ("" if n == 1 else "s")


def hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h"


def span(seconds: float | None) -> str:
    """A duration for people: 45s, 12m, 3h05m, 2d04h."""
    if seconds is None:
        return ""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"
