"""`reviews:`: access review campaigns."""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from pydantic import Field, field_validator

from accord.spec.base import Strict, as_duration


class ReviewRecurringSpec(Strict):
    """Access held again and again counts like standing access: this many grants or more."""

    min_grants: int = Field(default=3, ge=1)


class ReviewSpec(Strict):
    """An access review campaign, started every `every`: reviewers certify or revoke each
    standing or recurring (user, resource, role) of the resources it covers."""

    name: str
    description: str = ""
    every: timedelta = timedelta(days=90)
    resources: list[str] = Field(default_factory=list)  # names, or
    match: str | None = None  # CEL over `resource`
    reviewers: list[str] = Field(default_factory=lambda: ["owners"])
    duration: timedelta = timedelta(days=14)  # open this long; undecided entries expire
    remind_every: timedelta | None = timedelta(days=2)  # null: no reminders
    recurring: ReviewRecurringSpec | None = Field(default_factory=ReviewRecurringSpec)
    # What an entry nobody decided by the deadline means: access stays until its own end
    # (keep), or the access is revoked like a reviewer's revoke (revoke: fail closed).
    on_expiry: Literal["keep", "revoke"] = "keep"

    _d = field_validator("every", "duration", "remind_every", mode="before")(
        lambda cls, v: None if v is None else as_duration(v))
