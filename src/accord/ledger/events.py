"""Typed audit events and their envelope.

The envelope is the contract with auditors: `v`, `type`, `time` (UTC,
microseconds), `actor` (`kind`, `id`, `via`), `subject`, `resource`, `data`,
and `policy` (`name`, `version`, `rule`) when an automation decided.
"""

from __future__ import annotations

import enum
import getpass
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

ENVELOPE_VERSION = 1


class EventType(enum.StrEnum):
    POLICY_LOADED = "policy.loaded"
    POLICY_REFUSED = "policy.refused"
    REQUEST_CREATED = "request.created"
    REQUEST_APPROVED = "request.approved"
    REQUEST_DENIED = "request.denied"
    REQUEST_CANCELLED = "request.cancelled"
    REQUEST_EXPIRED = "request.expired"
    REQUEST_REMINDED = "request.reminded"
    REQUEST_ESCALATED = "request.escalated"
    # A statement review's statement ran once through the gateway, or a run was refused.
    REQUEST_STATEMENT_EXECUTED = "request.statement_executed"
    REQUEST_STATEMENT_REFUSED = "request.statement_refused"
    REQUEST_EXECUTED = "request.executed"  # an approved tool call released to run, once
    APPROVAL_RECORDED = "approval.recorded"
    GRANT_PROVISIONING = "grant.provisioning"
    GRANT_PROVISION_FAILED = "grant.provision_failed"
    GRANT_ACTIVATED = "grant.activated"
    GRANT_SECRET_REVEALED = "grant.secret_revealed"
    GRANT_DEPROVISIONED = "grant.deprovisioned"
    GRANT_DEPROVISION_FAILING = "grant.deprovision_failing"
    NOTIFICATION_SENT = "notification.sent"
    NOTIFICATION_FAILED = "notification.failed"
    NOTIFICATION_PREFERENCES_CHANGED = "notification.preferences_changed"
    DRIFT_DETECTED = "drift.detected"
    DRIFT_REVOKED = "drift.revoked"
    GRANT_EXTENDED = "grant.extended"
    GRANT_EXPIRING = "grant.expiring"
    GRANT_EXPIRED = "grant.expired"
    GRANT_REVOKED = "grant.revoked"
    GRANT_RELINQUISHED = "grant.relinquished"
    TOKEN_ISSUED = "token.issued"
    TOKEN_REVOKED = "token.revoked"
    GATEWAY_TOKEN_ISSUED = "gateway.token_issued"
    GATEWAY_SESSION_OPENED = "gateway.session_opened"
    GATEWAY_SESSION_CLOSED = "gateway.session_closed"
    GATEWAY_STATEMENT = "gateway.statement"
    GATEWAY_VIOLATION = "gateway.violation"
    GATEWAY_GUARDRAIL = "gateway.guardrail"
    GATEWAY_TOOL_CALL = "gateway.tool_call"
    GATEWAY_LOGIN_REFUSED = "gateway.login_refused"
    GATEWAY_LOGINS_SUPPRESSED = "gateway.logins_suppressed"
    APPROVAL_REFUSED = "approval.refused"
    REQUEST_REVIEWED = "request.reviewed"
    REQUEST_REVIEW_REMINDED = "request.review_reminded"
    ALERT_RAISED = "alert.raised"
    ALERT_ACKNOWLEDGED = "alert.acknowledged"
    ALERT_RESOLVED = "alert.resolved"
    WEB_LOGIN = "web.login"
    WEB_LOGIN_REFUSED = "web.login_refused"
    WEB_LOGOUT = "web.logout"
    REPORT_GENERATED = "report.generated"
    REVIEW_STARTED = "review.started"
    REVIEW_DECIDED = "review.decided"
    REVIEW_REFUSED = "review.refused"
    REVIEW_REMINDED = "review.reminded"
    REVIEW_COMPLETED = "review.completed"
    DIRECTORY_USER_CREATED = "directory.user_created"
    DIRECTORY_USER_UPDATED = "directory.user_updated"
    DIRECTORY_USER_DEACTIVATED = "directory.user_deactivated"
    DIRECTORY_USER_REACTIVATED = "directory.user_reactivated"
    DIRECTORY_USER_DELETED = "directory.user_deleted"
    DIRECTORY_GROUP_CREATED = "directory.group_created"
    DIRECTORY_GROUP_UPDATED = "directory.group_updated"
    DIRECTORY_GROUP_DELETED = "directory.group_deleted"
    DIRECTORY_MEMBER_ADDED = "directory.member_added"
    DIRECTORY_MEMBER_REMOVED = "directory.member_removed"
    SCIM_TOKEN_ISSUED = "scim.token_issued"
    SCIM_TOKEN_REVOKED = "scim.token_revoked"
    LEDGER_MENDED = "ledger.mended"
    LEDGER_KEY_ROTATED = "ledger.key_rotated"
    LEDGER_RESTORE_ACKNOWLEDGED = "ledger.restore_acknowledged"


def os_user() -> str:
    """The operating-system user running an operator command (recorded beside its actor)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container): say so rather than guess
        return "unknown"


class Via(enum.StrEnum):
    WEB = "web"
    CLI = "cli"
    API = "api"
    SLACK = "slack"
    GATEWAY = "gateway"
    WORKER = "worker"
    POLICY = "policy"
    SCIM = "scim"
    MCP = "mcp"


@dataclass(frozen=True)
class Actor:
    # user | agent | policy | system | scim (an identity provider's client) | anonymous
    kind: str
    id: str
    via: str
    owner: str | None = None  # an agent's: the person it acts for

    @classmethod
    def user(cls, name: str, via: str) -> Actor:
        return cls("user", name, via)

    @classmethod
    def agent(cls, name: str, owner: str, via: str) -> Actor:
        """An AI agent (or other program) acting for its owner."""
        return cls("agent", name, via, owner)

    @classmethod
    def scim(cls, client: str) -> Actor:
        """An identity provider pushing over SCIM, by the name its token was issued to."""
        return cls("scim", client, Via.SCIM)

    @classmethod
    def system(cls, via: str = Via.WORKER) -> Actor:
        return cls("system", "accord", via)

    def as_dict(self) -> dict[str, str]:
        out = {"kind": self.kind, "id": self.id, "via": str(self.via)}
        if self.owner is not None:
            out["owner"] = self.owner
        return out


@dataclass(frozen=True)
class PolicyRef:
    """Which automation decided: workflow name, policy version hash and the rule that fired."""

    name: str
    version: str
    rule: str

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version, "rule": self.rule}


def format_time(value: datetime) -> str:
    """RFC 3339 UTC with exactly six fractional digits: sortable and lossless."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def envelope(
    *,
    type: EventType,
    time: datetime,
    actor: Actor,
    subject: str,
    resource: dict[str, Any] | None,
    data: dict[str, Any],
    policy: PolicyRef | None = None,
) -> dict[str, Any]:
    env: dict[str, Any] = {
        "v": ENVELOPE_VERSION,
        "type": str(type),
        "time": format_time(time),
        "actor": actor.as_dict(),
        "subject": subject,
        "resource": resource,
        "data": data,
    }
    if policy is not None:
        env["policy"] = policy.as_dict()
    return env
