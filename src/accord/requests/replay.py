"""Replaying recorded requests under a candidate policy: what would change if it were loaded.

Every `request.created` event of a window is routed again under the candidate, from the
inputs it recorded (requester, resource, role, duration, reason, time, extension, break
glass), through the routing a filed request takes (`explain.reroute`), and compared with
what was recorded. A request changes by kind:

- `outcome`: approved / denied / pending / refused (what the API would refuse: over
  `max_duration`, a resource or role the candidate drops, a requester it does not know);
- `workflow`: the workflow that routed it (none: default deny);
- `rule`: the rule that decided (`match`, `auto_approve`, `auto_deny`, `default_deny`,
  `no_approvers`, ...), when the candidate decides at all (not refused);
- `approvers`: pending both ways, but with other steps or other eligible people. The
  ledger records each step's approver references, not the people: the recorded side is
  those references resolved under the version that decided (its stored text) over the
  directory as it is now, the same directory the candidate is compiled over, so only the
  policy's change shows.

Read-only: it reads the ledger, the stored policy versions and the directory, and writes
nothing (the caller rolls its session back).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import select
from sqlalchemy.orm import Session

from accord.ledger.events import EventType, format_time
from accord.ledger.models import LedgerEntry
from accord.people.snapshot import Directory
from accord.policy.engine import Policy, tracing
from accord.requests.explain import REFUSED, Recorded, Routed, reroute, stored_policy

KINDS = ("outcome", "workflow", "rule", "approvers")
BATCH = 2000  # ledger rows fetched at a time


@dataclass(frozen=True)
class Change:
    """One request the candidate would decide otherwise."""

    request_id: int
    time: datetime
    requester: str
    resource: str
    role: str
    kinds: list[str]
    recorded: dict[str, Any]
    candidate: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"request_id": self.request_id, "time": format_time(self.time),
                "requester": self.requester, "resource": self.resource, "role": self.role,
                "changes": self.kinds, "recorded": self.recorded, "candidate": self.candidate}


@dataclass(frozen=True)
class RuleError:
    """A rule of the candidate that could not be evaluated on some recorded requests (the
    server fails closed on it: a `match` does not match, an `auto_deny` denies, ...)."""

    workflow: str
    rule: str
    error: str
    requests: int
    first_request: int


@dataclass
class Report:
    candidate: str
    version: str
    since: datetime | None
    until: datetime
    requests: int = 0
    versions: Counter[str] = field(default_factory=Counter)
    changes: list[Change] = field(default_factory=list)
    errors: list[RuleError] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        counted = Counter(k for c in self.changes for k in c.kinds)
        return {k: counted.get(k, 0) for k in KINDS}

    def as_dict(self) -> dict[str, Any]:
        return {
            "candidate": self.candidate, "version": self.version,
            "since": format_time(self.since) if self.since else None,
            "until": format_time(self.until),
            "requests": self.requests, "changed": len(self.changes), "counts": self.counts,
            "versions": dict(self.versions.most_common()),
            "errors": [{"workflow": e.workflow, "rule": e.rule, "error": e.error,
                        "requests": e.requests, "first_request": e.first_request}
                       for e in self.errors],
            "changes": [c.as_dict() for c in self.changes],
        }


def _side(outcome: str, workflow: str | None, rule: str | None, steps: list[dict[str, Any]],
          eligible: list[list[str]] | None, reason: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"outcome": outcome, "workflow": workflow, "rule": rule,
                           "steps": [{"approvers": s.get("approvers", []),
                                      "min_approvals": s.get("min_approvals", 1),
                                      **({"eligible": eligible[i]} if eligible is not None
                                         and i < len(eligible) else {})}
                                     for i, s in enumerate(steps)]}
    if reason is not None:
        out["reason"] = reason
    return out


def _plan(steps: list[dict[str, Any]]) -> list[tuple[tuple[str, ...], int, bool]]:
    return [(tuple(s.get("approvers", [])), int(s.get("min_approvals", 1)),
             bool(s.get("elevated"))) for s in steps]


class _Baseline:
    """The recorded steps' eligible people, under the version that decided each request."""

    def __init__(self, session: Session, directory: Directory) -> None:
        self._session = session
        self._directory = directory
        self._policies: dict[str, Policy | None] = {}

    def eligible(self, rec: Recorded) -> list[list[str]] | None:
        if rec.version not in self._policies:
            self._policies[rec.version] = stored_policy(self._session, rec.version,
                                                        self._directory).policy
        policy = self._policies[rec.version]
        if policy is None:
            return None  # not stored: the references alone are compared
        return [sorted(policy.eligible(step, rec.resource, rec.requester) - {rec.requester})
                for step in rec.steps]


