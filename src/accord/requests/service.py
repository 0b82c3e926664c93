"""The access request state machine. Every transition writes its ledger event; nothing commits.

    pending ─approve(last step)─▶ approved ─▶ active ─▶ expired | revoked | relinquished
    pending ─▶ denied | cancelled | expired (nobody decided within expire_after)

One permission check per command. Approvals count distinct people (`>=`
min_approvals) and a person decides a request once, so nobody serves on two
steps and a double click cannot count twice. So the steps must be fillable jointly
(`policy.satisfiable`): a plan that cannot be is refused at creation (or given the
workflow's escalation group), an approval that would make it so is refused, and a pending
request that becomes so is escalated or denied at once.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import ColumnElement, and_, delete, exists, false, or_, select, tuple_
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from accord.db import skip_locked
from accord.durations import format_duration
from accord.errors import AccordError, Conflict, Forbidden, Invalid, NotFound
from accord.grants import service as grants
from accord.grants.models import Grant, GrantStatus
from accord.identity.caller import Caller as Caller  # commands take it: re-exported
from accord.jobs import service as jobs
from accord.ledger import service as ledger
from accord.ledger.events import Actor, EventType, PolicyRef, format_time
from accord.policy import satisfiable as sat
from accord.policy.engine import Decision, Policy, PolicyRefusal
from accord.requests.models import (
    ACCESS,
    STATEMENT,
    TERMINAL,
    TOOL_CALL,
    AccessRequest,
    Approval,
    RequestApprover,
    StatementReview,
    Status,
)
from accord.spec.resources import ResourceSpec


def _resource(req: AccessRequest) -> dict[str, Any]:
    return {"name": req.resource, "role": req.role}


def _record(session: Session, req: AccessRequest, type: EventType, *, actor: Actor,
            now: datetime, policy: PolicyRef | None = None, **data: Any) -> None:
    """Record one event about `req`: its subject, resource and `request_id` are the request's."""
    ledger.record(session, type=type, actor=actor, subject=f"request:{req.id}",
                  resource=_resource(req), data={"request_id": req.id, **data}, policy=policy,
                  time=now)


def _provisioned(policy: Policy, req: AccessRequest) -> bool:
    spec = policy.resources.get(req.resource)
    return spec is not None and spec.provision is not None


def _warn_before(policy: Policy) -> timedelta | None:
    """How long before its end a grantee is warned, when anyone can be told at all."""
    spec = policy.loaded.spec.notify
    return spec.expiry_warning if (spec.email or spec.slack) else None


def statement_data(review: StatementReview) -> dict[str, Any]:
    """A statement review as its `request.created` event carries it: what approvers see
    and what binds the approval to the one execution (`sha256`)."""
    return {"sql": review.statement, "sha256": review.sha256, "params": review.params,
            "param_count": review.param_count, "protocol": review.protocol,
            "grant_id": review.grant_id, "session": review.session, "rule": review.rule,
            "window_seconds": review.window_seconds}


def _statement_approved(req: AccessRequest, now: datetime) -> dict[str, Any]:
    """An approved statement review: the window to run it starts (the event's data)."""
    review = req.statement if req.kind == STATEMENT else None
    if review is None:
        return {}
    review.run_by = now + timedelta(seconds=review.window_seconds)
    return {"sha256": review.sha256, "run_by": format_time(review.run_by)}


def _policy_actor(decision_workflow: str | None) -> Actor:
    return Actor("policy", decision_workflow or "default-deny", "policy")


# ---------------------------------------------------------------- reads


def effective_status(req: AccessRequest, grant: Grant | None, now: datetime) -> str:
    """The status as of `now`: expiry holds on every read, before the sweeper records it."""
    if req.status == Status.PENDING and req.pending_until is not None and req.pending_until <= now:
        return Status.EXPIRED
    if req.status == Status.APPROVED and req.kind == STATEMENT and req.statement is not None \
            and req.statement.run_by is not None and req.statement.run_by <= now:
        return Status.EXPIRED  # an approved statement not run within its window
    if req.status == Status.ACTIVE and grant is not None:
        g = grants.effective_status(grant, now)
        if g != GrantStatus.ACTIVE:
            return g
    return req.status


def is_request_approver(session: Session, req: AccessRequest, user: str) -> bool:
    """Eligible for some step of this request (kept after it is decided, for history)."""
    return session.execute(
        select(RequestApprover.username).where(
            RequestApprover.request_id == req.id, RequestApprover.username == user
        ).limit(1)
    ).first() is not None


def can_view(session: Session, policy: Policy, user: str, req: AccessRequest) -> bool:
    """Requester, admins, auditors, the resource's owners, and the request's approvers.

    Approvers are those of its steps (rows kept from when it was routed) and, for
    requests a rule decided alone, those of the workflow that routed it (from the policy,
    so nothing needs storing on the hot auto-approve path).
    """
    glass = policy.loaded.spec.break_glass
    return (
        user == req.requester
        or user == policy.owner_of(req.requester)
        or (req.emergency and glass is not None and user in members(policy, glass.reviewers))
        or user in policy.admins
        or user in policy.auditors
        or user in policy.owners_of(req.resource)
        or user in policy.workflow_approvers(req.workflow, req.resource)
        or is_request_approver(session, req, user)
    )


def current_approvers(policy: Policy, req: AccessRequest) -> frozenset[str]:
    """Who approves this request under the policy in force now (group changes apply)."""
    steps: list[dict[str, Any]] = list(req.plan.get("steps", []))
    if not steps and req.workflow:
        for w in policy.workflows:
            if w.spec.name == req.workflow:
                specs = list(w.spec.steps)
                if w.spec.elevated and req.role in w.spec.elevated.roles:
                    specs += w.spec.elevated.steps
                steps = [{"approvers": s.approvers} for s in specs]
    out: set[str] = set()
    for step in steps:
        out |= policy.eligible(step, req.resource, req.requester)
    return frozenset(out)


def visible_clause(policy: Policy, user: str) -> Any:
    """SQL twin of can_view for lists (None: everything is visible)."""
    if user in policy.admins or user in policy.auditors:
        return None
    glass = policy.loaded.spec.break_glass
    reviewer = glass is not None and user in members(policy, glass.reviewers)
    return or_(
        AccessRequest.requester.in_([user, *policy.agents_of(user)]),
        AccessRequest.emergency.is_(True) if reviewer else false(),
        AccessRequest.resource.in_(policy.owned_by(user)),
        _routed_by_clause(policy, user),
        exists().where(
            RequestApprover.request_id == AccessRequest.id, RequestApprover.username == user
        ),
    )


