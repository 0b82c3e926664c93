"""Audit events as stored leaves: the exact JCS bytes, plus columns to filter on."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Index, Integer, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from accord.db import Base, UTCDateTime


class LedgerEntry(Base):
    __tablename__ = "ledger_entries"
    __table_args__ = (
        Index("ix_ledger_entries_subject", "subject"),
        Index("ix_ledger_entries_resource", "resource"),
        Index("ix_ledger_entries_actor", "actor"),
        Index("ix_ledger_entries_type", "type"),
    )

    # Storage order only. The Merkle leaf index is assigned contiguously by the ledger
    # (never from a sequence, whose gaps and commit order would break the tree).
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    type: Mapped[str] = mapped_column(String(48))
    time: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    actor: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(64))
    resource: Mapped[str | None] = mapped_column(String(64), nullable=True)
    leaf: Mapped[bytes] = mapped_column(LargeBinary)
