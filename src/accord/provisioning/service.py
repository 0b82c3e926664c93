"""Jobs that make grants real on their targets, take them away, and look for drift.

Each handler runs in the job's transaction: what it records commits together with
marking the job done. Connector calls are idempotent, so a job retried after a crash
or a failure does no harm.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from accord.grants.models import Grant, GrantStatus
from accord.ledger import service as ledger
from accord.ledger.events import Actor, EventType
from accord.provisioning.base import GrantSpec
from accord.provisioning.registry import Connectors

log = logging.getLogger("accord.provisioning")
PROVISION_ATTEMPTS = 5  # then provision_failed: access that never came is reported, not retried
LOUD_AFTER = 3  # deprovisioning keeps trying forever, and says so loudly from here on
RECONCILE = "resource.reconcile"


def spec_of(grant: Grant, action: str) -> GrantSpec:
    return GrantSpec(grant_id=grant.id, user=grant.user, resource=grant.resource,
                     role=grant.role, ends_at=grant.ends_at,
                     idempotency_key=f"grant-{grant.id}-{action}")


def _known(session: Session, resource: str) -> set[tuple[str, str]]:
    """(user, role) of the grants on `resource` the target may hold: live, or ended with
    their deprovisioning job still to run (or retrying): access Accord knows of and is
    taking away is not drift."""
    return {(user, role) for user, role in session.execute(
        select(Grant.user, Grant.role).where(
            Grant.resource == resource,
            or_(Grant.status.in_([GrantStatus.ACTIVE, GrantStatus.PROVISIONING]),
                and_(Grant.provisioned_at.is_not(None), Grant.deprovisioned_at.is_(None))))
    )}


def reconcile(session: Session, *, connectors: Connectors, resource: str, now: datetime,
              enforce: bool) -> list[dict[str, Any]]:
    """Compare what the target grants with live grants; report (and maybe revoke) drift."""
    # What Accord knows of is read before and after the target: a grant that ended and was
    # taken away, or was approved and provisioned, while the target was being read is
    # known to one of the two reads (read once, either order reported it as drift).
    before = _known(session, resource)
    actual = connectors.get(resource).granted()
    live = before | _known(session, resource)
    drift = []
    for user, role in sorted(actual - live):
        found = {"user": user, "role": role, "resource": resource, "enforced": enforce}
        log.warning("DRIFT on %s: %s holds %s without a live grant%s", resource, user, role,
                    " (revoking)" if enforce else "")
        ledger.record(session, type=EventType.DRIFT_DETECTED, actor=Actor.system(),
                      subject=f"resource:{resource}", resource={"name": resource, "role": role},
                      data=found, time=now)
        if enforce:
            spec = GrantSpec(grant_id=0, user=user, resource=resource, role=role, ends_at=now,
                             idempotency_key=f"drift-{resource}-{user}-{role}")
            connector = connectors.get(resource)
            connector.revoke(spec)
            if (user, role) in connector.granted():  # say "revoked" only when it is gone
                log.critical("DRIFT on %s: could not revoke %s from %s", resource, role, user)
            else:
                ledger.record(session, type=EventType.DRIFT_REVOKED, actor=Actor.system(),
                              subject=f"resource:{resource}",
                              resource={"name": resource, "role": role}, data=found, time=now)
        drift.append(found)
    return drift
