"""Why a request was decided as it was: its decision reproduced from what the ledger recorded.

A request's `request.created` event carries what routing took (requester, resource, role,
duration, reason, time, whether it extends a grant or breaks the glass), what it decided
(workflow, rule, outcome, the plan of steps), the policy version that decided it, and the
CEL inputs it evaluated. `explain` takes that version's stored text, routes the recorded
request again through the routing a filed request takes (`reroute`: `service.route`, or
`service.break_glass` for an emergency), collects every check it made on the way
(`engine.tracing`), and compares the outcome with what was recorded: any difference is a
`mismatch`, said loudly by every reader (API, CLI, web page).

Reproducing needs the directory as it was, which is not kept: the decision is reproduced
over the directory as it is now. When the routing looked at people or groups the identity
provider pushed and the directory changed since the request, the explanation says so (and
which inputs now differ from the recorded ones): best effort, a difference there is the
directory's, not the policy's.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections import OrderedDict
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from accord.durations import format_duration
from accord.errors import AccordError
from accord.ledger.events import EventType, format_time
from accord.ledger.models import LedgerEntry
from accord.people.models import DirectoryChange
from accord.people.snapshot import Directory
from accord.policy.engine import Evaluation, Policy, tracing
from accord.policy.models import PolicyVersion
from accord.requests import service
from accord.requests.models import AccessRequest
from accord.spec.load import PolicyError, parse_policy_text

OUTCOMES = {"approve": "approved", "deny": "denied", "steps": "pending"}
REFUSED = "refused"  # what the API answers 4xx (over max_duration, no reason, unknown user)


@dataclass(frozen=True)
class Recorded:
    """A request as its `request.created` event recorded it: what routing took and made."""

    request_id: int
    index: int | None  # its leaf in the ledger (None: not integrated yet)
    time: datetime
    requester: str
    resource: str
    role: str
    duration: timedelta
    reason: str
    extension: bool
    emergency: bool
    version: str
    workflow: str | None
    rule: str
    outcome: str  # approved | denied | pending
    decided: str  # the decision in words
    steps: list[dict[str, Any]]  # the plan: name, approvers, min_approvals, elevated
    inputs: dict[str, Any]
    kind: str = "access"  # statement: `statement` is its SQL
    statement: str = ""

    @classmethod
    def of(cls, event: dict[str, Any], index: int | None = None) -> Recorded:
        data = event.get("data") or {}
        ref = event.get("policy") or {}
        resource = event.get("resource") or {}
        emergency = bool(data.get("emergency"))
        workflow = ref.get("name") or None
        if emergency or workflow == service.BREAK_GLASS:
            workflow = None
        routing = data.get("routing") or {}
        return cls(
            request_id=int(data["request_id"]),
            index=index,
            time=datetime.fromisoformat(event["time"]),
            requester=str(data.get("requester") or event["actor"]["id"]),
            resource=str(resource.get("name")),
            role=str(resource.get("role")),
            duration=timedelta(seconds=int(data.get("duration_seconds") or 0)),
            reason=str(data.get("reason") or ""),
            extension=data.get("extends_grant_id") is not None,
            emergency=emergency,
            version=str(ref.get("version") or ""),
            workflow=workflow,
            rule=str(ref.get("rule") or ""),
            outcome=OUTCOMES.get(str(routing.get("outcome")), str(routing.get("outcome"))),
            decided=str(routing.get("reason") or ""),
            steps=list(data.get("steps") or []),
            inputs=dict(data.get("inputs") or {}),
            kind=str(data.get("kind") or "access"),
            statement=str((data.get("statement") or {}).get("sql") or ""),
        )


@dataclass(frozen=True)
class Routed:
    """What a policy makes of a recorded request (outcome `refused`: the API would refuse
    it, `reason` says why)."""

    outcome: str
    workflow: str | None
    rule: str | None
    reason: str
    steps: list[dict[str, Any]] = field(default_factory=list)
    eligible: list[list[str]] = field(default_factory=list)
    inputs: dict[str, Any] = field(default_factory=dict)


def reroute(policy: Policy, rec: Recorded) -> Routed:
    """Route a recorded request again under `policy`, as `service.create` routes a filed one
    (its caller must be one of the policy's users, as the API's authentication demands)."""
    if not policy.is_principal(rec.requester):
        return Routed(REFUSED, None, None,
                      f'"{rec.requester}" is not a user under this policy')
    try:
        decision, eligible = service.decide(
            policy, requester=rec.requester, resource=rec.resource, role=rec.role,
            duration=rec.duration, reason=rec.reason, now=rec.time, emergency=rec.emergency,
            extension=rec.extension, kind=rec.kind, statement=rec.statement)
    except AccordError as exc:
        return Routed(REFUSED, _matched(policy, rec), None,
                      f"{exc.field}: {exc.detail}" if exc.field else exc.detail)
    pending = decision.outcome == "steps"
    return Routed(
        outcome=OUTCOMES[decision.outcome],
        workflow=decision.workflow,
        rule=decision.rule,
        reason=decision.reason,
        steps=[s.as_dict() for s in decision.steps],
        eligible=[sorted(people) for people in eligible] if pending else [],
        inputs=decision.inputs,
    )


def _matched(policy: Policy, rec: Recorded) -> str | None:
    """The workflow that matched a request the routing refused (over its max_duration, no
    reason): the routing's own trace says which (none when it refused before matching)."""
    if rec.emergency:
        return None
    with tracing() as trace, suppress(AccordError):
        service.route(policy, requester=rec.requester, resource=rec.resource,
                      role=rec.role, duration=rec.duration, reason=rec.reason,
                      now=rec.time, extension=rec.extension, kind=rec.kind,
                      statement=rec.statement)
    return next((e.workflow for e in trace if e.rule == "match" and e.result), None)


