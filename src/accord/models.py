"""Imports every domain's models so metadata (and Alembic) sees all tables."""

from accord.db import Base
from accord.grants.models import Grant
from accord.identity.models import ApiToken
from accord.ledger.models import LedgerEntry
from accord.policy.models import PolicyState, PolicyVersion
from accord.requests.models import AccessRequest, Approval, RequestApprover

metadata = Base.metadata

__all__ = [
    "AccessRequest", "ApiToken", "Approval", "Grant", "LedgerEntry", "PolicyState",
    "PolicyVersion", "RequestApprover", "metadata",
]
