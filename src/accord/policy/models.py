"""Every policy version ever loaded, kept whole so a decision can be traced to its text."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String, Text
from sqlalchemy.orm import Mapped, mapped_column

from accord.db import Base, UTCDateTime, utcnow


class PolicyVersion(Base):
    __tablename__ = "policy_versions"

    version: Mapped[str] = mapped_column(String(64), primary_key=True)
    text: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(500))
    first_loaded_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    first_loaded_by: Mapped[str] = mapped_column(String(64))


class PolicyState(Base):
    """One row: the version most recently announced in the ledger (a lock point for replicas)."""

    __tablename__ = "policy_state"

    id: Mapped[int] = mapped_column(primary_key=True)
    version: Mapped[str] = mapped_column(String(64))
    loaded_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
