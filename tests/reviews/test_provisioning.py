"""A revocation in a review goes through provisioning: the grant ends in the decision's
transaction, and the deprovisioning job takes the access off the real target."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from accord.jobs.models import Job
from tests.conftest import make_env
from tests.provisioning.test_webhook_lifecycle import receiver  # noqa: F401 (a fixture)
from tests.reviews.conftest import START, decide, entry, runner, start

POLICY = """\
users: [alice, bob, dave, frank]
groups: {{engineers: [alice], leads: [bob], admins: [frank], auditors: [dave]}}
accord: {{admins: [admins], auditors: [auditors]}}
resources:
  - name: saas
    roles: [viewer]
    owners: [leads]
    provision: {{type: webhook, url: "{url}", secret_env: ACCORD_TEST_HOOK_SECRET}}
workflows:
  - {{name: saas, match: 'true', max_duration: 30d, require_reason: false,
     auto_approve: 'true', steps: [{{approvers: [leads]}}]}}
reviews:
  - {{name: saas-review, resources: [saas], reviewers: [owners]}}
"""


def test_revoking_in_a_review_deprovisions_the_target(
        sessions: sessionmaker[Session], tmp_path: Path,
        receiver: Any) -> None:  # noqa: F811
    target = receiver
    url = f"http://127.0.0.1:{target.server_address[1]}/access"
    env = make_env(sessions, tmp_path, POLICY.format(url=url))
    env.clock.value = START
    with env.client:
        req = env.ask("alice", resource="saas", role="viewer", duration="30d")
        runner(env).run_once()  # the target confirms: the grant is active and provisioned
        grant = env.get("alice", f"/api/v1/requests/{req['id']}").json()["grant"]
        assert grant["status"] == "active" and target.calls == ["grant"]

        review = start(env, "saas-review")
        e = entry(review, "alice", "viewer")
        assert e["kind"] == "standing" and e["reviewers"] == ["bob"]
        r = decide(env, "bob", review["id"], e["id"], "revoke", note="contract ended")
        assert r.status_code == 200, r.text
        assert r.json()["revoked_grant_ids"] == [grant["id"]]
        # in the same transaction: the grant is revoked and the deprovisioning job waits
        after = env.get("alice", f"/api/v1/requests/{req['id']}").json()
        assert after["status"] == "revoked" and after["grant"]["status"] == "revoked"
        with env.st.sessions() as session:
            job = session.execute(select(Job).where(
                Job.key == f"grant:{grant['id']}:deprovision")).scalar_one()
            assert (job.kind, job.done_at) == ("grant.deprovision", None)
        runner(env).run_once()
        assert target.calls == ["grant", "revoke"]
        types = [x["type"] for x in env.events(subject=f"grant:{grant['id']}")]
        assert types[-2:] == ["grant.revoked", "grant.deprovisioned"]
        assert env.get("dave", f"/api/v1/reviews/{review['id']}").json()["status"] == \
            "completed"