def _routed_by_clause(policy: Policy, user: str) -> Any:
    """Requests routed by a workflow whose steps `user` approves on that resource."""
    pairs = policy.approver_pairs(user)
    if not pairs:
        return false()
    return tuple_(AccessRequest.workflow, AccessRequest.resource).in_(pairs)


def get_request(
    session: Session, *, policy: Policy, user: str, request_id: int, lock: bool = False
) -> AccessRequest:
    """A request the caller may see, else 404 (not 403: ids of others' requests stay private)."""
    q = select(AccessRequest).where(AccessRequest.id == request_id)
    if lock:
        q = q.with_for_update()
    req = session.execute(q).scalar_one_or_none()
    if req is None or not can_view(session, policy, user, req):
        raise NotFound(f"request {request_id} does not exist or is not visible to you")
    return req


def list_requests(
    session: Session,
    *,
    policy: Policy,
    user: str,
    now: datetime,
    status: str | None = None,
    resource: str | None = None,
    requester: str | None = None,
    role: str | None = None,
    awaiting_me: bool = False,
    approver: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    before_id: int | None = None,
    limit: int = 50,
) -> list[AccessRequest]:
    """Requests visible to `user`, newest first, keyset-paginated by id."""
    q = select(AccessRequest).order_by(AccessRequest.id.desc()).limit(limit)
    visible = visible_clause(policy, user)
    if visible is not None:
        q = q.where(visible)
    if status:
        q = q.where(status_clause(status, now))
    if resource:
        q = q.where(AccessRequest.resource == resource)
    if requester:
        q = q.where(AccessRequest.requester == requester)
    if role:
        q = q.where(AccessRequest.role == role)
    if approver:  # someone who decided on it (approved or denied)
        q = q.where(exists().where(Approval.request_id == AccessRequest.id,
                                   Approval.approver == approver))
    if since is not None:
        q = q.where(AccessRequest.created_at >= since)
    if until is not None:
        q = q.where(AccessRequest.created_at < until)
    if before_id is not None:
        q = q.where(AccessRequest.id < before_id)
    if awaiting_me:
        q = q.where(
            status_clause(Status.PENDING, now),
            exists().where(
                RequestApprover.request_id == AccessRequest.id,
                RequestApprover.step == AccessRequest.current_step,
                RequestApprover.username == user,
            ),
            ~exists().where(Approval.request_id == AccessRequest.id, Approval.approver == user),
        )
    return list(session.execute(q).scalars().all())


def status_clause(status: str, now: datetime) -> Any:
    """SQL for an effective status, so filters agree with what reads show."""
    grant_over = exists().where(
        Grant.id == AccessRequest.grant_id, Grant.status == GrantStatus.ACTIVE, Grant.ends_at <= now
    )
    if status == Status.PENDING:
        return and_(AccessRequest.status == Status.PENDING, AccessRequest.pending_until > now)
    if status == Status.ACTIVE:
        return and_(AccessRequest.status == Status.ACTIVE, ~grant_over)
    if status == Status.EXPIRED:
        return or_(
            AccessRequest.status == Status.EXPIRED,
            and_(AccessRequest.status == Status.PENDING, AccessRequest.pending_until <= now),
            and_(AccessRequest.status == Status.ACTIVE, grant_over),
        )
    return AccessRequest.status == status


def step_approvers(session: Session, request_ids: list[int]) -> dict[int, dict[int, list[str]]]:
    """Eligible users per step for each request: {request_id: {step: [users]}}."""
    out: dict[int, dict[int, list[str]]] = {rid: {} for rid in request_ids}
    if not request_ids:
        return out
    rows = session.execute(
        select(RequestApprover).where(RequestApprover.request_id.in_(request_ids))
    ).scalars()
    for row in rows:
        out[row.request_id].setdefault(row.step, []).append(row.username)
    for steps in out.values():
        for users in steps.values():
            users.sort()
    return out


# ---------------------------------------------------------------- create


def _offered(policy: Policy, resource: str, role: str) -> ResourceSpec:
    spec = policy.resources.get(resource)
    if spec is None:
        known = ", ".join(sorted(policy.resources)) or "none"
        raise Invalid(f'unknown resource "{resource}" (known: {known})', field="resource")
    if role not in spec.roles:
        raise Invalid(
            f'role "{role}" is not offered by {resource} (offered: {", ".join(spec.roles)})',
            field="role",
        )
    return spec


BREAK_GLASS = "break_glass"  # the rule (and policy actor) of emergency grants


def _approved_call(req: AccessRequest) -> dict[str, Any]:
    """What an approval of a tool call binds, in its event: the tool and its arguments'
    sha256 (the gateway's `gateway.tool_call` names the same request and hash)."""
    if req.kind != TOOL_CALL or req.details is None:
        return {}
    return {"tool_call": {"tool": req.details["tool"],
                          "arguments_sha256": req.details["arguments_sha256"]}}


def find_tool_call(session: Session, *, requester: str, grant_id: int, tool: str,
                   sha256: str) -> AccessRequest | None:
    """A pending or approved, not yet run, request for exactly this call on this grant."""
    rows = session.execute(
        select(AccessRequest).where(
            AccessRequest.requester == requester, AccessRequest.kind == TOOL_CALL,
            AccessRequest.status.in_([Status.PENDING, Status.APPROVED]))
        .order_by(AccessRequest.id.desc()).limit(100)).scalars()
    for req in rows:
        d = req.details or {}
        if d.get("grant_id") == grant_id and d.get("tool") == tool \
                and d.get("arguments_sha256") == sha256 and not d.get("executed_at"):
            return req
    return None


def claim_tool_call(session: Session, *, request_id: int, sha256: str, actor: Actor,
                    now: datetime) -> AccessRequest | None:
    """Take an approved tool call to run it, once, recorded (`request.executed`, with the
    arguments' sha256 its approval bound): the row lock and `executed_at` make a second
    claim (another call, another replica) find nothing. None: not approved (yet), already
    run, or for other arguments."""
    req = session.execute(select(AccessRequest).where(AccessRequest.id == request_id)
                          .with_for_update()).scalar_one_or_none()
    d = dict(req.details or {}) if req is not None else {}
    if req is None or req.kind != TOOL_CALL or req.status != Status.APPROVED \
            or d.get("arguments_sha256") != sha256 or d.get("executed_at"):
        return None
    d["executed_at"] = format_time(now)
    req.details = d  # a new dict: the JSON column sees the change
    _record(session, req, EventType.REQUEST_EXECUTED, actor=actor, now=now,
            tool=d["tool"], arguments_sha256=sha256, grant_id=d.get("grant_id"))
    session.flush()
    return req
