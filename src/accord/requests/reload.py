"""Reloading accord.yaml: validate, announce in the ledger, refresh pending approvers, end what
removed users held, swap. A flow over requests and grants, so it lives beside them, above
the policy package it loads."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from accord.db import utcnow
from accord.errors import Invalid
from accord.grants import service as grants
from accord.grants.models import Grant, GrantStatus
from accord.ledger.events import Actor
from accord.policy import service
from accord.policy.engine import Policy
from accord.policy.store import PolicyStore
from accord.requests import policy_tests
from accord.requests import service as requests
from accord.requests.models import AccessRequest, Status
from accord.spec.load import PolicyError


def reload(session: Session, *, store: PolicyStore, actor: Actor,
           now: datetime | None = None) -> dict[str, Any]:
    """Validate and record the file's policy; the caller commits, then installs it."""
    try:
        loaded = store.read()
    except PolicyError as exc:
        raise Invalid(
            "accord.yaml has errors; the running policy is unchanged: "
            + "; ".join(str(p) for p in exc.problems)
        ) from None
    policy = Policy(loaded, store.directory(session))
    if clash := sorted(policy.file_groups.keys() & policy.directory.groups.keys()):
        raise Invalid("accord.yaml has errors; the running policy is unchanged: groups "
                      f"{', '.join(clash)} also come from the identity provider's directory; "
                      "rename one of them (a group has one source)")
    # raises when its own tests fail (statement cases: the parser the entry point gave)
    policy_tests.check_before_loading(policy, store.statements)
    result = service.announce(session, policy=policy, actor=actor)
    if result["changed"]:
        now = now or utcnow()
        # Pending requests nobody can complete under the new policy are escalated or denied
        # here, in the reload's transaction.
        requests.refresh_approvers(session, policy=policy, actor=actor, now=now)
        result["revoked_grants"] = revoke_removed_users(session, policy=policy, actor=actor,
                                                        now=now)
    result["policy"] = policy
    return result


def revoke_removed_users(session: Session, *, policy: Policy, actor: Actor,
                         now: datetime) -> list[int]:
    """End the live grants of users who are no longer in accord.yaml."""
    live = session.execute(
        select(Grant).where(Grant.status.in_([GrantStatus.ACTIVE, GrantStatus.PROVISIONING]))
        .with_for_update()
    ).scalars().all()
    ended = []
    for grant in live:
        if not policy.is_principal(grant.user):
            grants.end(session, grant=grant, status=GrantStatus.REVOKED, actor=actor,
                       now=now, comment=f'user "{grant.user}" was removed from accord.yaml')
            ended.append(grant.id)
    # Pending requests of removed users or resources can no longer be decided.
    pending = session.execute(
        select(AccessRequest).where(AccessRequest.status == Status.PENDING).with_for_update()
    ).scalars().all()
    for req in pending:
        if not policy.is_principal(req.requester) or req.resource not in policy.resources:
            requests.cancel_orphaned(session, req=req, actor=actor, now=now)
    return ended


def install_after_commit(store: PolicyStore, result: dict[str, Any]) -> None:
    store.install(result["policy"])
