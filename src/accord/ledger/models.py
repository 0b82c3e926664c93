"""The ledger's tables: leaves, completed subtrees, the head, signed checkpoints, sink cursors.

Append-only: database triggers (see migrations) refuse UPDATE and DELETE, except the one
UPDATE the integrator makes, giving a pending leaf its index and chain value once.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    Index,
    Integer,
    LargeBinary,
    SmallInteger,
    String,
    Text,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from accord.db import Base, UTCDateTime

BigId = BigInteger().with_variant(Integer, "sqlite")


class LedgerEntry(Base):
    __tablename__ = "ledger_entries"
    __table_args__ = (
        Index("ix_ledger_entries_subject", "subject"),
        Index("ix_ledger_entries_resource", "resource"),
        Index("ix_ledger_entries_actor", "actor"),
        Index("ix_ledger_entries_type", "type"),
        Index("uq_ledger_entries_idx", "idx", unique=True),
        # The integrator's work queue: only rows still waiting for an index.
        Index(
            "ix_ledger_entries_pending", "id",
            postgresql_where=text("idx IS NULL"), sqlite_where=text("idx IS NULL"),
        ),
    )

    # Storage order only; the leaf index `idx` is assigned contiguously by the integrator
    # (never from a sequence, whose gaps and commit order would break the tree).
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    idx: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    type: Mapped[str] = mapped_column(String(48))
    time: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    actor: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(64))
    resource: Mapped[str | None] = mapped_column(String(64), nullable=True)
    leaf: Mapped[bytes] = mapped_column(LargeBinary)
    leaf_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    # chain[i] = SHA-256(chain[i-1] || leaf_hash[i]): lets a verifier name the first bad index.
    chain: Mapped[bytes | None] = mapped_column(LargeBinary(32), nullable=True)


class LedgerNode(Base):
    """Hash of a completed perfect subtree of level >= 1 (level 0 is the leaf hash)."""

    __tablename__ = "ledger_nodes"

    level: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    idx: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    hash: Mapped[bytes] = mapped_column(LargeBinary(32))


class LedgerHead(Base):
    """One row: the integrated size, its root, the right edge, the last chain value.

    Its row lock is the integrator's coordinator lock on PostgreSQL.
    """

    __tablename__ = "ledger_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    root: Mapped[bytes] = mapped_column(LargeBinary(32))
    frontier: Mapped[bytes] = mapped_column(LargeBinary)
    chain: Mapped[bytes] = mapped_column(LargeBinary(32))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class LedgerWake(Base):
    """One row (PostgreSQL): whether the integrators wait for a NOTIFY to wake them.

    A commit that NOTIFYs takes a lock every such commit in the cluster queues on, held
    through its WAL flush: with one per event, concurrent writers committed one at a time.
    So writers NOTIFY only while `idle` (the trigger reads it); a busy integrator (it found
    work in its last pass) says so here and looks again every 0.2 s until it finds none."""

    __tablename__ = "ledger_wake"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    idle: Mapped[bool] = mapped_column(Boolean, default=True)


class LedgerCheckpoint(Base):
    """A signed checkpoint. One per size: two roots for one size are never signed."""

    __tablename__ = "ledger_checkpoints"

    size: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    root: Mapped[bytes] = mapped_column(LargeBinary(32))
    note: Mapped[str] = mapped_column(Text)
    signed_at: Mapped[datetime] = mapped_column(UTCDateTime)


class SinkCursor(Base):
    """How far each streaming sink has delivered (the next ledger index to send)."""

    __tablename__ = "ledger_sink_cursors"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    position: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class LedgerFinding(Base):
    """Damage the integrity monitor found: the signer signs nothing while one is open.

    Cleared (`cleared_at`) when a walk from index 0 that began after it was found reaches
    the head with every entry re-hashing: the ledger was mended (restored from a backup).
    """

    __tablename__ = "ledger_findings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    idx: Mapped[int] = mapped_column(BigInteger)
    what: Mapped[str] = mapped_column(Text)
    found_at: Mapped[datetime] = mapped_column(UTCDateTime)
    cleared_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