def created_event(session: Session, request_id: int) -> tuple[dict[str, Any], int | None] | None:
    """The `request.created` event of a request, and its ledger index."""
    row = session.execute(
        select(LedgerEntry.leaf, LedgerEntry.idx)
        .where(LedgerEntry.subject == f"request:{request_id}",
               LedgerEntry.type == str(EventType.REQUEST_CREATED))
        .order_by(LedgerEntry.id).limit(1)
    ).first()
    if row is None:
        return None
    event: dict[str, Any] = orjson.loads(bytes(row[0]))
    return event, row[1]


# ---------------------------------------------------------------- stored policy versions


class VersionCache:
    """Compiled policy versions by the sha256 of their stored text and their source (a
    changed text is another entry, never the one compiled before), the last few only."""

    def __init__(self, size: int = 8) -> None:
        self._size = size
        self._items: OrderedDict[str, Policy] = OrderedDict()
        self._lock = threading.Lock()

    def policy(self, text: str, source: str, directory: Directory) -> Policy:
        """Raises PolicyError when the text does not load."""
        key = hashlib.sha256(text.encode()).hexdigest() + source
        with self._lock:
            cached = self._items.get(key)
            if cached is not None:
                self._items.move_to_end(key)
        if cached is None:
            cached = Policy(parse_policy_text(text, source), directory)
            with self._lock:
                self._items[key] = cached
                while len(self._items) > self._size:
                    self._items.popitem(last=False)
        return cached.with_directory(directory)


VERSIONS = VersionCache()


@dataclass(frozen=True)
class Stored:
    """A policy version as stored, compiled (None: not stored, or its text does not load),
    and whether its text still hashes to the version it is stored as."""

    policy: Policy | None
    stored: bool
    intact: bool
    problem: str | None


def stored_policy(session: Session, version: str, directory: Directory) -> Stored:
    """Policy version `version` as stored, over `directory`."""
    row = session.get(PolicyVersion, version)
    if row is None:
        return Stored(None, False, False, f"policy version {version[:12]} is not stored: the "
                                          "decision cannot be reproduced")
    try:
        policy = VERSIONS.policy(row.text, row.source, directory)
    except PolicyError as exc:
        return Stored(None, True, False, f"the stored text of policy version {version[:12]} "
                                         f"no longer loads ({exc}): the decision cannot be "
                                         "reproduced")
    if policy.version != version:
        return Stored(policy, True, False,
                      f"the stored text of policy version {version[:12]} hashes to "
                      f"{policy.version[:12]}: it was changed after it decided")
    return Stored(policy, True, True, None)


# ---------------------------------------------------------------- explain

_INPUT = re.compile(r"\b(?:request|resource)(?:\.[A-Za-z_]\w*)+")


