"""Two `accord serve --workers 2` replicas and two `accord worker` processes on one
PostgreSQL (a private server of this module's own), under a steady load of requests,
approvals, provisioning on a real PostgreSQL target and 3-second grants expiring all the
time. A replica, then a worker (one running a job when one can be caught), then the
holder of the ledger integrator role are SIGKILLed mid-load and restarted; then the
PostgreSQL server itself is stopped under load and started again.

After each: every acknowledged request and approval is there with its events, the
ledger's indices are contiguous, `accord audit verify` passes, the target's own statement
log shows each grant's GRANT and REVOKE exactly once, and no grant's expiry was recorded
later than 5 s after its end.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from accord.bootstrap import build_state
from accord.cli.main import app as cli
from accord.db import transaction
from accord.identity import service as identity
from accord.ledger.events import Actor
from accord.provisioning.postgres import group_name, login_name
from accord.settings import Settings
from tests.cluster.cluster import (
    INTRUDER,
    LEADS,
    POLICY,
    RECONCILE,
    TARGET,
    USERS,
    Load,
    PgServer,
    Proc,
    free_port,
    integrator_pid,
    sql,
    until,
)

pytestmark = pytest.mark.postgres
LATE = 5.0  # seconds: no grant's expiry may be recorded later than this after its end
FIGURES: dict[str, Any] = {}


@dataclass
class Cluster:
    pg: PgServer
    replicas: list[Proc]
    workers: list[Proc]
    tokens: dict[str, str]
    env: dict[str, str]
    verifier_key: str
    users: Iterator[str]
    sink: Path  # the jsonl sink every process is configured with; the integrator feeds it

    @property
    def url(self) -> str:
        return self.pg.url("accord")

    @property
    def procs(self) -> list[Proc]:
        return [*self.replicas, *self.workers]

    def up(self, proc: Proc, timeout: float = 180) -> None:
        """Wait for a (re)started process: a replica answers /readyz, and its ledger loop
        (every process runs one) has connected to LISTEN."""
        assert until(proc.ready, timeout, every=0.1), proc.tail()
        assert until(lambda: self.listening(proc.pid), timeout, every=0.1), proc.tail()

    def all_up(self) -> None:
        """Every process running and ready (one a failed test left dead is started)."""
        for p in self.procs:
            if not p.alive():
                p.start()
        for p in self.procs:
            self.up(p)

    def listening(self, pid: int) -> bool:
        rows = sql(self.url, "SELECT count(*) FROM pg_stat_activity WHERE application_name"
                             " LIKE %s", f"accord ledger %:{pid}")
        return bool(rows[0][0])


@pytest.fixture(scope="module")
def cluster(pg: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    t0 = time.monotonic()
    base = tmp_path_factory.mktemp("cluster")
    sql(pg.url(), "CREATE DATABASE accord")
    sql(pg.url(), f"CREATE DATABASE {TARGET}")
    sql(pg.url(TARGET), "CREATE TABLE orders (id int)")
    group = group_name(TARGET, "read")  # made by hand as the first grant would, and drift:
    sql(pg.url(TARGET), f'CREATE ROLE "{group}" NOLOGIN')
    sql(pg.url(TARGET), f'CREATE ROLE "{INTRUDER}" NOLOGIN')
    sql(pg.url(TARGET), f'GRANT "{group}" TO "{INTRUDER}"')
    config = base / "accord.yaml"
    config.write_text(POLICY.format(users=", ".join(USERS), target=TARGET, port=pg.port,
                                    reconcile=RECONCILE, sink=base / "sink.jsonl"))
    shared = base / "shared"  # what replicas share: the keys (a mounted secret)
    env = {**os.environ,
           "ACCORD_DATABASE_URL": pg.url("accord"), "ACCORD_CONFIG": str(config),
           "ACCORD_LEDGER_KEY_FILE": str(shared / "ledger.key"),
           "ACCORD_SECRETS_KEY_FILE": str(shared / "secrets.key"),
           "ACCORD_TEST_TARGET_DSN": pg.url(TARGET)}
    for name in ("ACCORD_URL", "ACCORD_TOKEN", "ACCORD_DATA_DIR", "ACCORD_LOG_FORMAT"):
        env.pop(name, None)
    st = build_state(Settings.from_env({**env, "ACCORD_DATA_DIR": str(base / "setup")}),
                     config_path=config, upgrade="always")
    tokens = {}
    with transaction(st.sessions) as session:
        for user in [*USERS, *LEADS, "audit"]:
            _row, tokens[user] = identity.issue(session, policy=st.policies.current,
                                                user=user, actor=Actor.system("cli"),
                                                now=st.now())
    key = st.ledger.signer.verifier.encode()
    st.sessions.kw["bind"].dispose()
    FIGURES["setup_database_s"] = round(time.monotonic() - t0, 1)

    def proc(name: str, args: list[str], port: int | None = None) -> Proc:
        data = base / name
        return Proc(name, args, {**env, "ACCORD_DATA_DIR": str(data)}, base / f"{name}.log",
                    port)

    replicas = []  # one with HTTP worker processes (background jobs in the parent), one without
    for name, http in (("replica-a", "2"), ("replica-b", "1")):
        port = free_port()
        replicas.append(proc(name, ["serve", "--port", str(port), "--workers", http,
                                    "--log-level", "warning"], port))
    workers = [proc(name, ["worker"]) for name in ("worker-1", "worker-2")]
    c = Cluster(pg, replicas, workers, tokens, env, key, iter(USERS), base / "sink.jsonl")
    try:
        c.all_up()
        FIGURES["setup_s"] = round(time.monotonic() - t0, 1)
        yield c
    finally:
        for p in c.procs:
            p.stop()
        print("cluster figures:", json.dumps(FIGURES, indent=1, default=str))


# ---------------------------------------------------------------- what must hold


def settled(c: Cluster) -> bool:
    """Every grant ended and deprovisioned, no job left, every event integrated."""
    rows = sql(c.url, "SELECT (SELECT count(*) FROM grants WHERE status IN"
                      " ('provisioning', 'active') OR deprovisioned_at IS NULL),"
                      " (SELECT count(*) FROM jobs WHERE done_at IS NULL AND kind LIKE 'grant.%%'),"
                      " (SELECT count(*) FROM ledger_entries WHERE idx IS NULL)")
    return rows[0] == (0, 0, 0)


def _time(stamp: str) -> datetime:
    return datetime.strptime(stamp.replace(" UTC", "+0000"), "%Y-%m-%d %H:%M:%S.%f%z")


def check(c: Cluster, load: Load, phase: str) -> None:
    """Every invariant of the module docstring, over everything done so far."""
    assert until(lambda: settled(c), 90, every=0.2), (
        sql(c.url, "SELECT id, status, ends_at, deprovisioned_at FROM grants WHERE status IN"
                   " ('provisioning', 'active') OR deprovisioned_at IS NULL"),
        sql(c.url, "SELECT kind, key, attempts, last_error FROM jobs WHERE done_at IS NULL"),
        [p.tail(1500) for p in c.procs])
    FIGURES[f"{phase}_settle_s"] = round(time.monotonic() - load.stopped, 1)
    acked = load.acked
    assert len(acked.approvals) >= 10, (acked.refused[-5:], acked.failed_calls)

    # Every acknowledged request and approval, with its events.
    requests = {rid: (user, status, grant) for rid, user, status, grant in sql(
        c.url, "SELECT id, requester, status, grant_id FROM access_requests")}
    # A job may still append an event after the settle (a grant's last step, say): read
    # the ledger once everything in it is integrated.
    snapshot: list[list[Any]] = []

    def integrated() -> bool:
        snapshot[:] = [sql(c.url, "SELECT idx, type, subject, time FROM ledger_entries "
                                  "ORDER BY idx")]
        return all(row[0] is not None for row in snapshot[0])

    assert until(integrated, 30, every=0.2), "the ledger's last entries were not integrated"
    events = snapshot[0]
    by_subject = Counter((t, s) for _i, t, s, _w in events)
    for rid, user in acked.requests.items():
        assert rid in requests and requests[rid][0] == user, rid
        assert by_subject[("request.created", f"request:{rid}")] == 1, rid
    for rid in acked.approvals:
        assert by_subject[("approval.recorded", f"request:{rid}")] == 1, rid
        assert requests[rid][2] is not None, f"approved request {rid} has no grant"
    assert not [r for r in acked.refused if "approve" in r], acked.refused

    # One contiguous ledger, every entry integrated; one checkpoint per size.
    indices = [i for i, *_ in events]
    assert indices == list(range(len(indices))), "ledger indices are not contiguous"

    # Each grant provisioned and deprovisioned exactly once: its events, and the target's
    # own statement log (one GRANT of the group to the grant's login, one REVOKE).
    grants = sql(c.url, "SELECT id, \"user\", status, ends_at, deprovisioned_at, login"
                        " FROM grants")
    assert len(grants) >= len(acked.approvals)
    group = group_name(TARGET, "read")
    logged = c.pg.statements()
    grants_sent = Counter(stmt.split(" TO ")[1].strip('"') for _t, stmt in logged
                          if stmt.startswith(f'GRANT "{group}" TO '))
    revokes = {}
    revokes_sent: Counter[str] = Counter()
    for stamp, stmt in logged:
        if stmt.startswith(f'REVOKE "{group}" FROM '):
            login = stmt.split(" FROM ")[1].strip('"')
            revokes_sent[login] += 1
            revokes[login] = _time(stamp)
    late, late_revoke = [], []
    for gid, user, status, ends_at, deprovisioned, login in grants:
        assert status == "expired" and deprovisioned is not None, (gid, status)
        assert login == login_name(user, TARGET)
        assert by_subject[("grant.activated", f"grant:{gid}")] == 1, gid
        assert by_subject[("grant.expired", f"grant:{gid}")] == 1, gid
        assert by_subject[("grant.deprovisioned", f"grant:{gid}")] == 1, gid
        assert grants_sent[login] == 1, (gid, login, grants_sent[login])
        assert revokes_sent[login] == 1, (gid, login, revokes_sent[login])
        expired = next(w for _i, t, s, w in events
                       if t == "grant.expired" and s == f"grant:{gid}")
        late.append(((expired - ends_at).total_seconds(), gid))
        late_revoke.append(((revokes[login] - ends_at).total_seconds(), gid))
    assert sql(c.pg.url(TARGET), "SELECT m.rolname FROM pg_auth_members am JOIN pg_roles g"
               " ON g.oid = am.roleid JOIN pg_roles m ON m.oid = am.member"
               " WHERE g.rolname = %s", group) == [(INTRUDER,)], "a login still holds the group"

    # Reconciliation: the one real drift, reported once a period whatever the number of
    # processes, and never a grant on its way out.
    drift = sql(c.url, "SELECT time, subject, convert_from(leaf, 'UTF8')::json->'data'->>'user'"
                       " FROM ledger_entries WHERE type = 'drift.detected' ORDER BY idx")
    assert {user for _t, _s, user in drift} == {INTRUDER}, drift
    span = (drift[-1][0] - drift[0][0]).total_seconds()
    assert len(drift) <= span / RECONCILE + 2, (len(drift), span)
    worst, worst_revoke = max(late), max(late_revoke)
    FIGURES[phase] = {
        "requests_acked": len(acked.requests), "approvals_acked": len(acked.approvals),
        "grants": len(grants), "ledger_size": len(indices),
        "failed_calls": acked.failed_calls,
        "expiry_late_max_s": round(worst[0], 3),
        "expiry_late_p50_s": round(sorted(late)[len(late) // 2][0], 3),
        "revoke_late_max_s": round(worst_revoke[0], 3), "drift_reports": len(drift)}
    assert worst[0] < LATE, f"grant {worst[1]} expired {worst[0]:.2f}s after its end"
    assert worst_revoke[0] < LATE, f"grant {worst_revoke[1]} revoked {worst_revoke[0]:.2f}s late"

    # The sink: every event, in index order, at least once; a batch is delivered again
    # only when its deliverer died (or lost the database) before recording it.
    def fed() -> bool:
        return sql(c.url, "SELECT position FROM ledger_sink_cursors WHERE name = 'audit'"
                   ) == [(len(indices),)] or bool(sql(
                       c.url, "SELECT 1 FROM ledger_sink_cursors WHERE name = 'audit'"
                       " AND position > %s", len(indices)))

    assert until(fed, 30), sql(c.url, "SELECT * FROM ledger_sink_cursors")
    lines = [json.loads(line)["index"] for line in c.sink.read_text().splitlines()]
    assert set(range(len(indices))) <= set(lines)
    again = len(lines) - len(set(lines))
    restarts = sum(1 for a, b in itertools.pairwise(lines) if b != a + 1)
    assert all(b == a + 1 or b <= a for a, b in itertools.pairwise(lines)), "a gap in the sink"
    FIGURES[phase]["sink_redelivered"] = again
    disruptions = sum(p.kills for p in c.procs) + c.pg.stops
    assert restarts <= disruptions, (restarts, again, disruptions)

    # A checkpoint over the whole ledger, and the auditor's offline check of everything.
    replica = next(p for p in c.replicas if p.alive())
    r = httpx.get(replica.url + "/api/v1/audit/checkpoint", params={"fresh": "true"},
                  headers={"Authorization": f"Bearer {c.tokens['audit']}"}, timeout=30)
    assert r.status_code == 200, r.text
    sizes = sql(c.url, "SELECT size FROM ledger_checkpoints ORDER BY size")
    assert sizes[-1][0] >= len(indices)  # events recorded since are covered too
    done = CliRunner().invoke(cli, ["audit", "verify", "--url", replica.url, "--key",
                                    c.verifier_key], env={"ACCORD_TOKEN": c.tokens["audit"]})
    assert done.exit_code == 0, done.output
    FIGURES[f"{phase}_checked_s"] = round(time.monotonic() - load.stopped, 1)
    verified = re.search(r"OK: (\d+) entries", done.stdout)
    # Reading the bundle is itself recorded: the count may have grown since.
    assert verified is not None and int(verified.group(1)) >= len(indices), done.stdout


# ---------------------------------------------------------------- the tests


def _progress(load: Load, more: int, timeout: float = 60) -> None:
    """Wait until `more` further approvals were acknowledged (the cluster serves on)."""
    target = load.count() + more
    assert until(lambda: load.count() >= target, timeout, every=0.05), load.acked.refused[-5:]


def _lease_holder(c: Cluster, timeout: float) -> Proc | None:
    """A worker that holds a job's lease right now (a job running), if one is seen in time."""
    found: list[Proc] = []

    def holding() -> bool:
        for (leased_by,) in sql(c.url, "SELECT leased_by FROM jobs WHERE done_at IS NULL"
                                       " AND leased_by IS NOT NULL AND leased_until > now()"):
            pid = int(str(leased_by).split(":")[1])
            found.extend(w for w in c.workers if w.pid == pid)
        return bool(found)

    until(holding, timeout, every=0.01)
    return found[0] if found else None


