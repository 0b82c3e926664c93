"""The gateway's tables: connection tokens, per-grant usage, spool flush marks, and the
bytes of session recordings."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Integer, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from accord.db import Base, UTCDateTime


class GatewayToken(Base):
    """A short-lived password for the gateway, bound to one user, resource and grant.

    Only the sha256 of the token is kept: it carries 256 random bits, so a slow hash
    would add nothing but cost on every connection.
    """

    __tablename__ = "gateway_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user: Mapped[str] = mapped_column(String(64))
    resource: Mapped[str] = mapped_column(String(64))
    grant_id: Mapped[int] = mapped_column(Integer, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class GatewayUsage(Base):
    """How a grant has been used through the gateway, kept with the events that tell it."""

    __tablename__ = "gateway_usage"

    grant_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    first_used_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime] = mapped_column(UTCDateTime)
    statement_count: Mapped[int] = mapped_column(BigInteger, default=0)
    violation_count: Mapped[int] = mapped_column(BigInteger, default=0)
    session_count: Mapped[int] = mapped_column(BigInteger, default=0)


class GatewaySpoolMark(Base):
    """How far one gateway process's spool is in the ledger (its crash replay skips that)."""

    __tablename__ = "gateway_spool_marks"

    instance: Mapped[str] = mapped_column(String(64), primary_key=True)
    committed: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class GatewayRecording(Base):
    """The bytes of one recording chunk, named by their sha256 (content-addressed: the same
    bytes are kept once). The ledger's `gateway.ssh_chunk` events carry each chunk's sha256
    and size, so replaced or edited bytes fail verification."""

    __tablename__ = "gateway_recordings"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(Integer)
    # The bytes, or null when they are in a pack file (`gateway.ssh.recordings_dir`):
    # `location` says where (`name@offset`, `accord.gateway.packs`).
    data: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    location: Mapped[str | None] = mapped_column(String(256), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class GatewaySSHKey(Base):
    """A public key a user registered (`accord ssh-key add`) to log in to the SSH gateway
    without a connection token; the active grant is still checked at each login."""

    __tablename__ = "gateway_ssh_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user: Mapped[str] = mapped_column(String(64), index=True)
    fingerprint: Mapped[str] = mapped_column(String(128), unique=True)  # SHA256:...
    public_key: Mapped[str] = mapped_column(String(16384))
    name: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
