"""API tokens and browser sessions (the cookie carries a random id; only its sha256 is
stored). Users and groups live in accord.yaml, not in tables."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from accord.db import Base, UTCDateTime, utcnow


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user: Mapped[str] = mapped_column(String(64), index=True)  # the user's or agent's name
    # user | agent: a token says what it was issued to, so that a name moving from an
    # agent to a person (or back) in accord.yaml does not carry the token across.
    kind: Mapped[str] = mapped_column(String(16), default="user", server_default="user")
    name: Mapped[str] = mapped_column(String(200), default="")
    # sha256 of the whole token: tokens carry 256 random bits, so a fast hash is enough
    # and lets each API call find its token with one indexed lookup.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    replaced_by: Mapped[int | None] = mapped_column(ForeignKey("api_tokens.id"), nullable=True)


class WebSession(Base):
    __tablename__ = "web_sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    user: Mapped[str] = mapped_column(String(64), index=True)
    method: Mapped[str] = mapped_column(String(16))  # oidc | token | local
    # Synchronizer token for forms; not a credential on its own (it needs the cookie).
    csrf: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # The API token a `token` session was opened with: the session lives no longer than it.
    token_id: Mapped[int | None] = mapped_column(ForeignKey("api_tokens.id"), nullable=True,
                                                 index=True)
