"""How Accord's own processes run: `worker:` and `web:` (sessions, sign-in)."""

from __future__ import annotations

from datetime import timedelta

from pydantic import Field, field_validator

from accord.spec.base import Strict, as_duration


class WorkerSpec(Strict):
    reconcile_every: timedelta = timedelta(minutes=1)  # compare targets with grants this often

    _d = field_validator("reconcile_every", mode="before")(lambda cls, v: as_duration(v))


class OidcSpec(Strict):
    """Single sign-on with any OpenID Connect provider (authorization code + PKCE)."""

    issuer: str  # discovery at {issuer}/.well-known/openid-configuration
    client_id: str
    client_secret_env: str | None = None  # env var holding it; public clients use PKCE alone
    scopes: list[str] = Field(default_factory=lambda: ["openid", "profile", "email"])
    username_claim: str = "preferred_username"  # matched against the users in this file
    groups_claim: str = "groups"  # recorded at login; see allowed_groups
    allowed_groups: list[str] = Field(default_factory=list)  # if set, one is required
    label: str = "single sign-on"  # the login button's text


class WebSpec(Strict):
    session_ttl: timedelta = timedelta(hours=12)
    # Pick a user without a password: for the embedded demo only, never in production.
    local_login: bool = False
    token_login: bool = True  # sign in by pasting an API token
    oidc: OidcSpec | None = None

    _d = field_validator("session_ttl", mode="before")(lambda cls, v: as_duration(v))
