"""Imports every domain's models so metadata (and Alembic) sees all tables."""

from accord.db import Base
from accord.grants.models import Grant
from accord.identity.models import ApiToken
from accord.ledger.models import (
    LedgerCheckpoint,
    LedgerEntry,
    LedgerHead,
    LedgerNode,
    SinkCursor,
)
from accord.policy.models import PolicyState, PolicyVersion
from accord.requests.models import AccessRequest, Approval, RequestApprover

metadata = Base.metadata

__all__ = [
    "AccessRequest",
    "ApiToken",
    "Approval",
    "Grant",
    "LedgerCheckpoint",
    "LedgerEntry",
    "LedgerHead",
    "LedgerNode",
    "PolicyState",
    "PolicyVersion",
    "RequestApprover",
    "SinkCursor",
    "metadata",
]