def referenced_inputs(expression: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """The inputs a rule reads, by path (`request.requester.groups`), with their values; a
    path the inputs lack is shown as absent (None) where it stops."""
    out: dict[str, Any] = {}
    for m in _INPUT.finditer(expression):
        parts = m.group(0).split(".")
        node: Any = inputs
        path: list[str] = []
        for part in parts:
            if not isinstance(node, dict):
                break  # a method on a value: request.time.getHours()
            path.append(part)
            if part not in node:
                node = None
                break
            node = node[part]
        out[".".join(path)] = node
    return out


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def _decision(outcome: str, workflow: str | None, rule: str | None) -> str:
    said = outcome
    if workflow or rule:
        said += " (" + ", ".join(x for x in (workflow and f"workflow {workflow}",
                                             rule and f"rule {rule}") if x) + ")"
    return said


def _workflows(policy: Policy, trace: list[Evaluation], inputs: dict[str, Any]
               ) -> list[dict[str, Any]]:
    """Each workflow in order: what its checks gave (from the routing's own trace)."""
    out = []
    for order, w in enumerate(policy.workflows):
        checks = [{"rule": e.rule, "expression": e.expression, "result": e.result,
                   "error": e.error, "inputs": referenced_inputs(e.expression, inputs)}
                  for e in trace if e.workflow == w.spec.name]
        match = next((c for c in checks if c["rule"] == "match"), None)
        if match is None:
            status = "not reached"  # an earlier workflow matched (or none was asked)
        elif match["error"]:
            status = "error"
        else:
            status = "matched" if match["result"] else "no match"
        out.append({"name": w.spec.name, "order": order + 1, "match": w.spec.match,
                    "status": status, "checks": checks})
    return out


def _directory_use(directory: Directory, rec: Recorded, routed: Routed | None,
                   policy: Policy | None) -> bool:
    """Whether the routing looked at anyone or any group the identity provider pushed."""
    if not directory.users and not directory.groups:
        return False
    if rec.requester in directory.users:
        return True
    groups = set((rec.inputs.get("request") or {}).get("requester", {}).get("groups") or [])
    if routed is not None:
        groups |= set((routed.inputs.get("request") or {}).get("requester", {})
                      .get("groups") or [])
        if any(p in directory.users for step in routed.eligible for p in step):
            return True
    refs = {ref.removeprefix("group:") for step in rec.steps for ref in step.get("approvers", [])}
    if policy is not None and rec.resource in policy.resources:
        refs |= {o.removeprefix("group:") for o in policy.resources[rec.resource].owners}
    return bool((groups | refs) & directory.groups.keys())


def explain(session: Session, *, req: AccessRequest, directory: Directory,
            in_force: str | None = None) -> dict[str, Any]:
    """The decision of `req` reproduced under the policy version that made it, every check
    the routing made, and each way the reproduction differs from the record (`mismatch`)."""
    mismatch: list[str] = []
    notes: list[str] = []
    found = created_event(session, req.id)
    if found is None:
        return {"request_id": req.id, "ledger_index": None, "policy": None, "request": None,
                "recorded": None, "reproduced": None, "workflows": [], "inputs": {},
                "inputs_differ": [], "approvers": None, "directory": None, "notes": [],
                "mismatch": [f"the ledger holds no request.created event for request {req.id}"]}
    event, index = found
    rec = Recorded.of(event, index)
    mismatch += _row_differs(req, rec)
    stored_version = stored_policy(session, rec.version, directory)
    if stored_version.problem:
        mismatch.append(stored_version.problem)
    policy = stored_version.policy
    routed: Routed | None = None
    workflows: list[dict[str, Any]] = []
    if policy is not None:
        with tracing() as trace:
            routed = reroute(policy, rec)
        workflows = [] if rec.emergency else _workflows(policy, trace, routed.inputs)
        if routed.outcome != rec.outcome:
            mismatch.append(f"outcome: recorded {rec.outcome}, reproduced {routed.outcome}"
                            + (f" ({routed.reason})" if routed.outcome == REFUSED else ""))
        if routed.workflow != rec.workflow:
            mismatch.append(f"workflow: recorded {rec.workflow or 'none'}, reproduced "
                            f"{routed.workflow or 'none'}")
        if routed.outcome != REFUSED and routed.rule != rec.rule:
            mismatch.append(f"rule: recorded {rec.rule}, reproduced {routed.rule}")
        if routed.outcome != REFUSED and routed.steps != rec.steps:
            mismatch.append("steps: the reproduced plan differs from the recorded one")
    differ = []
    if routed is not None and routed.inputs and not rec.emergency:
        was, now = _flatten(rec.inputs), _flatten(routed.inputs)
        differ = [{"path": p, "recorded": was.get(p), "reproduced": now.get(p)}
                  for p in sorted(was.keys() | now.keys()) if was.get(p) != now.get(p)]
    used = _directory_use(directory, rec, routed, policy)
    changed = session.execute(select(func.count()).select_from(DirectoryChange)
                              .where(DirectoryChange.at > rec.time)).scalar_one() if used else 0
    directory_note = None
    if used:
        directory_note = (
            "this decision involves people or groups from the identity provider's directory, "
            + (f"which changed {changed} time(s) since the request was filed; it is reproduced "
               "over the directory as it is now, so group-based rules and eligible people may "
               "differ from then (the recorded inputs hold the requester's groups as they were)"
               if changed else "which has not changed since the request was filed"))
        notes.append(directory_note)
    if differ:
        notes.append("inputs differ from the recorded ones: "
                     + ", ".join(str(d["path"]) for d in differ))
    stored = service.step_approvers(session, [req.id])[req.id]
    stored_steps = [stored.get(i, []) for i in range(len(rec.steps))] if rec.steps else []
    approvers = None
    if routed is not None and rec.outcome == "pending":
        same = stored_steps == routed.eligible
        approvers = {"stored": stored_steps, "reproduced": routed.eligible, "same": same}
        if not same:
            notes.append("the eligible approvers stored with the request differ from the "
                         "reproduced ones (a reload recomputes them for pending requests; a "
                         "directory change moves them)")
    if rec.emergency:
        notes.append("break-glass: granted by the break_glass section, not routed by "
                     "workflows")
    return {
        "request_id": req.id,
        "ledger_index": rec.index,
        "policy": {
            "version": rec.version,
            "source": policy.loaded.source if policy is not None else None,
            "stored": stored_version.stored,
            "intact": stored_version.intact,
            "in_force": in_force == rec.version if in_force else None,
        },
        "request": {
            "requester": rec.requester, "resource": rec.resource, "role": rec.role,
            "duration": format_duration(rec.duration), "reason": rec.reason,
            "time": format_time(rec.time), "extension": rec.extension,
            "emergency": rec.emergency,
        },
        "recorded": {"outcome": rec.outcome, "workflow": rec.workflow, "rule": rec.rule,
                     "reason": rec.decided, "steps": rec.steps,
                     "said": _decision(rec.outcome, rec.workflow, rec.rule)},
        "reproduced": None if routed is None else {
            "outcome": routed.outcome, "workflow": routed.workflow, "rule": routed.rule,
            "reason": routed.reason, "steps": routed.steps, "eligible": routed.eligible,
            "said": _decision(routed.outcome, routed.workflow, routed.rule)},
        "workflows": workflows,
        "inputs": rec.inputs,
        "inputs_differ": differ,
        "approvers": approvers,
        "directory": {"used": used, "changed_since": changed if used else None,
                      "note": directory_note},
        "notes": notes,
        "mismatch": mismatch,
    }


def _row_differs(req: AccessRequest, rec: Recorded) -> list[str]:
    """Where the request's row says otherwise than its ledger event (a changed row)."""
    out = []
    pairs: list[tuple[str, Any, Any]] = [
        ("requester", req.requester, rec.requester), ("resource", req.resource, rec.resource),
        ("role", req.role, rec.role),
        ("duration", int(req.duration_seconds), int(rec.duration.total_seconds())),
        ("reason", req.reason, rec.reason), ("policy_version", req.policy_version, rec.version),
        ("workflow", req.workflow or None, rec.workflow), ("rule", req.rule, rec.rule),
        ("steps", list((req.plan or {}).get("steps", [])), rec.steps),
    ]
    for name, row, ledger in pairs:
        if row != ledger:
            out.append(f"the request's row says {name} {_short(row)} but the ledger recorded "
                       f"{_short(ledger)}")
    return out


def _short(value: Any) -> str:
    if isinstance(value, list):
        return "a different plan" if value else "no steps"
    text = "none" if value is None else str(value)
    return text[:12] if len(text) == 64 else text


def may_explain(policy: Policy, user: str, req: AccessRequest) -> bool:
    """Explanations are for the requester, admins and auditors."""
    return user == req.requester or user in policy.admins or user in policy.auditors
