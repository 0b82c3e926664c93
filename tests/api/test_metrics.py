"""/metrics on prometheus_client: requests by route template, the database's gauges, the
names that existed before it; and each call's X-Request-Id."""

from __future__ import annotations

import re
from datetime import timedelta

from sqlalchemy import update

from accord.db import transaction
from accord.jobs import service as jobs
from accord.jobs.models import Job
from tests import scrape
from tests.conftest import Env

REQUESTS = "/api/v1/requests"


def page(env: Env) -> str:
    r = env.get(None, "/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return str(r.text)


def test_requests_are_counted_by_route_template_not_path(env: Env) -> None:
    route = "/api/v1/requests/{request_id}"
    before = page(env)
    ids = [env.ask("alice")["id"], env.ask("alice")["id"]]
    for rid in ids:
        assert env.get("alice", f"{REQUESTS}/{rid}").status_code == 200
    assert env.get("alice", f"{REQUESTS}/999999").status_code == 404
    assert env.get(None, "/no/such/page/123").status_code == 404
    after = page(env)

    def delta(**labels: str) -> float:
        return (scrape.value(after, "accord_http_requests_total", **labels)
                - scrape.value(before, "accord_http_requests_total", **labels))

    assert delta(route=route, method="GET", status="200") == 2
    assert delta(route=route, method="GET", status="404") == 1
    assert delta(route=REQUESTS, method="POST", status="201") == 2
    assert delta(route="unmatched", method="GET", status="404") == 1
    # every series names a route's template (or none): never an id, never a stray path
    routes = {dict(labels)["route"] for name, labels in scrape.samples(after)
              if name == "accord_http_requests_total"}
    assert not [r for r in routes if re.search(r"/[0-9]", r) or r.startswith("/no/")], routes
    hist = "accord_http_request_duration_seconds_count"
    assert (scrape.value(after, hist, route=route, method="GET")
            - scrape.value(before, hist, route=route, method="GET")) == 3
    assert scrape.value(after, "accord_http_request_duration_seconds_bucket", route=route,
                        method="GET", le="+Inf") >= 3


def test_every_call_gets_a_request_id_of_its_own(env: Env) -> None:
    seen = {env.get(None, "/healthz").headers["x-request-id"] for _ in range(5)}
    seen.add(env.get("alice", "/api/v1/nothing-here").headers["x-request-id"])
    assert len(seen) == 6 and all(len(i) == 16 for i in seen)


def test_the_database_gauges_and_the_names_that_came_before(env: Env) -> None:
    env.ask("alice")
    text = page(env)
    values = scrape.samples(text)
    # the hand-written page's names, kept
    for name in ("accord_ledger_size", "accord_ledger_pending", "accord_requests_pending",
                 "accord_grants_active", "accord_sqlite_writes_refused_total"):
        assert any(n == name for n, _ in values), name
    assert scrape.value(text, "accord_requests_pending") == 1
    assert scrape.value(text, "accord_database_up") == 1
    info = [labels for n, labels in values if n == "accord_info"]
    assert info and dict(info[0])["policy"] == env.st.policies.current.version[:12]
    assert scrape.value(text, "accord_ledger_pending_age_seconds") >= 0


def test_job_queue_depth_and_lag_by_kind(env: Env) -> None:
    now = env.clock()
    with transaction(env.st.sessions) as s:
        jobs.enqueue(s, kind="test.late", key="metrics:late", run_at=now - timedelta(seconds=90),
                     now=now)
        jobs.enqueue(s, kind="test.later", key="metrics:later",
                     run_at=now + timedelta(hours=1), now=now)
    text = page(env)
    assert scrape.value(text, "accord_jobs_queued", kind="test.late") == 1
    assert scrape.value(text, "accord_jobs_due", kind="test.late") == 1
    assert 89 <= scrape.value(text, "accord_jobs_lag_seconds", kind="test.late") <= 91
    assert scrape.value(text, "accord_jobs_queued", kind="test.later") == 1
    assert scrape.value(text, "accord_jobs_due", kind="test.later") == 0
    assert scrape.value(text, "accord_jobs_lag_seconds", kind="test.later") == 0
    with transaction(env.st.sessions) as s:
        s.execute(update(Job).where(Job.key.like("metrics:%")).values(done_at=now))
    text = page(env)  # drained kinds stay, at zero
    assert ("accord_jobs_queued", (("kind", "test.late"),)) in scrape.samples(text)
    assert scrape.value(text, "accord_jobs_queued", kind="test.late") == 0


def test_checkpoint_age(env: Env) -> None:
    r = env.get("dave", "/api/v1/audit/checkpoint")
    assert r.status_code == 200, r.text
    env.clock.advance(seconds=42)
    text = page(env)
    assert scrape.value(text, "accord_ledger_checkpoint_age_seconds") >= 42
    assert scrape.value(text, "accord_ledger_checkpoint_size") >= 1
