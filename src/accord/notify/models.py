"""Signatures of Slack requests already handled, so a replay within the window is refused."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from accord.db import Base, UTCDateTime


class SlackSeen(Base):
    __tablename__ = "slack_seen"

    signature: Mapped[str] = mapped_column(String(80), primary_key=True)
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