def compare(rec: Recorded, routed: Routed, recorded_eligible: list[list[str]] | None
            ) -> list[str]:
    """The kinds of change between what was recorded and what a policy makes of it now."""
    kinds = []
    if routed.outcome != rec.outcome:
        kinds.append("outcome")
    if routed.workflow != rec.workflow:
        kinds.append("workflow")
    if routed.outcome != REFUSED and routed.rule != rec.rule:
        kinds.append("rule")
    if rec.outcome == "pending" and routed.outcome == "pending" and (
            _plan(rec.steps) != _plan(routed.steps)
            or (recorded_eligible is not None and recorded_eligible != routed.eligible)):
        kinds.append("approvers")
    return kinds


def recorded_requests(session: Session, *, since: datetime | None, until: datetime,
                      batch: int = BATCH) -> Any:
    """Every `request.created` event of the window, oldest first, as Recorded."""
    q = (select(LedgerEntry.leaf, LedgerEntry.idx)
         .where(LedgerEntry.type == str(EventType.REQUEST_CREATED), LedgerEntry.time <= until)
         .order_by(LedgerEntry.id))
    if since is not None:
        q = q.where(LedgerEntry.time >= since)
    for leaf, idx in session.execute(q.execution_options(yield_per=batch)):
        yield Recorded.of(orjson.loads(bytes(leaf)), idx)


def replay(session: Session, candidate: Policy, *, since: datetime | None, until: datetime,
           progress: Callable[[int], None] | None = None) -> Report:
    """Route every request filed in [since, until] again under `candidate` (compiled over
    the directory as it is now) and report those it would decide otherwise."""
    report = Report(candidate=candidate.loaded.source, version=candidate.version,
                    since=since, until=until)
    baseline = _Baseline(session, candidate.directory)
    errors: dict[tuple[str, str, str], list[int]] = {}
    with tracing(errors_only=True) as trace:
        for rec in recorded_requests(session, since=since, until=until):
            routed = reroute(candidate, rec)
            if trace:
                for e in trace:
                    seen = errors.setdefault((e.workflow, e.rule, str(e.error)),
                                             [0, rec.request_id])
                    seen[0] += 1
                trace.clear()
            report.requests += 1
            report.versions[rec.version] += 1
            both_pending = rec.outcome == "pending" and routed.outcome == "pending"
            recorded_eligible = baseline.eligible(rec) if both_pending else None
            kinds = compare(rec, routed, recorded_eligible)
            if kinds and rec.outcome == "pending" and recorded_eligible is None:
                recorded_eligible = baseline.eligible(rec)  # who it waited for, to show
            if kinds:
                report.changes.append(Change(
                    rec.request_id, rec.time, rec.requester, rec.resource, rec.role, kinds,
                    _side(rec.outcome, rec.workflow, rec.rule, rec.steps, recorded_eligible),
                    _side(routed.outcome, routed.workflow, routed.rule, routed.steps,
                          routed.eligible if routed.outcome == "pending" else None,
                          routed.reason if routed.outcome == REFUSED else None)))
            if progress is not None and report.requests % 10_000 == 0:
                progress(report.requests)
    report.errors = [RuleError(w, r, e, n, first) for (w, r, e), (n, first) in errors.items()]
    return report
