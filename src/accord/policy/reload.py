"""Reloading accord.yaml: validate, announce in the ledger, refresh pending approvers, swap."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from accord.config import PolicyError
from accord.errors import Invalid
from accord.ledger.events import Actor
from accord.policy import service
from accord.policy.engine import Policy
from accord.policy.store import PolicyStore
from accord.requests import service as requests


def reload(session: Session, *, store: PolicyStore, actor: Actor) -> dict[str, Any]:
    """Validate and record the file's policy; the caller commits, then installs it."""
    try:
        loaded = store.read()
    except PolicyError as exc:
        raise Invalid(
            "accord.yaml has errors; the running policy is unchanged: "
            + "; ".join(str(p) for p in exc.problems)
        ) from None
    policy = Policy(loaded)
    result = service.announce(session, policy=policy, actor=actor)
    if result["changed"]:
        requests.refresh_approvers(session, policy=policy)
    result["policy"] = policy
    return result


def install_after_commit(store: PolicyStore, result: dict[str, Any]) -> None:
    store.install(result["policy"])