REVIEW_REMIND = "request.review_remind"


def members(policy: Policy, refs: list[str]) -> frozenset[str]:
    out: set[str] = set()
    for ref in refs:
        out |= policy.resolve(ref, None)
    return frozenset(out)


def may_break_glass(policy: Policy, user: str) -> bool:
    spec = policy.loaded.spec.break_glass
    return spec is not None and user in members(policy, spec.groups)


def break_glass(policy: Policy, *, requester: str, resource: str, role: str,
                duration: timedelta, reason: str) -> Decision:
    """An emergency grant: at once, short, for the allowed groups, reviewed afterwards."""
    _offered(policy, resource, role)
    spec = policy.loaded.spec.break_glass
    if spec is None:
        raise Invalid("break-glass is not configured (break_glass in accord.yaml)",
                      field="emergency")
    if requester not in members(policy, spec.groups):
        raise Forbidden(f"only members of {', '.join(spec.groups)} may break the glass")
    if duration > spec.max_duration:
        raise Invalid(f"{format_duration(duration)} is over the break-glass maximum of "
                      f"{format_duration(spec.max_duration)}", field="duration")
    if len(reason.strip()) < 10:
        raise Invalid("break-glass needs a reason of at least 10 characters: it is "
                      "reviewed afterwards", field="reason")
    return Decision("approve", None, BREAK_GLASS,
                    f"break-glass: granted at once; review by {', '.join(spec.reviewers)}",
                    inputs={"requester": requester, "resource": resource, "role": role})


def decide(policy: Policy, *, requester: str, resource: str, role: str, duration: timedelta,
           reason: str, now: datetime, emergency: bool = False, extension: bool = False,
           kind: str = ACCESS, statement: str = "", tool: dict[str, Any] | None = None,
           ) -> tuple[Decision, list[frozenset[str]]]:
    """What filing this request would decide: broken glass, or routed (`route`); raises
    what the API refuses. Pure: policy tests, replay and explain decide as filing does."""
    if emergency:
        return break_glass(policy, requester=requester, resource=resource, role=role,
                           duration=duration, reason=reason), []
    return route(policy, requester=requester, resource=resource, role=role,
                 duration=duration, reason=reason, now=now, extension=extension, kind=kind,
                 statement=statement, tool=tool)


def route(policy: Policy, *, requester: str, resource: str, role: str, duration: timedelta,
          reason: str, now: datetime, extension: bool = False, kind: str = ACCESS,
          statement: str = "", tool: dict[str, Any] | None = None,
          ) -> tuple[Decision, list[frozenset[str]]]:
    """What the policy would decide for this request, and who is eligible at each step.

    Pure: it writes nothing, so the web form can show it before anything is filed.
    """
    spec = _offered(policy, resource, role)
    try:
        decision = policy.decide(
            requester=requester,
            resource=spec,
            role=role,
            duration=duration,
            reason=reason,
            now=now,
            extension=extension,
            kind=kind,
            statement=statement,
            tool=tool,
        )
    except PolicyRefusal as exc:
        raise Invalid(str(exc), field=exc.field) from None

    if decision.outcome != "steps":
        return decision, []
    return _fillable(policy, decision, resource=resource, requester=requester)


class Unsatisfiable(Invalid):
    """A plan nobody can complete: its steps cannot be filled by distinct people other than
    the requester. Refused at creation (a 422, like input the workflow does not accept),
    naming the steps and the people."""

    slug = "unsatisfiable"
    title = "Nobody can complete this request"


def _shortfall_extra(filling: sat.Filling) -> dict[str, object]:
    """The problem's members beside its detail: the steps that cannot be filled and who
    could still fill them."""
    short = filling.shortfall
    assert short is not None
    return {"steps": [{"index": i, "name": filling.steps[i].name,
                       "min_approvals": filling.steps[i].min_approvals,
                       "eligible": sorted(filling.steps[i].eligible),
                       "approved": sorted(filling.steps[i].approved)} for i in short.steps],
            "missing": short.missing, "people": list(short.people)}


def _escalation_to(policy: Policy, workflow: str | None) -> list[str]:
    """The workflow's escalation group (its `escalation.to`), when it has one."""
    spec = next((w.spec for w in policy.workflows if w.spec.name == workflow), None)
    return list(spec.escalation.to) if spec and spec.escalation else []


def _fillable(policy: Policy, decision: Decision, *, resource: str, requester: str,
              ) -> tuple[Decision, list[frozenset[str]]]:
    """The steps' eligible people when the steps can be filled jointly. When they cannot,
    the workflow's escalation group (if any) joins the steps that fall short, and the plan
    says so; when even that cannot fill them, Unsatisfiable."""
    steps = list(decision.steps)
    to = _escalation_to(policy, decision.workflow)
    first: sat.Filling | None = None
    while True:
        named = [policy.eligible(s.as_dict(), resource, requester) for s in steps]
        filled = sat.fill([sat.Step(e, s.min_approvals, s.name)
                           for e, s in zip(named, steps, strict=True)],
                          exclude={requester})
        if filled.ok:
            eligible = [e - {requester} for e in named]
            break
        assert filled.shortfall is not None
        first = first or filled
        grow = [i for i in filled.shortfall.steps if to and not steps[i].escalated]
        if not grow:
            tried = (f"; the escalation group ({', '.join(to)}) cannot fill "
                     f"{'them' if len(filled.shortfall.steps) > 1 else 'it'} either"
                     if first is not filled or any(s.escalated for s in steps) else "")
            raise Unsatisfiable(
                f"workflow {decision.workflow!r} cannot complete this request: "
                f"{sat.describe(filled, requester=requester)}{tried}",
                extra=_shortfall_extra(filled))
        for i in grow:
            s = steps[i]
            steps[i] = replace(s, approvers=s.approvers + tuple(
                r for r in to if r not in s.approvers), escalated=True)
    if first is not None:
        raised = [i for i, s in enumerate(steps) if s.escalated]
        decision = replace(decision, steps=tuple(steps), reason=(
            f"{decision.reason}; {sat.describe(first, requester=requester)}, so the "
            f"escalation group ({', '.join(to)}) also approves "
            f"{sat.steps_in_words(first.steps, raised)}"))
    return decision, eligible


