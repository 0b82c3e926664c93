"""Imports every domain's models so metadata (and Alembic) sees all tables."""

from accord.db import Base
from accord.detect.models import Alert, DetectorCursor
from accord.grants.models import Grant
from accord.identity.models import ApiToken, WebSession
from accord.jobs.models import Job
from accord.ledger.models import (
    LedgerCheckpoint,
    LedgerEntry,
    LedgerHead,
    LedgerNode,
    LedgerWake,
    SinkCursor,
)
from accord.notify.models import SlackSeen
from accord.people.models import (
    DirectoryChange,
    DirectoryGroup,
    DirectoryMember,
    DirectoryState,
    DirectoryUser,
    ScimClient,
)
from accord.policy.models import PolicyState, PolicyVersion
from accord.requests.models import AccessRequest, Approval, RequestApprover
from accord.reviews.models import ReviewCampaign, ReviewEntry, ReviewReviewer

metadata = Base.metadata

__all__ = [
    "AccessRequest",
    "Alert",
    "ApiToken",
    "Approval",
    "DetectorCursor",
    "DirectoryChange",
    "DirectoryGroup",
    "DirectoryMember",
    "DirectoryState",
    "DirectoryUser",
    "Grant",
    "Job",
    "LedgerCheckpoint",
    "LedgerEntry",
    "LedgerHead",
    "LedgerNode",
    "LedgerWake",
    "PolicyState",
    "PolicyVersion",
    "RequestApprover",
    "ReviewCampaign",
    "ReviewEntry",
    "ReviewReviewer",
    "ScimClient",
    "SinkCursor",
    "SlackSeen",
    "WebSession",
    "metadata",
]
