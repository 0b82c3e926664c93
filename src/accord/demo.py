"""`accord serve --demo`: a policy, users and a handful of requests in several states.

When a PostgreSQL answers (`ACCORD_DEMO_PG`, else postgres@127.0.0.1:5432, else the local
socket), orders-db is a real database the demo creates (`accord_demo_orders`, an `orders`
table): approved access is provisioned there and the gateway serves it on this machine.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import socket
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from sqlalchemy import func, select, update

from accord.db import transaction
from accord.gateway import tokens
from accord.grants.models import Grant, GrantStatus
from accord.identity import service as identity
from accord.identity.models import ApiToken
from accord.ledger.events import Actor, Via
from accord.provisioning import postgres as pgconn
from accord.requests import service as requests
from accord.requests.models import AccessRequest
from accord.spec.resources import PostgresTarget
from accord.state import AppState

log = logging.getLogger("accord.demo")

DEMO_USERS = ["alice", "bob", "carol", "dave", "erin", "frank", "gina"]
DEMO_DATABASE = "accord_demo_orders"
# Tried in order when ACCORD_DEMO_PG is not set: local TCP, then Debian's and the default
# socket directories (a local PostgreSQL often trusts its postgres user there).
PG_CANDIDATES = (f"postgresql://postgres@127.0.0.1:5432/{DEMO_DATABASE}",
                 f"host=/var/run/postgresql user=postgres dbname={DEMO_DATABASE}",
                 f"host=/tmp user=postgres dbname={DEMO_DATABASE}")
GATEWAY_PORT = 6432  # PgBouncer's usual port: where people expect a PostgreSQL proxy
ADMIN_DSN_FILE = "orders-db-admin.dsn"
POLICY_HASH_FILE = ".accord.yaml.sha256"  # what the demo last wrote (so: still its own)
# The demo policies of earlier versions, which `write_policy` may replace (sha256).
EARLIER_POLICIES = frozenset({
    "7c8eaf0bb977732518fd8d16c043fe105f92b3b56243b58db469c010b5fd6f33",
    "973e3f9a09f087e27518419f7cc88a5fa5b8e5aaa8363c7c74c1773fb6a147ff",
    "bd49e1722d287dbabb842ceac708f7159dc0ec8b6136d19aa17e87d1cd6a2fb3",
})

ORDERS = [  # id, customer, total, status, contact (masked for readers by the gateway)
    (1001, "ACME Corp", "1299.00", "shipped", "billing@acme.example"),
    (1002, "Globex", "89.50", "shipped", "ap@globex.example"),
    (1003, "Initech", "450.00", "refund_pending", "peter@initech.example"),
    (1004, "Umbrella", "2310.75", "processing", "orders@umbrella.example"),
    (1005, "Stark Industries", "15.99", "refund_pending", "pepper@stark.example"),
    (1006, "Wayne Enterprises", "780.00", "processing", "lucius@wayne.example"),
]

DEMO_POLICY = """\
# Accord demo policy, written by `accord serve --demo` (rewritten at each start while it is
# unedited; `rm -rf .accord/demo` starts the demo afresh). Edit it and run `kill -HUP <pid>`
# or `curl -X POST -H "Authorization: Bearer $ACCORD_TOKEN" $ACCORD_URL/api/v1/admin/reload`.
users:
  alice: {email: alice@example.com}
  bob: {email: bob@example.com}
  carol: {email: carol@example.com}
  dave: {email: dave@example.com}
  erin: {email: erin@example.com}
  frank: {email: frank@example.com}
  gina: {email: gina@example.com}

groups:
  engineers: [alice, erin]
  leads: [bob, gina]
  dba: [carol, erin]
  admins: [carol, frank, gina]
  auditors: [dave]
  oncall: [erin]
# Two leads and three admins: nobody approves their own request and a person decides a
# request once, so whoever asks, distinct people must be able to fill every step
# (`accord policy check` warns when they cannot).

accord:
  admins: [admins]
  auditors: [auditors]

# Emergency access for the on-call engineer: granted at once, alerted, reviewed by admins.
break_glass: {groups: [oncall], reviewers: [admins], max_duration: 1h}

# The demo's sign-in page lets you pick a user. Production uses web.oidc instead.
web:
  local_login: true

