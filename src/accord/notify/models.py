"""Notification tables: Slack replay guard, people's preferences, and digest items."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import JSON, BigInteger, Index, Integer, String, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from accord.db import Base, UTCDateTime

BigId = BigInteger().with_variant(Integer, "sqlite")


class SlackSeen(Base):
    """Signatures of Slack requests already handled, so a replay within the window is refused."""

    __tablename__ = "slack_seen"

    signature: Mapped[str] = mapped_column(String(80), primary_key=True)
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class Mode(enum.StrEnum):
    IMMEDIATE = "immediate"  # one message per event
    DIGEST = "digest"  # one message a day, at digest_hour UTC (urgent events stay immediate)


class NotificationPreference(Base):
    """What one user chose. No row: every available channel, immediately."""

    __tablename__ = "notification_preferences"

    user: Mapped[str] = mapped_column(String(64), primary_key=True)
    # The channels chosen ("email", "slack"); None: every channel available to the user.
    channels: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    mode: Mapped[str] = mapped_column(String(16))
    digest_hour: Mapped[int | None] = mapped_column(Integer, nullable=True)  # 0-23, UTC
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_by: Mapped[str] = mapped_column(String(64))


class DigestItem(Base):
    """One event waiting for (or sent in) a user's daily digest on one channel.

    (event_index, channel, recipient) is unique, exactly like an immediate delivery's
    job key, so routing an event twice stores it once.
    """

    __tablename__ = "notification_digest_items"
    __table_args__ = (
        UniqueConstraint("event_index", "channel", "recipient"),
        # The next digest's contents: a recipient's items not sent yet.
        Index("ix_notification_digest_items_unsent", "recipient",
              postgresql_where=text("sent_at IS NULL"), sqlite_where=text("sent_at IS NULL")),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    event_index: Mapped[int] = mapped_column(BigInteger)  # the ledger event routed
    show_index: Mapped[int] = mapped_column(BigInteger)  # the ledger event rendered
    event_type: Mapped[str] = mapped_column(String(64))
    channel: Mapped[str] = mapped_column(String(64))
    recipient: Mapped[str] = mapped_column(String(64))
    approver: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    digest: Mapped[str | None] = mapped_column(String(200), nullable=True)  # the job that sent it
    outcome: Mapped[str | None] = mapped_column(String(16), nullable=True)  # sent | failed
