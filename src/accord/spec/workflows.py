"""`workflows:` (how a request is routed and approved) and `break_glass:`."""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from pydantic import Field, field_validator

from accord.spec.base import Strict, as_duration

DEFAULT_MAX_DURATION = timedelta(hours=8)
DEFAULT_EXPIRE_AFTER = timedelta(hours=24)


class StepSpec(Strict):
    name: str | None = None
    approvers: list[str] = Field(min_length=1)
    min_approvals: int = Field(default=1, ge=1)


class ElevatedSpec(Strict):
    roles: list[str] = Field(min_length=1)
    steps: list[StepSpec] = Field(min_length=1)


class EscalationSpec(Strict):
    remind_after: timedelta | None = None
    escalate_after: timedelta | None = None
    to: list[str] = Field(default_factory=list)
    expire_after: timedelta | None = None

    _d = field_validator("remind_after", "escalate_after", "expire_after", mode="before")(
        lambda cls, v: None if v is None else as_duration(v)
    )


class WorkflowNotifySpec(Strict):
    """Which channels carry a workflow's notifications, and who hears of auto-approvals."""

    # People's channels for this workflow's requests; None: every configured one.
    channels: list[Literal["email", "slack"]] | None = None
    # requester: only the requester; none: nobody; all: the requester and resource owners.
    auto_approved: Literal["requester", "none", "all"] = "requester"


class WorkflowMessages(Strict):
    """What people read when a rule decides, instead of its CEL."""

    auto_deny: str | None = Field(default=None, max_length=300)
    auto_approve: str | None = Field(default=None, max_length=300)


class WorkflowSpec(Strict):
    name: str
    description: str = ""
    match: str = "true"
    # A grant this workflow routed ends when its requester leaves a directory group and the
    # workflow would no longer match them (the group was the reason for the access).
    revoke_on_group_loss: bool = False
    max_duration: timedelta = DEFAULT_MAX_DURATION
    require_reason: bool = True
    auto_approve: str | None = None
    auto_deny: str | None = None
    steps: list[StepSpec] = Field(default_factory=list)
    elevated: ElevatedSpec | None = None
    escalation: EscalationSpec | None = None
    expire_after: timedelta | None = None
    notify: WorkflowNotifySpec = Field(default_factory=WorkflowNotifySpec)
    messages: WorkflowMessages = Field(default_factory=WorkflowMessages)

    _d = field_validator("max_duration", "expire_after", mode="before")(
        lambda cls, v: None if v is None else as_duration(v)
    )

    @property
    def pending_timeout(self) -> timedelta:
        """How long a request may wait for a decision before it expires."""
        if self.expire_after is not None:
            return self.expire_after
        if self.escalation is not None and self.escalation.expire_after is not None:
            return self.escalation.expire_after
        return DEFAULT_EXPIRE_AFTER


class BreakGlassSpec(Strict):
    """Emergency access: granted at once, alerted, and reviewed after the fact."""

    groups: list[str] = Field(min_length=1)  # who may break the glass
    reviewers: list[str] = Field(min_length=1)  # groups that review each use
    max_duration: timedelta = timedelta(hours=1)
    remind_every: timedelta = timedelta(hours=4)  # until reviewed

    _d = field_validator("max_duration", "remind_every", mode="before")(
        lambda cls, v: as_duration(v))
