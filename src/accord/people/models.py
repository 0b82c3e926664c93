"""People and groups pushed by the identity provider (SCIM) or synced at sign-in (OIDC).

Names are the identity: a directory user whose name (userName, case-folded) equals a user
of accord.yaml is that person (the provider adds to what the file says, and deactivating
them ends their access). Group names are one namespace with the file's: a clash is refused.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, Integer, String, text
from sqlalchemy.orm import Mapped, mapped_column

from accord.db import Base, UTCDateTime, utcnow


class DirectoryUser(Base):
    __tablename__ = "directory_users"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)  # the SCIM id (a uuid)
    user_name: Mapped[str] = mapped_column(String(200))  # as the provider spells it
    # The Accord name: userName case-folded (SCIM compares userName case-insensitively, so
    # it is unique this way), what requests, grants and tokens carry.
    name: Mapped[str] = mapped_column(String(64), unique=True)
    external_id: Mapped[str | None] = mapped_column(String(200), nullable=True, index=True)
    display_name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    given_name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    family_name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    email: Mapped[str | None] = mapped_column(String(320), nullable=True, index=True)
    email_type: Mapped[str | None] = mapped_column(String(32), nullable=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    manager_id: Mapped[str | None] = mapped_column(
        ForeignKey("directory_users.id", ondelete="SET NULL"), nullable=True, index=True)
    department: Mapped[str | None] = mapped_column(String(200), nullable=True)
    employee_number: Mapped[str | None] = mapped_column(String(100), nullable=True)
    source: Mapped[str] = mapped_column(String(16))  # scim | oidc
    version: Mapped[int] = mapped_column(Integer, default=1)  # meta.version, W/"n"
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class DirectoryGroup(Base):
    __tablename__ = "directory_groups"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(200), unique=True)
    name_key: Mapped[str] = mapped_column(String(200), unique=True)
    external_id: Mapped[str | None] = mapped_column(String(200), nullable=True, index=True)
    source: Mapped[str] = mapped_column(String(16))  # scim | oidc
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class DirectoryMember(Base):
    __tablename__ = "directory_members"
    __table_args__ = (Index("ix_directory_members_user_id", "user_id"),)

    group_id: Mapped[str] = mapped_column(
        ForeignKey("directory_groups.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[str] = mapped_column(
        ForeignKey("directory_users.id", ondelete="CASCADE"), primary_key=True)
    source: Mapped[str] = mapped_column(String(16))  # scim | oidc
    added_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class DirectoryChange(Base):
    """One row per changed user or group name: every process's snapshot re-reads only the
    names changed since the last sequence number it saw.

    On PostgreSQL a writer logs its rows unnumbered (`seq` NULL, no lock: writers of
    different people work side by side) and the background jobs number what has committed,
    under `directory_state`'s lock, so numbers become visible in order; snapshots also
    re-read what is not numbered yet (`snapshot.refresh`). On SQLite, whose writers take
    turns anyway, a writer numbers its own rows."""

    __tablename__ = "directory_changes"
    __table_args__ = (Index("ix_directory_changes_pending", "id",
                            postgresql_where=text("seq IS NULL")),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"),
                                    primary_key=True, autoincrement=True)
    seq: Mapped[int | None] = mapped_column(Integer, nullable=True, unique=True)
    kind: Mapped[str] = mapped_column(String(8))  # user | group
    name: Mapped[str] = mapped_column(String(200))
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ScimClient(Base):
    """A bearer token for /scim/v2 only (the identity provider's connector), stored hashed."""

    __tablename__ = "scim_clients"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by: Mapped[str] = mapped_column(String(64))
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_by: Mapped[str | None] = mapped_column(String(64), nullable=True)


class DirectoryState(Base):
    """One row: the last change number given. Locked by whoever numbers changes (so
    numbers commit in order and a process catching up never skips one) and by a write with
    consequences while it works them out (so those writers take turns)."""

    __tablename__ = "directory_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, default=0)