def create(
    session: Session,
    *,
    policy: Policy,
    caller: Caller,
    resource: str,
    role: str,
    duration: timedelta,
    reason: str,
    now: datetime,
    extends: Grant | None = None,
    emergency: bool = False,
    statement: StatementReview | None = None,
    tool_call: dict[str, Any] | None = None,
) -> AccessRequest:
    """File a request for oneself and route it through the policy (or break the glass).
    With `statement` (not yet added), a request of kind `statement`: one exact statement,
    run once through the gateway once approved (never a grant of its own). With
    `tool_call` (the MCP gateway's: tool, arguments_sha256, grant_id, maybe arguments), a
    request of kind `tool_call`: that one call, run once, which makes no grant either."""
    kind = STATEMENT if statement is not None else TOOL_CALL if tool_call is not None \
        else ACCESS
    tool = {"name": tool_call["tool"], "arguments_sha256": tool_call["arguments_sha256"]} \
        if tool_call is not None else None
    decision, eligible = decide(policy, requester=caller.user, resource=resource, role=role,
                                duration=duration, reason=reason, now=now,
                                emergency=emergency, extension=extends is not None,
                                kind=kind,
                                statement=statement.statement if statement else "",
                                tool=tool)

    # The request is written once with what the policy decided; only activation follows.
    decided = decision.outcome != "steps"
    req = AccessRequest(
        kind=kind,
        requester=caller.user,
        resource=resource,
        role=role,
        duration_seconds=int(duration.total_seconds()),
        reason=reason,
        status={"deny": Status.DENIED, "approve": Status.APPROVED}.get(
            decision.outcome, Status.PENDING),
        created_at=now,
        created_via=caller.via,
        workflow=decision.workflow,
        policy_version=policy.version,
        rule=decision.rule,
        plan={"steps": [s.as_dict() for s in decision.steps]},
        current_step=None if decided else 0,
        extends_grant_id=extends.id if extends else None,
        pending_until=(now + decision.pending_timeout
                       if decision.pending_timeout and not decided else None),
        decided_at=now if decided else None,
        decision_reason=decision.reason if decided else None,
        emergency=emergency,
        details=tool_call,
    )
    session.add(req)
    session.flush()
    if statement is not None:
        statement.request_id = req.id
        req.statement = statement
        session.add(statement)
        session.flush()
    ref = PolicyRef(decision.workflow or (BREAK_GLASS if emergency else ""), policy.version,
                    decision.rule)
    pending_until = now + decision.pending_timeout if decision.pending_timeout else None
    _record(session, req, EventType.REQUEST_CREATED, actor=caller.actor, now=now, policy=ref,
            requester=req.requester, duration_seconds=req.duration_seconds,
            duration=format_duration(duration), reason=reason,
            extends_grant_id=req.extends_grant_id,
            routing={"outcome": decision.outcome, "reason": decision.reason},
            steps=req.plan["steps"],
            pending_until=format_time(pending_until) if pending_until and not decided else None,
            inputs=decision.inputs, **({"emergency": True} if emergency else {}),
            **({"kind": STATEMENT, "statement": statement_data(statement)}
               if statement is not None else {}),
            **({"kind": TOOL_CALL, "tool_call": tool_call} if tool_call is not None else {}),
            **({"requester_kind": "agent", "owner": caller.owner} if caller.is_agent else {}))
    if decision.outcome == "deny":
        _record(session, req, EventType.REQUEST_DENIED, actor=_policy_actor(decision.workflow),
                now=now, policy=ref, reason=decision.reason, inputs=decision.inputs)
    elif decision.outcome == "approve":
        actor = _policy_actor(BREAK_GLASS if emergency else decision.workflow)
        _record(session, req, EventType.REQUEST_APPROVED, actor=actor, now=now, policy=ref,
                reason=decision.reason, inputs=decision.inputs,
                **_statement_approved(req, now), **_approved_call(req))
        if req.kind == ACCESS:  # a statement or tool call runs once; it grants nothing
            grants.activate(session, request=req, actor=actor, now=now,
                            provisioned=_provisioned(policy, req),
                            warn_before=_warn_before(policy))
        glass = policy.loaded.spec.break_glass
        if emergency and glass is not None:
            jobs.enqueue(session, kind=REVIEW_REMIND, key=f"request:{req.id}:review:1",
                         run_at=now + glass.remind_every, now=now,
                         payload={"request_id": req.id, "round": 1})
    else:
        session.add_all(
            RequestApprover(request_id=req.id, step=i, username=u)
            for i, people in enumerate(eligible)
            for u in people
        )
        if raised := [i for i, s in enumerate(decision.steps) if s.escalated]:
            # Whom the escalation brought in hear of it as their step comes (step 0: with
            # the request itself), so `added` names nobody to tell now.
            _record(session, req, EventType.REQUEST_ESCALATED,
                    actor=_policy_actor(decision.workflow), now=now, policy=ref, step=0,
                    added=[], steps=raised, to=_escalation_to(policy, decision.workflow),
                    reason=decision.reason)
        _schedule_escalation(session, policy, req, now)
    session.flush()
    return req


REMIND = "request.remind"
ESCALATE = "request.escalate"


def _schedule_escalation(session: Session, policy: Policy, req: AccessRequest,
                         now: datetime) -> None:
    """Timers for a pending request, as durable jobs: they survive restarts, fire once."""
    spec = next((w.spec for w in policy.workflows if w.spec.name == req.workflow), None)
    esc = spec.escalation if spec else None
    if esc is None:
        return
    if esc.remind_after:
        jobs.enqueue(session, kind=REMIND, key=f"request:{req.id}:remind", now=now,
                     run_at=now + esc.remind_after, payload={"request_id": req.id})
    if esc.escalate_after and esc.to:
        jobs.enqueue(session, kind=ESCALATE, key=f"request:{req.id}:escalate", now=now,
                     run_at=now + esc.escalate_after, payload={"request_id": req.id})


def remind(session: Session, *, policy: Policy, request_id: int, now: datetime) -> bool:
    """Record a reminder for a request still waiting (the outbox re-notifies its approvers)."""
    req = session.get(AccessRequest, request_id, with_for_update=True)
    if req is None or effective_status(req, None, now) != Status.PENDING:
        return False
    _record(session, req, EventType.REQUEST_REMINDED, actor=Actor.system(), now=now,
            step=req.current_step, waiting_seconds=int((now - req.created_at).total_seconds()))
    return True


