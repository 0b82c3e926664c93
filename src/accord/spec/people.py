"""`users:` and `accord:` (the groups holding Accord's own roles)."""

from __future__ import annotations

from pydantic import Field

from accord.spec.base import Strict


class UserSpec(Strict):
    email: str | None = None
    slack: str | None = None
    name: str | None = None


class AccordRoles(Strict):
    admins: list[str] = Field(default_factory=list, description="groups holding Accord admin")
    auditors: list[str] = Field(default_factory=list, description="groups holding Accord auditor")