def test_replica_worker_and_integrator_killed_under_load(cluster: Cluster) -> None:
    c = cluster
    started = time.monotonic()
    load = Load(c.replicas, c.tokens, c.users)
    load.start()
    try:
        _progress(load, 6)

        # 1. A replica dies; the other serves on. (The one of a single process: restarting
        # is what costs here. Killing a --workers parent alone is tests/cli/
        # test_serve_orphans.py; the integrator's holder below may be either replica.)
        b = c.replicas[1]
        b.kill()
        _progress(load, 4)
        b.start()  # it comes back while the next failure happens

        # 2. A worker dies, holding a running job's lease when one can be caught.
        worker = _lease_holder(c, 5) or c.workers[0]
        FIGURES["worker_killed_holding_a_lease"] = any(
            str(lb).split(":")[1] == str(worker.pid) for (lb,) in sql(
                c.url, "SELECT leased_by FROM jobs WHERE done_at IS NULL"
                       " AND leased_by IS NOT NULL"))
        worker.kill()
        _progress(load, 4)
        worker.start()

        # 3. The process holding the ledger integrator role dies; another takes it over.
        assert until(lambda: integrator_pid(c.url) is not None, 10), "no integrator"
        pid = integrator_pid(c.url)
        holder = next(p for p in c.procs if p.alive() and p.pid == pid)
        holder.kill()
        killed = time.monotonic()
        assert until(lambda: integrator_pid(c.url) not in (None, pid), 10), "no handover"
        FIGURES["integrator_handover_s"] = round(time.monotonic() - killed, 3)
        FIGURES["integrator_killed"] = holder.name
        holder.start()
        FIGURES["kills_before_restarts_s"] = round(time.monotonic() - started, 1)
        c.all_up()  # every process back, and the load goes on
        FIGURES["kills_all_up_s"] = round(time.monotonic() - started, 1)
        _progress(load, 4)
    finally:
        load.stop()
    assert all(p.alive() for p in c.procs), [p.tail() for p in c.procs if not p.alive()]
    check(c, load, "kills")
    FIGURES["kills_test_s"] = round(time.monotonic() - started, 1)


