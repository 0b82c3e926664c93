"""`detect:`: the detectors over the ledger and the alerts they raise."""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from pydantic import Field, field_validator

from accord.spec.base import Strict, as_duration

Sev = Literal["low", "medium", "high", "critical"]
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


class _Rule(Strict):
    enabled: bool = True


class CountRule(_Rule):
    """N events by one person within a window."""

    count: int = Field(default=3, ge=1)
    window: timedelta = timedelta(minutes=10)
    severity: Sev = "medium"

    _d = field_validator("window", mode="before")(lambda cls, v: as_duration(v))


class SimpleRule(_Rule):
    severity: Sev = "medium"


class RubberStampRule(_Rule):
    within: timedelta = timedelta(seconds=30)  # an approval this soon after the request
    share: float = Field(default=0.8, gt=0, le=1)  # one approver deciding this share ...
    min_decisions: int = Field(default=10, ge=2)  # ... of a team's last N decisions
    severity: Sev = "medium"

    _d = field_validator("within", mode="before")(lambda cls, v: as_duration(v))


class WorkingHours(_Rule):
    start: int = Field(default=8, ge=0, le=23)  # hour, in `timezone`
    end: int = Field(default=19, ge=1, le=24)
    timezone: str = "UTC"
    weekdays: list[Weekday] = Field(
        default_factory=lambda: list[Weekday](["mon", "tue", "wed", "thu", "fri"]))
    severity: Sev = "low"

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r}") from None
        return v


class DetectSpec(Strict):
    """Detectors over the ledger; each raises alerts with its severity."""

    repeated_denials: CountRule = Field(default_factory=CountRule)
    failed_gateway_logins: CountRule = Field(
        default_factory=lambda: CountRule(count=5, window=timedelta(minutes=5), severity="high"))
    self_approval: SimpleRule = Field(default_factory=lambda: SimpleRule(severity="high"))
    rubber_stamp: RubberStampRule = Field(default_factory=RubberStampRule)
    off_hours: WorkingHours = Field(default_factory=WorkingHours)
    unused_grant: SimpleRule = Field(default_factory=lambda: SimpleRule(severity="low"))
    scope_violation: SimpleRule = Field(default_factory=lambda: SimpleRule(severity="high"))
    # A refused attempt to leave the grant through the gateway: change the session's role,
    # how the server reads text, or reach the server's files, programs or other sessions.
    gateway_escalation: SimpleRule = Field(default_factory=lambda: SimpleRule(severity="high"))
    drift: SimpleRule = Field(default_factory=lambda: SimpleRule(severity="high"))
    break_glass: SimpleRule = Field(default_factory=lambda: SimpleRule(severity="high"))
    policy_change: SimpleRule = Field(default_factory=lambda: SimpleRule(severity="low"))
    # AI agents (accord.yaml `agents:`): tools refused again and again through the MCP
    # gateway; activity outside the owner's working hours (the agent's `owner_hours`, else
    # `off_hours`'s); more tool calls in a window than a person would make.
    agent_refused_tools: CountRule = Field(
        default_factory=lambda: CountRule(count=3, window=timedelta(minutes=10),
                                          severity="high"))
    agent_off_hours: SimpleRule = Field(default_factory=lambda: SimpleRule(severity="medium"))
    agent_burst: CountRule = Field(
        default_factory=lambda: CountRule(count=100, window=timedelta(minutes=1),
                                          severity="medium"))
    notify: list[str] = Field(default_factory=list)  # groups told of alerts (default: admins)
    notify_severity: Sev = "high"  # alerts at least this severe are sent; all are listed