def escalate(session: Session, *, policy: Policy, request_id: int, now: datetime) -> list[str]:
    """Add the workflow's escalation group as approvers of the current step."""
    req = session.get(AccessRequest, request_id, with_for_update=True)
    if req is None or effective_status(req, None, now) != Status.PENDING:
        return []
    spec = next((w.spec for w in policy.workflows if w.spec.name == req.workflow), None)
    if spec is None or spec.escalation is None:
        return []
    step = req.current_step or 0
    have = set(session.execute(
        select(RequestApprover.username).where(RequestApprover.request_id == req.id,
                                               RequestApprover.step == step)).scalars())
    added: set[str] = set()
    for ref in spec.escalation.to:
        added |= policy.resolve(ref, policy.resources.get(req.resource), req.requester)
    added -= have | {req.requester}
    _widen_plan(req, [step], list(spec.escalation.to))
    session.add_all(RequestApprover(request_id=req.id, step=step, username=u)
                    for u in sorted(added))
    _record(session, req, EventType.REQUEST_ESCALATED, actor=Actor.system(), now=now,
            step=step, added=sorted(added), to=list(spec.escalation.to))
    session.flush()
    return sorted(added)


def _widen_plan(req: AccessRequest, indices: Sequence[int], refs: list[str]) -> None:
    """Add `refs` (the escalation group) to the approvers of the plan's steps `indices`, so
    a later refresh of who may decide (a reload, a directory change) keeps them."""
    steps = [dict(s) for s in req.plan.get("steps", [])]
    for i in indices:
        if i < len(steps):
            have = list(steps[i].get("approvers", []))
            steps[i]["approvers"] = have + [r for r in refs if r not in have]
            steps[i]["escalated"] = True
    req.plan = {**req.plan, "steps": steps}  # a new dict: the JSON column sees the change


# ---------------------------------------------------------------- decisions


def _refuse_finished(req: AccessRequest, status: str, verb: str) -> None:
    if status in TERMINAL:
        raise Conflict(f"request {req.id} is {status}; it can no longer be {verb}")


def _eligible(session: Session, req: AccessRequest, step: int) -> set[str]:
    rows = session.execute(
        select(RequestApprover.username).where(
            RequestApprover.request_id == req.id, RequestApprover.step == step
        )
    ).scalars()
    return set(rows)


class SelfDecision(Forbidden):
    """Someone tried to decide their own request. Refused, and worth recording: the outer
    layer rolls back, then records the attempt with `record_self_decision`."""

    def __init__(self, req: AccessRequest, verb: str) -> None:
        super().__init__(f"you cannot {verb} your own request")
        self.request_id, self.verb = req.id, verb
        self.resource = _resource(req)


def after_refusal(session: Session, *, exc: AccordError, caller: Caller, now: datetime) -> None:
    """A command refused: roll back what it changed and, if it refused a self-decision, record
    the attempt (the detectors alert on it). The caller commits, then reports `exc`."""
    session.rollback()
    if isinstance(exc, SelfDecision):
        record_self_decision(session, exc=exc, caller=caller, now=now)
    elif isinstance(exc, StrandingApproval):
        ledger.record(session, type=EventType.APPROVAL_REFUSED, actor=caller.actor,
                      subject=f"request:{exc.request_id}", resource=exc.resource, time=now,
                      data={"request_id": exc.request_id, "reason": "unsatisfiable",
                            "attempted": "approve", "step": exc.step, "detail": exc.detail,
                            "others": exc.others})


def record_self_decision(session: Session, *, exc: SelfDecision, caller: Caller,
                         now: datetime) -> None:
    """The refused attempt, as its own ledger event (the detectors raise an alert on it)."""
    ledger.record(session, type=EventType.APPROVAL_REFUSED, actor=caller.actor,
                  subject=f"request:{exc.request_id}", resource=exc.resource, time=now,
                  data={"request_id": exc.request_id, "reason": "self_decision",
                        "attempted": exc.verb})


class StrandingApproval(Conflict):
    """An approval that would leave a later step (or the rest of this one) impossible to
    fill: refused, nothing changes; the outer layer records the attempt (`after_refusal`)."""

    slug = "unsatisfiable"
    title = "This approval would leave the request impossible to complete"

    def __init__(self, req: AccessRequest, step: int, user: str, after: sat.Filling,
                 others: list[str]) -> None:
        label = after.steps[step].label(step)
        instead = (f"{sat.names(others, conj='or')} can approve {label} instead"
                   if others else f"nobody else can approve {label} without the same problem")
        super().__init__(
            f"approving {label} now would leave request {req.id} impossible to complete: "
            f"{sat.describe(after, requester=req.requester)}. {instead}; your approval "
            "was not recorded",
            extra={**_shortfall_extra(after), "others": others})
        self.request_id, self.step, self.others = req.id, step, others
        self.resource = _resource(req)


def plan_steps(session: Session, req: AccessRequest,
               eligible: dict[int, set[str]] | None = None) -> list[sat.Step]:
    """The request's steps as they stand: who may decide each (its stored approvers, unless
    given) and who approved it already."""
    if eligible is None:
        eligible = {i: set(people) for i, people in
                    step_approvers(session, [req.id])[req.id].items()}
    approved: dict[int, set[str]] = {}
    for a in req.approvals:
        if a.decision == "approve":
            approved.setdefault(a.step, set()).add(a.approver)
    return [sat.Step(frozenset(eligible.get(i, ())), int(s.get("min_approvals", 1)),
                     s.get("name"), frozenset(approved.get(i, ())))
            for i, s in enumerate(req.plan.get("steps", []))]


def check_fillable_after(session: Session, req: AccessRequest, step: int, user: str) -> None:
    """Refuse an approval of `step` by `user` that would leave some step nobody can fill
    (they could serve on no other step once they decided this one)."""
    steps = plan_steps(session, req)
    after = sat.stranded_by(steps, step, user, exclude={req.requester})
    if after is not None:
        others = sat.safe_approvers(steps, step, exclude={req.requester},
                                    candidates=steps[step].eligible - {user})
        raise StrandingApproval(req, step, user, after, others)


def check_decide(session: Session, req: AccessRequest, user: str, status: str, verb: str
                 ) -> int:
    """The one permission check for approve (`verb` "approved") and deny ("denied"): may
    `user` decide `req` in `status`? Returns the step they would decide; raises why not."""
    _refuse_finished(req, status, verb)
    if user == req.requester:
        raise SelfDecision(req, verb.removesuffix("d"))
    prior = next((a for a in req.approvals if a.approver == user), None)
    if prior is not None:
        raise Conflict(
            f"you already {prior.decision}d request {req.id} (step {prior.step + 1}); "
            "a person decides a request once"
        )
    steps = req.plan.get("steps", [])
    if status == Status.PENDING:
        step = req.current_step or 0
    elif status in (Status.APPROVED, Status.ACTIVE) and verb == "approved" and steps:
        # A concurrent approver of the final step lost the race: record the approval, no transition.
        step = len(steps) - 1
    else:
        raise Conflict(f"request {req.id} is {status}; it can no longer be {verb}")
    if user not in _eligible(session, req, step):
        wanted = ", ".join(steps[step]["approvers"]) if step < len(steps) else "?"
        raise Forbidden(
            f"you are not an approver of step {step + 1} of request {req.id} (approvers: {wanted})"
        )
    return step


