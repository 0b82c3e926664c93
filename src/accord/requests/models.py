"""Access requests, the approvals recorded on them, and who may decide each step."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import JSON, Boolean, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

if TYPE_CHECKING:  # for the relationship's type only: SQLAlchemy resolves "Grant" by name
    from accord.grants.models import Grant

from accord.db import Base, UTCDateTime, utcnow


class Status(enum.StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    ACTIVE = "active"
    DENIED = "denied"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    REVOKED = "revoked"
    RELINQUISHED = "relinquished"
    PROVISION_FAILED = "provision_failed"
    EXECUTED = "executed"  # a statement review's statement ran (once)


TERMINAL = frozenset(
    {Status.DENIED, Status.CANCELLED, Status.EXPIRED, Status.REVOKED, Status.RELINQUISHED,
     Status.PROVISION_FAILED, Status.EXECUTED}
)

ACCESS = "access"  # a request for a grant: a role on a resource for a while
STATEMENT = "statement"  # one exact statement, run once through the gateway
TOOL_CALL = "tool_call"  # one MCP tool call with exact arguments, run once (`details`)
KINDS = (ACCESS, STATEMENT, TOOL_CALL)


class AccessRequest(Base):
    __tablename__ = "access_requests"
    __table_args__ = (
        Index("ix_access_requests_status_pending_until", "status", "pending_until"),
        Index("ix_access_requests_requester_id", "requester", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), default=ACCESS, server_default=ACCESS)
    requester: Mapped[str] = mapped_column(String(64))
    resource: Mapped[str] = mapped_column(String(64), index=True)
    role: Mapped[str] = mapped_column(String(64))
    duration_seconds: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(16), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_via: Mapped[str] = mapped_column(String(16))
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    pending_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    decision_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The routing decision, frozen at creation: workflow name, policy version, rule, steps.
    workflow: Mapped[str | None] = mapped_column(String(64), nullable=True)
    policy_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    rule: Mapped[str | None] = mapped_column(String(32), nullable=True)
    plan: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    current_step: Mapped[int | None] = mapped_column(Integer, nullable=True)
    extends_grant_id: Mapped[int | None] = mapped_column(
        ForeignKey("grants.id"), nullable=True, index=True
    )
    grant_id: Mapped[int | None] = mapped_column(ForeignKey("grants.id"), nullable=True)
    # Break-glass: granted at once under `break_glass` in accord.yaml, reviewed afterwards.
    emergency: Mapped[bool] = mapped_column(Boolean, default=False)
    # Of a tool_call (`kind`): one call of one tool with exactly these arguments, held by the
    # MCP gateway until approved (tool, arguments_sha256, grant_id, and executed_at once it
    # ran). An approved tool call makes no grant.
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    reviewed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    reviewed_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    review_verdict: Mapped[str | None] = mapped_column(String(16), nullable=True)
    review_note: Mapped[str | None] = mapped_column(Text, nullable=True)

    approvals: Mapped[list[Approval]] = relationship(
        back_populates="request", order_by="Approval.id", lazy="selectin"
    )
    grant: Mapped[Grant | None] = relationship(foreign_keys=[grant_id])
    statement: Mapped[StatementReview | None] = relationship(back_populates="request",
                                                              uselist=False)


class StatementReview(Base):
    """What a request of kind `statement` is about: one exact statement (and its parameter
    values), bound by its sha256 to the approval and to the one execution it allows."""

    __tablename__ = "statement_reviews"
    __table_args__ = (Index("ix_statement_reviews_sha256", "sha256"),)

    request_id: Mapped[int] = mapped_column(ForeignKey("access_requests.id"),
                                            primary_key=True)
    grant_id: Mapped[int] = mapped_column(ForeignKey("grants.id"))  # the session's, at filing
    session: Mapped[str] = mapped_column(String(64))  # the gateway session that sent it
    protocol: Mapped[str] = mapped_column(String(16))
    statement: Mapped[str] = mapped_column(Text)
    params: Mapped[list[str | None] | None] = mapped_column(JSON, nullable=True)  # redacted: None
    param_count: Mapped[int] = mapped_column(Integer, default=0)
    sha256: Mapped[str] = mapped_column(String(64))
    rule: Mapped[str] = mapped_column(String(64))
    window_seconds: Mapped[int] = mapped_column(Integer)
    run_by: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)  # approved + window
    executed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    executed_session: Mapped[str | None] = mapped_column(String(64), nullable=True)

    request: Mapped[AccessRequest] = relationship(back_populates="statement")


class Approval(Base):
    """One person's decision on one request; a person decides a request at most once."""

    __tablename__ = "approvals"
    __table_args__ = (UniqueConstraint("request_id", "approver"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("access_requests.id"))
    step: Mapped[int] = mapped_column(Integer)
    approver: Mapped[str] = mapped_column(String(64))
    decision: Mapped[str] = mapped_column(String(8))
    comment: Mapped[str] = mapped_column(Text, default="")
    via: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    request: Mapped[AccessRequest] = relationship(back_populates="approvals")


class RequestApprover(Base):
    """Who may decide each step of a pending request, resolved from the current policy.

    Kept as rows so the approvals inbox is one indexed query; recomputed for
    pending requests whenever the policy is reloaded.
    """

    __tablename__ = "request_approvers"

    request_id: Mapped[int] = mapped_column(ForeignKey("access_requests.id"), primary_key=True)
    step: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)
