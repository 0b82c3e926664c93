"""API shapes for requests and grants."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from accord.durations import DurationError, format_duration, parse_duration
from accord.grants.models import Grant
from accord.grants.service import effective_status as grant_status
from accord.requests.models import AccessRequest


class StrictIn(BaseModel):
    """A request body: unknown fields and control characters refused, text stripped."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    @field_validator("*", mode="after")
    @classmethod
    def _printable(cls, v: Any) -> Any:
        # PostgreSQL text cannot hold NUL, and control characters only hide things from
        # whoever reads the audit trail later; tabs and newlines are fine in free text.
        if isinstance(v, str) and any((ord(c) < 32 and c not in "\t\n\r") or c == "\x7f"
                                      for c in v):
            raise ValueError("must not contain control characters")
        return v


def _parse(value: str) -> str:
    try:
        parse_duration(value)
    except DurationError as exc:
        raise ValueError(str(exc)) from None
    return value


class RequestCreate(StrictIn):
    resource: str = Field(min_length=1, max_length=64, examples=["orders-db"])
    role: str = Field(min_length=1, max_length=64, examples=["read"])
    duration: str = Field(max_length=32, examples=["1h30m", "45m", "PT1H30M"])
    reason: str = Field(default="", max_length=2000, examples=["INC-42: investigate orders"])
    emergency: bool = Field(default=False, description=(
        "break-glass: granted at once to the groups in `break_glass`, alerted, and "
        "reviewed afterwards"))

    _d = field_validator("duration")(lambda cls, v: _parse(v))

    @property
    def timedelta(self) -> timedelta:
        return parse_duration(self.duration)


class CommentIn(StrictIn):
    comment: str = Field(default="", max_length=2000)


class ReviewIn(StrictIn):
    verdict: str = Field(examples=["justified"], description="justified | unjustified")
    note: str = Field(min_length=1, max_length=2000, examples=["INC-9 confirmed by on-call"])


class ExtendIn(StrictIn):
    duration: str = Field(max_length=32, examples=["1h"])
    reason: str = Field(default="", max_length=2000)

    _d = field_validator("duration")(lambda cls, v: _parse(v))


class ApprovalOut(BaseModel):
    approver: str
    decision: str
    comment: str
    via: str
    at: datetime


class StepOut(BaseModel):
    index: int
    name: str | None
    approvers: list[str]
    eligible: list[str]
    min_approvals: int
    elevated: bool
    # The workflow's escalation group joined this step's approvers (it could not be
    # filled without them, or it waited past escalation.escalate_after).
    escalated: bool = False
    approvals: list[ApprovalOut]
    complete: bool


class WorkflowRef(BaseModel):
    name: str | None
    version: str | None
    rule: str | None


class GrantOut(BaseModel):
    id: int
    request_id: int
    user: str
    resource: str
    role: str
    status: str
    starts_at: datetime
    ends_at: datetime
    ended_at: datetime | None
    ended_by: str | None
    login: str | None = None
    connection: dict[str, Any] | None = Field(
        default=None, description="how to connect (host, port, database, user); never a secret")
    secret_available: bool = Field(
        default=False, description="a one-time password waits for POST /grants/{id}/reveal")

    @classmethod
    def of(cls, g: Grant, now: datetime) -> GrantOut:
        return cls(
            id=g.id, request_id=g.request_id, user=g.user, resource=g.resource, role=g.role,
            status=grant_status(g, now), starts_at=g.starts_at, ends_at=g.ends_at,
            ended_at=g.ended_at if g.ended_at else (g.ends_at if g.ends_at <= now else None),
            ended_by=g.ended_by, login=g.login, connection=g.connection,
            secret_available=g.secret_box is not None,
        )


class StatementOut(BaseModel):
    """What a request of kind `statement` is about, and whether it ran."""

    sql: str
    sha256: str
    params: list[str | None] | None = Field(description="values; null when redacted")
    param_count: int
    protocol: str
    grant_id: int
    session: str
    rule: str
    window_seconds: int
    run_by: datetime | None
    executed_at: datetime | None
    executed_session: str | None


class RequestOut(BaseModel):
    id: int
    requester: str
    resource: str
    role: str
    duration: str
    duration_seconds: int
    reason: str
    status: str
    created_at: datetime
    created_via: str
    decided_at: datetime | None
    pending_until: datetime | None
    decision_reason: str | None
    workflow: WorkflowRef
    current_step: int | None
    steps: list[StepOut]
    grant: GrantOut | None
    extends_grant_id: int | None
    emergency: bool = False
    kind: str = Field(default="access", description="access (a grant for a while); statement: "
                      "one exact statement run once through the gateway; tool_call: one "
                      "call of one tool through the MCP gateway, held until approved")
    tool_call: dict[str, Any] | None = Field(
        default=None, description="a tool_call's tool, arguments (unless redacted), their "
        "sha256 and the grant it runs under")
    review: dict[str, Any] | None = Field(
        default=None, description="break-glass review: verdict, by, at, note")
    statement: StatementOut | None = None

    @classmethod
    def of(
        cls,
        r: AccessRequest,
        *,
        status: str,
        grant: Grant | None,
        eligible: dict[int, list[str]],
        now: datetime,
    ) -> RequestOut:
        steps = []
        for i, s in enumerate(r.plan.get("steps", [])):
            approvals = [a for a in r.approvals if a.step == i]
            approved = {a.approver for a in approvals if a.decision == "approve"}
            steps.append(
                StepOut(
                    index=i, name=s.get("name"), approvers=list(s["approvers"]),
                    eligible=eligible.get(i, []), min_approvals=s["min_approvals"],
                    elevated=bool(s.get("elevated")), escalated=bool(s.get("escalated")),
                    approvals=[
                        ApprovalOut(approver=a.approver, decision=a.decision, comment=a.comment,
                                    via=a.via, at=a.created_at)
                        for a in approvals
                    ],
                    complete=len(approved) >= s["min_approvals"],
                )
            )
        return cls(
            id=r.id, requester=r.requester, resource=r.resource, role=r.role,
            duration=format_duration(timedelta(seconds=r.duration_seconds)),
            duration_seconds=r.duration_seconds, reason=r.reason, status=status,
            created_at=r.created_at, created_via=r.created_via, decided_at=r.decided_at,
            pending_until=r.pending_until if status == "pending" else None,
            decision_reason=r.decision_reason,
            workflow=WorkflowRef(name=r.workflow, version=r.policy_version, rule=r.rule),
            current_step=r.current_step if status == "pending" else None,
            steps=steps, grant=GrantOut.of(grant, now) if grant else None,
            extends_grant_id=r.extends_grant_id,
            emergency=bool(r.emergency), kind=r.kind or "access", tool_call=r.details,
            review={"verdict": r.review_verdict, "by": r.reviewed_by, "at": r.reviewed_at,
                    "note": r.review_note} if r.reviewed_at else None,
            statement=StatementOut(
                sql=st.statement, sha256=st.sha256, params=st.params,
                param_count=st.param_count, protocol=st.protocol, grant_id=st.grant_id,
                session=st.session, rule=st.rule, window_seconds=st.window_seconds,
                run_by=st.run_by, executed_at=st.executed_at,
                executed_session=st.executed_session)
            if r.kind == "statement" and (st := r.statement) is not None else None,
        )