def _add_approval(
    session: Session, req: AccessRequest, caller: Caller, step: int, decision: str,
    comment: str, now: datetime,
) -> Approval:
    approval = Approval(
        step=step, approver=caller.user, decision=decision, comment=comment, via=caller.via,
        created_at=now,
    )
    req.approvals.append(approval)
    try:
        session.flush()
    except IntegrityError:
        # Only a race the row lock did not cover (SQLite); the unit of work is void anyway.
        raise Conflict(
            f"you already decided request {req.id}; a person decides a request once"
        ) from None
    return approval


def refuse_agent(caller: Caller, verb: str) -> None:
    """An agent never decides anything: it only requests."""
    if caller.is_agent:
        raise Forbidden(f"an agent never {verb} a request; {caller.owner} (its owner) and the "
                        "request's approvers decide")


def approve(
    session: Session, *, policy: Policy, caller: Caller, request_id: int, comment: str,
    now: datetime,
) -> AccessRequest:
    refuse_agent(caller, "approves")
    req = get_request(session, policy=policy, user=caller.user, request_id=request_id, lock=True)
    status = effective_status(req, _grant(session, req), now)
    step = check_decide(session, req, caller.user, status, "approved")
    if not policy.is_principal(req.requester) or req.resource not in policy.resources:
        raise Conflict(f"request {req.id} can no longer be approved: its requester or resource "
                       "is gone from accord.yaml")
    if status == Status.PENDING:
        check_fillable_after(session, req, step, caller.user)
    _add_approval(session, req, caller, step, "approve", comment, now)
    steps = req.plan["steps"]
    needed = int(steps[step]["min_approvals"])
    count = len({a.approver for a in req.approvals if a.step == step and a.decision == "approve"})
    late = status != Status.PENDING
    complete = not late and count >= needed
    last = step == len(steps) - 1
    _record(session, req, EventType.APPROVAL_RECORDED, actor=caller.actor, now=now,
            decision="approve", step=step, approvals=count, min_approvals=needed,
            step_complete=complete, late=late, comment=comment)
    if complete and not last:
        req.current_step = step + 1
    elif complete:
        req.status = Status.APPROVED
        req.decided_at = now
        req.current_step = None
        req.pending_until = None
        req.decision_reason = f"approved by {caller.user} (step {step + 1} of {len(steps)})"
        _record(session, req, EventType.REQUEST_APPROVED, actor=caller.actor, now=now,
                approvers=[{"user": a.approver, "step": a.step, "via": a.via}
                           for a in req.approvals if a.decision == "approve"],
                **_statement_approved(req, now), **_approved_call(req))
        if req.kind == ACCESS:  # a statement or tool call runs once; it grants nothing
            grants.activate(session, request=req, actor=caller.actor, now=now,
                            provisioned=_provisioned(policy, req),
                            warn_before=_warn_before(policy))
    session.flush()
    return req


def deny(
    session: Session, *, policy: Policy, caller: Caller, request_id: int, comment: str,
    now: datetime,
) -> AccessRequest:
    refuse_agent(caller, "denies")
    req = get_request(session, policy=policy, user=caller.user, request_id=request_id, lock=True)
    status = effective_status(req, _grant(session, req), now)
    if status in (Status.APPROVED, Status.ACTIVE) and caller.user in policy.admins:
        # An admin denying what was already approved takes the access away again.
        grant = _active_grant(session, req, now, "denied")
        why = "denied after approval by an admin" + (f": {comment}" if comment else "")
        grants.end(session, grant=grant, status=GrantStatus.REVOKED, actor=caller.actor,
                   now=now, comment=why)
        session.refresh(req)
        return req
    step = check_decide(session, req, caller.user, status, "denied")
    _add_approval(session, req, caller, step, "deny", comment, now)
    _record(session, req, EventType.APPROVAL_RECORDED, actor=caller.actor, now=now,
            decision="deny", step=step, comment=comment)
    _finish_pending(session, req, Status.DENIED, caller.actor, now,
                    f"denied by {caller.user}" + (f": {comment}" if comment else ""))
    return req


def _finish_pending(
    session: Session, req: AccessRequest, status: Status, actor: Actor, now: datetime, why: str,
    *, ref: PolicyRef | None = None, **data: Any,
) -> None:
    req.status = status
    req.decided_at = now
    req.current_step = None
    req.pending_until = None
    req.decision_reason = why
    event = {
        Status.DENIED: EventType.REQUEST_DENIED,
        Status.CANCELLED: EventType.REQUEST_CANCELLED,
        Status.EXPIRED: EventType.REQUEST_EXPIRED,
    }[status]
    _record(session, req, event, actor=actor, now=now, policy=ref, reason=why, **data)
    session.flush()


def cancel_for(session: Session, *, req: AccessRequest, actor: Actor, now: datetime,
               why: str) -> None:
    """Cancel a pending request because of something outside it (its requester left)."""
    _finish_pending(session, req, Status.CANCELLED, actor, now, why)


def cancel_orphaned(session: Session, *, req: AccessRequest, actor: Actor, now: datetime) -> None:
    """Cancel a pending request whose requester or resource left the policy."""
    _finish_pending(session, req, Status.CANCELLED, actor, now,
                    "its requester or resource was removed from accord.yaml")


def cancel(
    session: Session, *, policy: Policy, caller: Caller, request_id: int, comment: str,
    now: datetime,
) -> AccessRequest:
    req = get_request(session, policy=policy, user=caller.user, request_id=request_id, lock=True)
    check_cancel(req, caller.user, effective_status(req, _grant(session, req), now))
    _finish_pending(session, req, Status.CANCELLED, caller.actor, now,
                    "cancelled by the requester" + (f": {comment}" if comment else ""))
    return req


def check_cancel(req: AccessRequest, user: str, status: str) -> None:
    """May `user` withdraw `req` in `status`? Raises why not."""
    if user != req.requester:
        raise Forbidden("only the requester can cancel a request")
    if status != Status.PENDING:
        raise Conflict(f"request {req.id} is {status}; only pending requests can be cancelled")


def _grant(session: Session, req: AccessRequest) -> Grant | None:
    return session.get(Grant, req.grant_id) if req.grant_id else None