# The demo files its requests, and approves some, in the second it starts, at whatever
# hour that is: the off-hours and quick-approval detectors would flag every one of them.
# A real deployment keeps them on and says when its people work, for example
#   off_hours: {start: 8, end: 19, timezone: Europe/Berlin}
detect:
  off_hours: {enabled: false}
  rubber_stamp: {enabled: false}
{gateway}
# An AI agent acting for alice: it asks for access like a person (the API, `accord mcp`),
# never approves; `accord token issue alice --agent report-bot` gives it a token.
agents:
  - {name: report-bot, owner: alice, description: drafts the weekly orders report}

resources:
  - name: staging-db
    kind: postgres
    description: Staging orders database
    labels: {env: staging}
    owners: [dba]
    roles: [read, write]
  - name: orders-db
    kind: postgres
    description: Production orders database
    labels: {env: prod, data: pii}
    owners: [dba]
    roles: [read, write, admin]
{provision}  - name: billing-api
    kind: webhook
    description: Production billing service console
    labels: {env: prod}
    owners: [frank, erin]
    roles: [viewer, operator]

workflows:
  # Staging: engineers get in without waiting, for up to 8 hours.
  - name: staging
    match: 'resource.labels.env == "staging"'
    max_duration: 8h
    auto_approve: '"engineers" in request.requester.groups'
    steps: [{approvers: [leads]}]

  # Production: a lead, then the resource's owners; admin adds two admins.
  - name: prod
    match: 'resource.labels.env == "prod"'
    max_duration: 4h
    auto_deny: 'size(request.reason) < 10'
    messages: {auto_deny: "say which ticket and what you will do (10 characters at least)"}
    steps:
      - {name: lead, approvers: [leads]}
      - {name: owner, approvers: [owners]}
    elevated:
      roles: [admin, operator]
      steps: [{name: admins, approvers: [admins], min_approvals: 2}]
    escalation: {remind_after: 15m, escalate_after: 1h, to: [admins], expire_after: 24h}

# Access reviews: owners certify or revoke standing and recurring production access.
# `accord review start prod-quarterly` (as an admin) starts one now.
reviews:
  - name: prod-quarterly
    match: 'resource.labels.env == "prod"'
    every: 90d
"""

# The demo policy's own tests (`accord policy test`): the server loads the policy only
# while they pass. They leave out who is in the admins' step, which demos may grow.
DEMO_TESTS = """\
# The demo policy's tests: `accord policy test` runs them, and the server loads accord.yaml
# only while they pass (at start, on SIGHUP, on POST /api/v1/admin/reload).
cases:
  - name: prod writes need a lead, then an owner
    request: {requester: alice, resource: orders-db, role: write, duration: 2h,
              reason: "INC-1: fix order totals"}
    expect: {workflow: prod, outcome: pending, steps: [[bob, gina], [carol, erin]]}
  - name: an owner never approves her own request
    request: {requester: erin, resource: orders-db, role: write, duration: 1h,
              reason: "CHG-118: fix order totals"}
    expect: {workflow: prod, outcome: pending, steps: [[bob, gina], [carol]]}
  - name: a short reason is denied at once
    request: {requester: alice, resource: orders-db, role: read, duration: 1h, reason: oops}
    expect: {outcome: denied, rule: auto_deny}
  - name: engineers read staging at once, at any hour
    request: {requester: erin, resource: staging-db, role: read, duration: 1h,
              reason: debugging, time: "2026-12-01T03:00:00Z"}
    expect: {workflow: staging, outcome: approved, rule: auto_approve}
  - name: others wait for a lead on staging
    request: {requester: dave, resource: staging-db, role: read, duration: 1h,
              reason: check the fixtures}
    expect: {workflow: staging, outcome: pending, steps: [[bob, gina]]}
  - name: production access lasts 4h at most
    request: {requester: alice, resource: orders-db, role: read, duration: 6h,
              reason: "INC-2: a long investigation"}
    expect: {workflow: prod, outcome: refused}
  - name: admin on production adds the admins' step
    request: {requester: alice, resource: orders-db, role: admin, duration: 1h,
              reason: "INC-3: reindex orders"}
    expect: {workflow: prod, outcome: pending, elevated: true}
  - name: on-call breaks the glass
    request: {requester: erin, resource: orders-db, role: write, duration: 30m,
              reason: "SEV2: checkout failing on row locks", emergency: true}
    expect: {outcome: approved, emergency: true}
