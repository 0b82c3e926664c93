"""Review campaigns, their entries (one per user, resource and role under review) and who
may decide each entry."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from accord.db import Base, UTCDateTime


class CampaignStatus(enum.StrEnum):
    OPEN = "open"
    COMPLETED = "completed"


class EntryStatus(enum.StrEnum):
    PENDING = "pending"
    CERTIFIED = "certified"
    REVOKED = "revoked"
    EXPIRED = "expired"  # nobody decided before the campaign's deadline


class ReviewCampaign(Base):
    __tablename__ = "review_campaigns"
    __table_args__ = (
        # One open campaign per review definition: periods never overlap, and two admins
        # (or an admin and the scheduler) starting one at once cannot both win.
        Index("uq_review_campaigns_open", "definition", unique=True,
              sqlite_where=text("status = 'open'"), postgresql_where=text("status = 'open'")),
        Index("ix_review_campaigns_definition_started", "definition", "started_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    definition: Mapped[str] = mapped_column(String(64))  # reviews[].name in accord.yaml
    status: Mapped[str] = mapped_column(String(16), index=True)
    trigger: Mapped[str] = mapped_column(String(16))  # schedule | manual
    started_by: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    deadline: Mapped[datetime] = mapped_column(UTCDateTime)
    # The access under review: grants live at started_at, or held in [period_start, period_end).
    period_start: Mapped[datetime] = mapped_column(UTCDateTime)
    period_end: Mapped[datetime] = mapped_column(UTCDateTime)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    policy_version: Mapped[str] = mapped_column(String(64))
    # The definition as it was at the start (resources, reviewers, thresholds).
    spec: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class ReviewEntry(Base):
    """One (user, resource, role) under review, its evidence, and the one decision on it."""

    __tablename__ = "review_entries"
    __table_args__ = (
        Index("uq_review_entries_key", "campaign_id", "user", "resource", "role", unique=True),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("review_campaigns.id"))
    user: Mapped[str] = mapped_column(String(64))
    resource: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(64))
    standing: Mapped[bool] = mapped_column(Boolean)  # a live grant at the start
    period_grants: Mapped[int] = mapped_column(Integer)  # grants held during the period
    # Evidence: the grants and requests behind the entry, and the ledger indices of the
    # grants' grant.activated events (an auditor checks each with an inclusion proof).
    grant_ids: Mapped[list[int]] = mapped_column(JSON, default=list)
    request_ids: Mapped[list[int]] = mapped_column(JSON, default=list)
    evidence: Mapped[list[int]] = mapped_column(JSON, default=list)
    status: Mapped[str] = mapped_column(String(16))
    decided_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    decided_via: Mapped[str | None] = mapped_column(String(16), nullable=True)
    note: Mapped[str] = mapped_column(Text, default="")
    revoked_grant_ids: Mapped[list[int]] = mapped_column(JSON, default=list)


class ReviewReviewer(Base):
    """Who may decide an entry, resolved when the campaign starts (never the entry's user)."""

    __tablename__ = "review_reviewers"
    __table_args__ = (Index("ix_review_reviewers_username", "username", "campaign_id"),)

    entry_id: Mapped[int] = mapped_column(ForeignKey("review_entries.id"), primary_key=True)
    username: Mapped[str] = mapped_column(String(64), primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("review_campaigns.id"))