def _readyz(p: Proc) -> int | None:
    try:
        return httpx.get(p.url + "/readyz", timeout=3).status_code
    except httpx.TransportError:
        return None


def _answers(p: Proc, status: int) -> Callable[[], bool]:
    return lambda: _readyz(p) == status


def test_postgres_restarted_under_load(cluster: Cluster) -> None:
    c = cluster
    c.all_up()
    started = time.monotonic()
    load = Load(c.replicas, c.tokens, c.users)
    load.start()
    try:
        _progress(load, 8)
        c.pg.stop()
        down = time.monotonic()
        try:  # meanwhile every replica says it is not ready (a load balancer stops sending)
            for replica in c.replicas:
                assert until(_answers(replica, 503), 15), replica.tail()
        finally:
            c.pg.start()
        FIGURES["postgres_down_s"] = round(time.monotonic() - down, 2)
        back = time.monotonic()
        # They reconnect on their own: ready again, and serving writes again.
        for replica in c.replicas:
            assert until(_answers(replica, 200), 30), replica.tail()
        _progress(load, 8)
        FIGURES["postgres_recovery_s"] = round(time.monotonic() - back, 2)
    finally:
        load.stop()
    assert all(p.alive() for p in c.procs), [p.tail() for p in c.procs if not p.alive()]
    check(c, load, "postgres_restart")
    FIGURES["postgres_test_s"] = round(time.monotonic() - started, 1)