"""
# With the gateway (a PostgreSQL answered): what orders-db's guardrails do with statements.
DEMO_STATEMENT_TESTS = """\
  - name: a DELETE without WHERE never runs, whatever the role
    statement: {resource: orders-db, role: write, sql: "DELETE FROM orders"}
    expect: {action: block, rule: no-unbounded-change}
  - name: a DELETE that names its rows runs
    statement: {resource: orders-db, role: write, sql: "DELETE FROM orders WHERE id = 1003"}
    expect: {action: none}
  - name: a TRUNCATE, however it is spelled, waits for a review
    statement: {resource: orders-db, role: admin, sql: "/* tidy */ truncate ORDERS"}
    expect: {action: review, rule: destructive-needs-review}
"""
TESTS_FILE = "accord.tests.yaml"
TESTS_HASH_FILE = ".accord.tests.yaml.sha256"

GATEWAY_BLOCK = """
# The PostgreSQL gateway: `accord connect orders-db` gives a psql line. Plain TCP on this
# machine only; anywhere else give it tls: {{cert, key, required: true}} (docs/gateway.md).
gateway: {{listen: "127.0.0.1:{port}"}}
"""

PROVISION_BLOCK = """\
    # A real database the demo created ({where}):
    # approved access is granted there and taken back when it ends. The admin DSN is in
    # dsn_file, never in this file.
    provision:
      type: postgres
      dsn_file: {dsn_file}
      host: {host}
      port: {port}
      database: {database}
      roles:
        read: {{privileges: ["SELECT ON ALL TABLES IN SCHEMA public"]}}
        write: {{privileges: ["SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public"]}}
        admin: {{privileges: ["ALL ON ALL TABLES IN SCHEMA public"]}}
    # What the gateway does with statements and results (docs/gateway.md): an UPDATE or
    # DELETE without WHERE never runs; DROP and TRUNCATE wait until a second person
    # approves that exact statement, which then runs once; readers see contacts masked.
    gateway:
      review_window: 1h
      guardrails:
        - {{name: no-unbounded-change, action: block, statements: [update, delete],
           without_where: true, message: "UPDATE and DELETE need a WHERE clause"}}
        - {{name: destructive-needs-review, action: review, statements: [drop, truncate],
           message: "DROP and TRUNCATE run once someone else approves them"}}
      masking:
        - {{name: customer-contacts, roles: [read], columns: [public.orders.contact]}}
