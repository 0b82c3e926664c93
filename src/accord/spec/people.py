"""`users:`, `identity:` (where else people and groups come from) and `accord:` (the groups
holding Accord's own roles)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from accord.spec.base import Strict


class UserSpec(Strict):
    email: str | None = None
    slack: str | None = None
    name: str | None = None
    manager: str | None = None  # approves steps that name `manager` (the directory's wins)


class IdentitySpec(Strict):
    """People and groups from the identity provider, beside the file's (docs/directory.md)."""

    scim: bool = Field(default=False, description="accept SCIM 2.0 pushes at /scim/v2")
    oidc_groups: Literal["off", "sync"] = Field(
        default="off", description="sync: each OIDC sign-in sets the person's provider groups "
        "to the ID token's groups claim")

    @property
    def from_provider(self) -> bool:
        """Groups and users may come from the provider: names the file does not define are
        resolved against the directory instead of refused."""
        return self.scim or self.oidc_groups == "sync"


class AccordRoles(Strict):
    admins: list[str] = Field(default_factory=list, description="groups holding Accord admin")
    auditors: list[str] = Field(default_factory=list, description="groups holding Accord auditor")
