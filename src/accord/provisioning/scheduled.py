"""The worker's side of provisioning: job handlers that make grants real on their
targets, end them when due, and take them away again.

Each handler runs in the job's transaction: what it records commits together with
marking the job done. Connector calls are idempotent, so a job retried after a crash
or a failure does no harm.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from accord import metrics
from accord.grants import service as grants
from accord.grants.models import Grant, GrantStatus
from accord.jobs import service as jobs
from accord.ledger import service as ledger
from accord.ledger.events import Actor, EventType
from accord.provisioning import service
from accord.provisioning.base import ConnectorError
from accord.provisioning.registry import Connectors
from accord.provisioning.secrets import SecretBox
from accord.provisioning.service import LOUD_AFTER, PROVISION_ATTEMPTS, spec_of

log = logging.getLogger("accord.provisioning")


def counted(connectors: Connectors, resource: str, action: str, outcome: str) -> None:
    """One call to a target (grant or revoke: ok, retry, failed) on /metrics, by the kind
    of its connector (`none` when there is none to build)."""
    metrics.get().provisioning.labels(connectors.kind(resource), action, outcome).inc()


def handlers(connectors: Connectors, box: SecretBox,
             warn_before: timedelta | None = None) -> dict[str, jobs.Handler]:
    def provision(session: Session, job: jobs.Claimed, now: datetime) -> None:
        grant = session.get(Grant, job.payload["grant_id"], with_for_update=True)
        if grant is None or grant.status != GrantStatus.PROVISIONING:
            return  # revoked or failed meanwhile: the deprovision job cleans up
        try:
            result = connectors.get(grant.resource).grant(spec_of(grant, "grant"))
        except ConnectorError as exc:
            if exc.retryable and job.attempts < PROVISION_ATTEMPTS:
                counted(connectors, grant.resource, "grant", "retry")
                raise
            counted(connectors, grant.resource, "grant", "failed")
            log.error("provisioning grant %d on %s failed for good: %s", grant.id,
                      grant.resource, exc)
            grants.fail_provisioning(session, grant=grant, now=now, error=str(exc))
            return
        counted(connectors, grant.resource, "grant", "ok")
        sealed = box.seal(result.secret) if result.secret else None
        grants.confirm(session, grant=grant, now=now, login=result.login,
                       connection=dict(result.connection), secret_box=sealed,
                       warn_before=warn_before)

    def expire(session: Session, job: jobs.Claimed, now: datetime) -> None:
        grant = session.get(Grant, job.payload["grant_id"], with_for_update=True)
        if grant is None or grant.status != GrantStatus.ACTIVE or grant.ends_at > now:
            return  # ended another way, or extended (a later job covers the new end)
        grants.end(session, grant=grant, status=GrantStatus.EXPIRED, actor=Actor.system(),
                   now=now)

    def deprovision(session: Session, job: jobs.Claimed, now: datetime) -> None:
        grant = session.get(Grant, job.payload["grant_id"], with_for_update=True)
        if grant is None or grant.deprovisioned_at is not None:
            return
        try:
            connectors.get(grant.resource).revoke(spec_of(grant, "revoke"))
        except ConnectorError as exc:
            counted(connectors, grant.resource, "revoke", "retry")  # revoking never gives up
            if job.attempts >= LOUD_AFTER:
                log.critical("ACCESS STILL OPEN: revoking grant %d (%s on %s) keeps failing "
                             "(attempt %d): %s", grant.id, grant.user, grant.resource,
                             job.attempts, exc)
            if job.attempts == LOUD_AFTER:
                ledger.record(
                    session, type=EventType.GRANT_DEPROVISION_FAILING, actor=Actor.system(),
                    subject=f"grant:{grant.id}", resource=grants.resource_ref(grant),
                    data={"grant_id": grant.id, "user": grant.user, "error": str(exc),
                          "attempts": job.attempts}, time=now)
            raise jobs.RetryLater(str(exc)) from None
        counted(connectors, grant.resource, "revoke", "ok")
        grant.deprovisioned_at = now
        grant.secret_box = None
        ledger.record(
            session, type=EventType.GRANT_DEPROVISIONED, actor=Actor.system(),
            subject=f"grant:{grant.id}", resource=grants.resource_ref(grant),
            data={"grant_id": grant.id, "user": grant.user, "login": grant.login},
            time=now)

    def reconcile(session: Session, job: jobs.Claimed, now: datetime) -> None:
        resource = job.payload["resource"]
        try:
            service.reconcile(session, connectors=connectors, resource=resource, now=now,
                              enforce=bool(job.payload.get("enforce")))
        except ConnectorError as exc:  # the target is down: the next period looks again
            log.warning("reconciling %s failed: %s", resource, exc)

    return {grants.PROVISION: provision, grants.EXPIRE: expire,
            grants.DEPROVISION: deprovision, service.RECONCILE: reconcile}