def _live(req: AccessRequest, grant: Grant | None, status: str, verb: str,
          *, provisioning_too: bool = True) -> None:
    """Refuse unless the request's grant is live: active, or (for ending it) still being
    provisioned."""
    live = {Status.ACTIVE, Status.APPROVED} if provisioning_too else {Status.ACTIVE}
    if grant is None or status not in live:
        raise Conflict(f"request {req.id} is {status}; only active access can be {verb}")


def check_relinquish(req: AccessRequest, grant: Grant | None, user: str, status: str) -> None:
    """May `user` give up the access of `req`? Raises why not."""
    if user != req.requester:
        raise Forbidden("only the grantee can relinquish access")
    _live(req, grant, status, "relinquished")


def check_revoke(policy: Policy, req: AccessRequest, grant: Grant | None, user: str,
                 status: str) -> None:
    """May `user` end someone's access on `req`: admins, owners of the resource, the
    request's approvers under the policy in force now, and the owner of the agent that
    holds it. Raises why not."""
    if not (
        user in policy.admins
        or user in policy.owners_of(req.resource)
        or user in current_approvers(policy, req)
        or user == policy.owner_of(req.requester)
    ):
        raise Forbidden(
            f"only admins, owners of {req.resource} and approvers of this request can revoke it"
        )
    _live(req, grant, status, "revoked")


def check_extend(req: AccessRequest, grant: Grant | None, user: str, status: str) -> None:
    """May `user` ask for more time on `req`'s grant? Raises why not."""
    if user != req.requester:
        raise Forbidden("only the grantee can ask to extend their access")
    _live(req, grant, status, "extended", provisioning_too=False)


def allowed_actions(session: Session, *, policy: Policy, user: str, req: AccessRequest,
                    grant: Grant | None, now: datetime) -> list[str]:
    """The commands `user` may take on `req` now, by the same checks the commands make, so
    a page offers exactly what the server will accept. (A late approval of an already
    approved request, accepted to settle a race between approvers, is not offered.)"""
    status = effective_status(req, grant, now)
    checks: list[tuple[str, Any]] = [
        ("approve", lambda: check_decide(session, req, user, status, "approved")),
        ("deny", lambda: check_decide(session, req, user, status, "denied")),
        ("cancel", lambda: check_cancel(req, user, status)),
        ("extend", lambda: check_extend(req, grant, user, status)),
        ("relinquish", lambda: check_relinquish(req, grant, user, status)),
        ("revoke", lambda: check_revoke(policy, req, grant, user, status)),
    ]
    out = []
    for name, check in checks:
        if name in ("approve", "deny") and status != Status.PENDING:
            continue
        try:
            check()
        except (Forbidden, Conflict):
            continue
        out.append(name)
    return out


def _active_grant(session: Session, req: AccessRequest, now: datetime, verb: str,
                  *, provisioning_too: bool = True) -> Grant:
    """The live grant of a request: active, or (for ending it) still being provisioned."""
    grant = _locked_grant(session, req)
    _live(req, grant, effective_status(req, grant, now), verb, provisioning_too=provisioning_too)
    assert grant is not None
    return grant


def _locked_grant(session: Session, req: AccessRequest) -> Grant | None:
    return session.execute(
        select(Grant).where(Grant.id == req.grant_id).with_for_update()
    ).scalar_one_or_none() if req.grant_id else None


def relinquish(
    session: Session, *, policy: Policy, caller: Caller, request_id: int, comment: str,
    now: datetime,
) -> AccessRequest:
    req = get_request(session, policy=policy, user=caller.user, request_id=request_id, lock=True)
    grant = _locked_grant(session, req)
    check_relinquish(req, grant, caller.user, effective_status(req, grant, now))
    assert grant is not None
    grants.end(session, grant=grant, status=GrantStatus.RELINQUISHED, actor=caller.actor,
               now=now, comment=comment)
    session.refresh(req)
    return req


def revoke(
    session: Session, *, policy: Policy, caller: Caller, request_id: int, comment: str,
    now: datetime,
) -> AccessRequest:
    req = get_request(session, policy=policy, user=caller.user, request_id=request_id, lock=True)
    grant = _locked_grant(session, req)
    check_revoke(policy, req, grant, caller.user, effective_status(req, grant, now))
    assert grant is not None
    grants.end(session, grant=grant, status=GrantStatus.REVOKED, actor=caller.actor, now=now,
               comment=comment)
    session.refresh(req)
    return req


def extend(
    session: Session, *, policy: Policy, caller: Caller, request_id: int, duration: timedelta,
    reason: str, now: datetime,
) -> AccessRequest:
    """Ask for more time on an active grant: a new request, routed like any other."""
    req = get_request(session, policy=policy, user=caller.user, request_id=request_id, lock=True)
    grant = _locked_grant(session, req)
    check_extend(req, grant, caller.user, effective_status(req, grant, now))
    assert grant is not None
    return create(
        session, policy=policy, caller=caller, resource=grant.resource, role=grant.role,
        duration=duration, reason=reason, now=now, extends=grant,
    )


# ---------------------------------------------------------------- background


def _pending_expired(now: datetime) -> ColumnElement[bool]:
    return and_(AccessRequest.status == Status.PENDING, AccessRequest.pending_until <= now)


def any_pending_expired(session: Session, *, now: datetime) -> bool:
    """Whether some pending request's time ran out (a read: `expire_pending` records it)."""
    return session.execute(
        select(AccessRequest.id).where(_pending_expired(now)).limit(1)).first() is not None


def expire_pending(session: Session, *, now: datetime, limit: int = 500) -> int:
    """Record the expiry of pending requests nobody decided in time."""
    q = (
        select(AccessRequest)
        .where(_pending_expired(now))
        .order_by(AccessRequest.pending_until)
        .limit(limit)
    )
    reqs = session.execute(skip_locked(session, q)).scalars().all()
    for req in reqs:
        _finish_pending(session, req, Status.EXPIRED, Actor.system(), now,
                        "nobody decided before the request's time ran out")
    return len(reqs)


def refresh_approvers(session: Session, *, policy: Policy, actor: Actor, now: datetime,
                      requesters: Collection[str] | None = None,
                      request_ids: Collection[int] | None = None) -> int:
    """Recompute who may decide each pending request (of `requesters`, or those of
    `request_ids`, when given) after the policy or the directory changed; one that nobody
    can complete any more is escalated or denied at once (`settle`). `actor` made the
    change."""
    q = select(AccessRequest).where(AccessRequest.status == Status.PENDING)
    if requesters is not None:
        q = q.where(AccessRequest.requester.in_(list(requesters)))
    if request_ids is not None:
        q = q.where(AccessRequest.id.in_(list(request_ids)))
    pending = session.execute(q.order_by(AccessRequest.id).with_for_update()).scalars().all()
    eligible: dict[int, dict[int, set[str]]] = {}
    for req in pending:
        session.execute(delete(RequestApprover).where(RequestApprover.request_id == req.id))
        mine = eligible[req.id] = {}
        for i, step in enumerate(req.plan.get("steps", [])):
            people = policy.eligible(step, req.resource, req.requester) - {req.requester}
            mine[i] = set(people)
            session.add_all(RequestApprover(request_id=req.id, step=i, username=u) for u in people)
    session.flush()
    for req in pending:
        settle(session, policy=policy, req=req, actor=actor, now=now, eligible=eligible[req.id])
    return len(pending)


