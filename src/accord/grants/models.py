"""Grants: access that exists, or existed, for a bounded time."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Index, Integer, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from accord.db import Base, UTCDateTime


class GrantStatus(enum.StrEnum):
    PROVISIONING = "provisioning"  # approved; waiting for the target to confirm
    PROVISION_FAILED = "provision_failed"
    ACTIVE = "active"
    EXPIRED = "expired"
    REVOKED = "revoked"
    RELINQUISHED = "relinquished"


class Grant(Base):
    __tablename__ = "grants"
    __table_args__ = (Index("ix_grants_status_ends_at", "status", "ends_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # No FK here: access_requests already points at grants, and one direction keeps DDL simple.
    request_id: Mapped[int] = mapped_column(Integer, index=True)
    user: Mapped[str] = mapped_column(String(64), index=True)
    resource: Mapped[str] = mapped_column(String(64), index=True)
    role: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    starts_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ends_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    ended_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Set by provisioning: how to connect (never a secret), and the one-time secret,
    # encrypted, until the grantee reveals it.
    login: Mapped[str | None] = mapped_column(String(128), nullable=True)
    connection: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    secret_box: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    provisioned_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    deprovisioned_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