"""


@dataclass(frozen=True)
class DemoPostgres:
    """A PostgreSQL the demo can use: its orders database exists and holds `orders`."""

    conninfo: str  # the admin connection (may hold a password: never printed)
    host: str  # for people: a TCP host, or "localhost" for a socket
    port: int
    database: str

    @property
    def where(self) -> str:
        return f"PostgreSQL {self.host}:{self.port}, database {self.database}"


@dataclass(frozen=True)
class DemoSetup:
    """What `write_policy` made of the demo directory."""

    policy: Path
    postgres: DemoPostgres | None
    gateway_listen: str | None  # host:port, when the policy configures the gateway
    note: str  # one line for the person starting the demo


def find_postgres(env: dict[str, str] | None = None) -> tuple[DemoPostgres | None, str]:
    """The demo's PostgreSQL with its orders database ready, or None and why not.

    ACCORD_DEMO_PG (a URL or key=value DSN; its database is the demo's, created when
    missing) is the only candidate when set, else PG_CANDIDATES in order."""
    env = dict(os.environ) if env is None else env
    given = env.get("ACCORD_DEMO_PG", "").strip()
    candidates = (given,) if given else PG_CANDIDATES
    tried: list[str] = []
    for dsn in candidates:
        try:
            params = conninfo_to_dict(dsn)
        except psycopg.Error:
            return None, "ACCORD_DEMO_PG is not a PostgreSQL URL or DSN"
        params.setdefault("dbname", DEMO_DATABASE)
        host = str(params.get("host") or "/var/run/postgresql").split(",")[0]
        port = int(str(params.get("port") or 5432).split(",")[0])
        shown = f"{host}:{port}" if not host.startswith("/") else host
        conninfo = make_conninfo("", **{str(k): v for k, v in params.items()})
        try:
            _prepare_database(conninfo, str(params["dbname"]))
        except (psycopg.Error, OSError) as exc:
            # libpq's messages may quote the DSN: say only where, and a word of why.
            text = str(exc)
            why = ("permission denied" if "permission denied" in text
                   else "login refused" if "FATAL" in text or "password" in text
                   else "no answer")
            tried.append(f"{shown}: {why}")
            continue
        return DemoPostgres(conninfo, host if not host.startswith("/") else "localhost", port,
                            str(params["dbname"])), ""
    return None, "; ".join(tried)


def _prepare_database(conninfo: str, database: str) -> None:
    """Create the demo's database and its `orders` table, once (idempotent)."""
    try:
        conn = psycopg.connect(conninfo, connect_timeout=3, autocommit=True)
    except psycopg.OperationalError as exc:
        if "does not exist" not in str(exc):
            raise
        with psycopg.connect(conninfo, dbname="postgres", connect_timeout=3,
                             autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
        conn = psycopg.connect(conninfo, connect_timeout=3, autocommit=True)
    with conn:
        row = conn.execute("SELECT to_regclass('public.orders')").fetchone()
        with conn.transaction():
            if row is None or row[0] is None:
                conn.execute("CREATE TABLE public.orders (id int PRIMARY KEY, customer text "
                             "NOT NULL, total numeric(10, 2) NOT NULL, status text NOT NULL, "
                             "placed_at timestamptz NOT NULL DEFAULT now(), contact text)")
                conn.cursor().executemany(
                    "INSERT INTO public.orders (id, customer, total, status, contact) "
                    "VALUES (%s, %s, %s, %s, %s)", ORDERS)
            elif conn.execute("SELECT 1 FROM information_schema.columns WHERE table_schema = "
                              "'public' AND table_name = 'orders' AND column_name = 'contact'"
                              ).fetchone() is None:
                # an earlier demo's table: the column the masking rule shows off
                conn.execute("ALTER TABLE public.orders ADD COLUMN contact text")
                conn.cursor().executemany("UPDATE public.orders SET contact = %s WHERE id = %s",
                                          [(o[4], o[0]) for o in ORDERS])


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _gateway_port(previous: str | None) -> int:
    """The port the demo's policy already names while it is free, else 6432, else any."""
    wanted = [int(m.group(1))] if previous and (m := re.search(
        r'gateway: \{listen: "127\.0\.0\.1:(\d+)"\}', previous)) else []
    for port in [*wanted, GATEWAY_PORT]:
        if _port_free("127.0.0.1", port):
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def render_policy(directory: Path, pg: DemoPostgres | None, gateway_port: int | None) -> str:
    provision = gateway = ""
    if pg is not None:
        dsn_file = json.dumps(str(directory.resolve() / ADMIN_DSN_FILE))  # quoted for YAML
        provision = PROVISION_BLOCK.format(where=pg.where, dsn_file=dsn_file, host=pg.host,
                                           port=pg.port, database=pg.database)
        if gateway_port is not None:
            gateway = GATEWAY_BLOCK.format(port=gateway_port)
    return DEMO_POLICY.replace("{gateway}", gateway).replace("{provision}", provision)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def write_policy(directory: Path, env: dict[str, str] | None = None) -> DemoSetup:
    """Write the demo policy (with the gateway when a PostgreSQL answers) unless someone
    edited the one there: the demo rewrites only a file it wrote itself."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "accord.yaml"
    marker = directory / POLICY_HASH_FILE
    current = path.read_text(encoding="utf-8") if path.exists() else None
    ours = current is None or _sha256(current) in EARLIER_POLICIES or (
        marker.exists() and marker.read_text().strip() == _sha256(current))
    if not ours:
        has_gateway = current is not None and re.search(r"^gateway:", current, re.M)
        return DemoSetup(path, None, None,
                         f"{path} was edited, so the demo keeps it as it is"
                         + ("" if has_gateway else " (it has no gateway: `rm -rf "
                            f"{directory}` starts the demo afresh with one)"))
    pg, tried = find_postgres(env)
    port = _gateway_port(current) if pg is not None else None
    if pg is not None:
        dsn_file = directory / ADMIN_DSN_FILE
        fd = os.open(dsn_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # also when an earlier file was readable by others
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(pg.conninfo + "\n")
    text = render_policy(directory, pg, port)
    if text != current:
        path.write_text(text, encoding="utf-8")
    marker.write_text(_sha256(text) + "\n")
    _write_tests(directory, DEMO_TESTS + (DEMO_STATEMENT_TESTS if pg is not None else ""))
    if pg is None:
        note = (f"No PostgreSQL for the gateway ({tried}): start one (Debian: apt-get "
                "install postgresql) or set ACCORD_DEMO_PG to an admin URL, and restart the "
                "demo to try the gateway (docs/gateway.md).")
    else:
        note = f"orders-db is {pg.where}."
    return DemoSetup(path, pg, f"127.0.0.1:{port}" if port is not None else None, note)


def _write_tests(directory: Path, tests: str) -> None:
    """The policy's tests beside it, unless someone edited the ones there."""
    path, marker = directory / TESTS_FILE, directory / TESTS_HASH_FILE
    if path.exists() and not (marker.exists() and marker.read_text().strip()
                              == _sha256(path.read_text(encoding="utf-8"))):
        return
    if not path.exists() or path.read_text(encoding="utf-8") != tests:
        path.write_text(tests, encoding="utf-8")
    marker.write_text(_sha256(tests) + "\n")


def seed(st: AppState) -> int | None:
    """Requests in several states, once per database: returns the id of alice's approved
    read of orders-db when it seeded (None when the database already had requests)."""
    policy = st.policies.current
    count = select(func.count()).select_from(AccessRequest)
    with st.sessions() as session:
        if session.execute(count).scalar_one():
            return None
    _forget_earlier_demos(st)  # outside the transaction: it talks to the target
    with transaction(st.sessions) as session:
        if session.execute(count).scalar_one():
            return None
        now = st.now()

        def ask(user: str, resource: str, role: str, hours: float, reason: str) -> int:
            req = requests.create(
                session, policy=policy, caller=requests.Caller(user, Via.WEB), resource=resource,
                role=role, duration=timedelta(hours=hours), reason=reason, now=now,
            )
            return req.id

        def decide(fn: requests.Command, user: str, rid: int, comment: str = "") -> None:
            fn(session, policy=policy, caller=requests.Caller(user, Via.WEB), request_id=rid,
               comment=comment, now=now)

        ask("alice", "staging-db", "read", 2, "debug flaky checkout test")  # auto-approved
        ask("erin", "staging-db", "write", 1, "backfill test fixtures")  # auto-approved
        ask("alice", "orders-db", "read", 1, "INC-4211: customers report missing orders")
        change = ask("erin", "orders-db", "write", 2, "CHG-118: fix order totals for 3 rows")
        decide(requests.approve, "bob", change, "change ticket reviewed")  # waits for dba
        active = ask("alice", "orders-db", "read", 1, "INC-4190: reconcile refunds")
        decide(requests.approve, "bob", active)
        decide(requests.approve, "carol", active, "ok for an hour")  # active
        ask("alice", "orders-db", "write", 1, "oops")  # auto-denied: reason too short
        rid = ask("erin", "billing-api", "viewer", 1, "check invoice run for ACME")
        decide(requests.deny, "bob", rid, "ask billing on-call instead")
        rid = ask("alice", "orders-db", "read", 1, "exploring the schema for a report")
        decide(requests.cancel, "alice", rid)
        requests.create(  # break-glass: active at once, an open alert until an admin reviews
            session, policy=policy, caller=requests.Caller("erin", Via.CLI),
            resource="orders-db", role="write", duration=timedelta(minutes=30),
            reason="SEV2: checkout failing on row locks, lead unreachable", now=now,
            emergency=True)
    # erin is a dba, an owner of orders-db: she tries to approve her own change at the
    # owners' step. Refused, and recorded as its own event (a self_approval alert), as the
    # API records it.
    with transaction(st.sessions) as session:
        caller = requests.Caller("erin", Via.WEB)
        now = st.now()
        try:
            with session.begin_nested():
                requests.approve(session, policy=policy, caller=caller, request_id=change,
                                 comment="", now=now)
        except requests.SelfDecision as exc:
            requests.record_self_decision(session, exc=exc, caller=caller, now=now)
    return active


def _forget_earlier_demos(st: AppState) -> None:
    """A fresh demo starts from a clean target: memberships of orders-db's group roles left
    by an earlier demo (whose data was removed) would otherwise be reported as drift."""

    spec = st.policies.current.resources.get("orders-db")
    if spec is None or not isinstance(spec.provision, PostgresTarget):
        return
    groups = [pgconn.group_name(spec.name, role) for role in spec.provision.roles]
    try:
        dsn = pgconn.admin_dsn(spec.provision, os.environ)
        with psycopg.connect(dsn, connect_timeout=3, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT g.rolname, m.rolname FROM pg_auth_members am "
                "JOIN pg_roles g ON g.oid = am.roleid JOIN pg_roles m ON m.oid = am.member "
                "WHERE g.rolname = ANY(%s) AND m.rolname <> current_user "
                "AND m.rolname NOT LIKE 'accord\\_gw\\_%%'", (groups,)).fetchall()
            for group, member in rows:
                conn.execute(sql.SQL("REVOKE {} FROM {}").format(
                    sql.Identifier(group), sql.Identifier(member)))
    except (psycopg.Error, OSError) as exc:  # the worker's connector will say more
        log.warning("demo: could not clean orders-db's roles on its target: %s",
                    type(exc).__name__)


def show_gateway_use(st: AppState, request_id: int, *, timeout: float = 60.0
                     ) -> threading.Thread:
    """In the background, once the seeded grant is provisioned: alice reads the refunds
    through the gateway, then tries to mark one refunded, which her read grant does not
    allow (the gateway refuses it: a scope_violation alert). Real statements through the
    real gateway, recorded as any session is."""
    thread = threading.Thread(target=_gateway_use, args=(st, request_id, timeout),
                              name="accord-demo-gateway", daemon=True)
    thread.start()
    return thread


def _gateway_use(st: AppState, request_id: int, timeout: float) -> None:
    spec = st.policies.current.loaded.spec.gateway
    if spec is None:
        return
    host, port = spec.host_port
    deadline = time.monotonic() + timeout
    stop = threading.Event()
    token = None
    while token is None:  # the worker provisions the grant: poll, bounded
        with transaction(st.sessions) as session:
            grant = session.execute(select(Grant).where(Grant.request_id == request_id)
                                    ).scalar_one_or_none()
            if grant is not None and grant.status == GrantStatus.ACTIVE:
                _row, token = tokens.issue_token(
                    session, grant=grant, actor=Actor.user("alice", Via.CLI), now=st.now(),
                    ttl=spec.token_ttl)
            elif grant is None or grant.status != GrantStatus.PROVISIONING:
                log.warning("demo: grant of request %d is %s; no gateway example", request_id,
                            grant.status if grant else "missing")
                return
        if token is None:
            if time.monotonic() > deadline:
                log.warning("demo: the grant of request %d was not provisioned in %.0f s; "
                            "no gateway example", request_id, timeout)
                return
            stop.wait(0.2)
    while True:  # the gateway thread may still be starting
        try:
            conn = psycopg.connect(host=host, port=port, dbname="orders-db", user="alice",
                                   password=token, sslmode="disable", connect_timeout=5,
                                   application_name="psql", autocommit=True)
            break
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                log.warning("demo: the gateway did not answer on %s:%d", host, port)
                return
            stop.wait(0.2)
    with conn:
        conn.execute("SELECT id, customer, total, contact FROM orders "
                     "WHERE status = 'refund_pending'").fetchall()  # contact: masked
        # What the demo shows: refused by the gateway, recorded, alerted.
        with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
            conn.execute("UPDATE orders SET status = 'refunded' WHERE id = 1003")
    log.info("demo: alice read orders-db through the gateway and was refused an UPDATE "
             "(see the scope_violation alert)")


def issue_tokens(st: AppState) -> dict[str, str]:
    """Fresh tokens for every demo user; earlier demo tokens are revoked."""
    tokens: dict[str, str] = {}
    with transaction(st.sessions) as session:
        now = st.now()
        session.execute(
            update(ApiToken)
            .where(ApiToken.name == "demo", ApiToken.revoked_at.is_(None))
            .values(revoked_at=now, revoked_by="demo-restart")
        )
        for user in DEMO_USERS:
            _row, secret = identity.issue(
                session, policy=st.policies.current, user=user, now=now, name="demo",
                actor=Actor("system", "accord-demo", Via.CLI),
            )
            tokens[user] = secret
    return tokens