def settle(session: Session, *, policy: Policy, req: AccessRequest, actor: Actor,
           now: datetime, eligible: dict[int, set[str]] | None = None) -> str | None:
    """A pending request whose steps can no longer be filled (people left a group, the
    policy changed): the workflow's escalation group joins the steps that fall short when
    that fills them ("escalated"), else the request is denied at once ("denied"), each with
    the reason in its ledger event. None when it can still be completed. Requests whose
    requester or resource left the policy, or whose time ran out, are left to the
    cancellation and the expiry that await them."""
    if req.status != Status.PENDING or effective_status(req, None, now) != Status.PENDING \
            or not policy.is_principal(req.requester) or req.resource not in policy.resources:
        return None
    steps = plan_steps(session, req, eligible)
    filled = sat.fill(steps, exclude={req.requester})
    if filled.ok:
        return None
    first = filled
    to = _escalation_to(policy, req.workflow)
    plan = req.plan.get("steps", [])
    grown: list[int] = []
    while to and filled.shortfall is not None:
        grow = [i for i in filled.shortfall.steps
                if i not in grown and not plan[i].get("escalated")]
        if not grow:
            break
        grown += grow
        for i in grow:
            refs = list(plan[i]["approvers"]) + [r for r in to if r not in plan[i]["approvers"]]
            wider = policy.eligible({"approvers": refs}, req.resource, req.requester)
            steps[i] = replace(steps[i], eligible=wider - {req.requester})
        filled = sat.fill(steps, exclude={req.requester})
    why = sat.describe(first, requester=req.requester)
    trigger = {"kind": actor.kind, "id": actor.id}
    ref = PolicyRef(req.workflow or "", policy.version, "unsatisfiable")
    if filled.ok:
        current = req.current_step or 0
        before = first.steps[current].eligible
        _widen_plan(req, grown, to)
        for i in grown:
            session.execute(delete(RequestApprover).where(
                RequestApprover.request_id == req.id, RequestApprover.step == i))
            session.add_all(RequestApprover(request_id=req.id, step=i, username=u)
                            for u in sorted(steps[i].eligible))
        added = sorted(steps[current].eligible - before) if current in grown else []
        _record(session, req, EventType.REQUEST_ESCALATED, actor=_policy_actor(req.workflow),
                now=now, policy=ref, step=current, added=added, steps=grown, to=to,
                reason=f"{why}, so the escalation group ({', '.join(to)}) also approves "
                f"{sat.steps_in_words(steps, grown)}", trigger=trigger)
        session.flush()
        return "escalated"
    them = "them" if filled.shortfall and len(filled.shortfall.steps) > 1 else "it"
    tried = f"; the escalation group ({', '.join(to)}) cannot fill {them} either" if to else ""
    _finish_pending(session, req, Status.DENIED, _policy_actor(req.workflow), now,
                    f"nobody can complete it any more: {why}{tried}", ref=ref,
                    rule="unsatisfiable", trigger=trigger, shortfall=_shortfall_extra(filled))
    return "denied"


# ---------------------------------------------------------------- break-glass review

VERDICTS = ("justified", "unjustified")


def review(session: Session, *, policy: Policy, caller: Caller, request_id: int, verdict: str,
           note: str, now: datetime) -> AccessRequest:
    """Record the after-the-fact review of a break-glass request; `unjustified` ends any
    access still running. `detect.service.review_break_glass` also resolves its alert: call
    that one."""
    req = get_request(session, policy=policy, user=caller.user, request_id=request_id,
                      lock=True)
    glass = policy.loaded.spec.break_glass
    if not req.emergency:
        raise Conflict(f"request {req.id} is not a break-glass request; nothing to review")
    if glass is None or caller.user not in members(policy, glass.reviewers):
        raise Forbidden("break-glass reviews are for members of "
                        f"{', '.join(glass.reviewers) if glass else 'the reviewer groups'}")
    if caller.user == req.requester:
        raise Forbidden("you cannot review your own break-glass request")
    if req.reviewed_at is not None:
        raise Conflict(f"request {req.id} was already reviewed by {req.reviewed_by}")
    if verdict not in VERDICTS:
        raise Invalid(f"verdict must be one of {', '.join(VERDICTS)}", field="verdict")
    if not note.strip():
        raise Invalid("say what you checked", field="note")
    req.reviewed_at, req.reviewed_by = now, caller.user
    req.review_verdict, req.review_note = verdict, note
    _record(session, req, EventType.REQUEST_REVIEWED, actor=caller.actor, now=now,
            verdict=verdict, note=note)
    grant = _grant(session, req)
    if verdict == "unjustified" and grant is not None and \
            grants.effective_status(grant, now) == GrantStatus.ACTIVE:
        grants.end(session, grant=grant, status=GrantStatus.REVOKED, actor=caller.actor,
                   now=now, comment=f"break-glass review: unjustified ({note})")
        session.flush()
        session.refresh(req)
    return req


def review_remind(session: Session, *, policy: Policy, request_id: int, round: int,
                  now: datetime) -> bool:
    """Remind the reviewers of an unreviewed break-glass use, and plan the next reminder."""
    req = session.get(AccessRequest, request_id)
    glass = policy.loaded.spec.break_glass
    if req is None or req.reviewed_at is not None or glass is None:
        return False
    _record(session, req, EventType.REQUEST_REVIEW_REMINDED, actor=Actor.system(), now=now,
            round=round, requester=req.requester,
            reviewers=sorted(members(policy, glass.reviewers) - {req.requester}),
            waiting_since=format_time(req.created_at))
    jobs.enqueue(session, kind=REVIEW_REMIND, key=f"request:{req.id}:review:{round + 1}",
                 run_at=now + glass.remind_every, now=now,
                 payload={"request_id": req.id, "round": round + 1})
    return True


class Command(Protocol):
    def __call__(
        self, session: Session, *, policy: Policy, caller: Caller, request_id: int, comment: str,
        now: datetime,
    ) -> AccessRequest: ...
