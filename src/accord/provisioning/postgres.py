"""PostgreSQL connector: one NOLOGIN group role per Accord role, one login per user and resource.

Layout on the target cluster (role names are cluster-wide, privileges per database):

* ``accord_<resource>_<role>``: a NOLOGIN group role holding the privileges configured
  under ``provision.roles.<role>.privileges`` (plus CONNECT on the target database if
  PUBLIC lacks it), created on first use and re-granted on every grant, so tables
  created since are covered.
* ``accord_u_<user>_<hash of user and resource>``: the user's login for this resource.
  One login per user *and* resource, so a new grant's password never breaks access the
  user holds on another database of the same cluster, and a revoke ends only this
  resource's sessions. A grant gives it a fresh password (sent to the server as a SCRAM
  verifier, never in clear), ``VALID UNTIL`` the grant's end and membership of the
  group; a revoke removes the membership, disables the login when it holds no other
  Accord group, and terminates the login's sessions.

* ``accord_gw_<resource>_<role>_<hash>``: the gateway's login for sessions of one role
  (`ensure_gateway_login`). It is a member of that role's group and of nothing else, holds
  no elevated attribute, and its password is derived from Accord's secrets key, so every
  gateway process can log in with it. A session through the gateway can therefore never
  become more than its grant: `RESET ROLE` leads back to this login, which holds exactly
  the group's privileges. Provisioning's per-user logins are the grantees' own (their
  passwords are shown to them once), and one may hold several roles of the resource.

Names are sanitized deterministically and injectively: plain names (only ``[a-z0-9]``) are
used as they are; anything else ('.', '-', '_', or too long for PostgreSQL's 63 bytes)
gets a hash suffix, so ``a.b``, ``a-b`` and ``a_b`` never share a login and
``orders-db``/``read`` never meets ``orders``/``db_read``. Hashed group names start with
``accord_g_`` and plain ones never with ``accord_u_``, so no group looks like a login.

The admin connection always uses the target's ``database`` (overriding the DSN's), so the
privileges land where grantees are told to connect. The admin role needs CREATEROLE (or
superuser), the right to grant the configured privileges, and pg_signal_backend to end
sessions. Nothing here logs or returns the DSN or a password, except a grant's `secret`.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow

from accord.provisioning.base import ConnectorError, GrantResult, GrantSpec, Health
from accord.spec.base import NAME
from accord.spec.resources import PostgresTarget, ResourceSpec

log = logging.getLogger(__name__)

T = TypeVar("T")
Conn = psycopg.Connection[TupleRow]

MAX_IDENTIFIER = 63  # PostgreSQL's NAMEDATALEN - 1 (bytes; our names are ASCII)
LOGIN_PREFIX = "accord_u_"
GATEWAY_PREFIX = "accord_gw_"  # always hashed: never a plain group's `accord_<res>_<role>`
GATEWAY_COMMENT = "accord:gateway="
GROUP_PREFIX = "accord_"
HASHED_GROUP_PREFIX = "accord_g_"
COMMENT_PREFIX = "accord:user="
CONNECT_TIMEOUT = 5  # seconds
_PLAIN = re.compile(r"^[a-z0-9]+$")
_PLAIN_LOGIN = re.compile(r"^accord_u_([a-z0-9]+)_[0-9a-f]{12}$")
_NOT_IDENT = re.compile(r"[^a-z0-9_]")
# LIKE patterns ('\' is LIKE's escape character): any Accord role, and Accord logins.
_LIKE_ACCORD = "accord\\_%"
_LIKE_LOGIN = "accord\\_u\\_%"
_ELEVATED = ("rolsuper", "rolcreaterole", "rolcreatedb", "rolreplication", "rolbypassrls")


# ------------------------------------------------------------------------ names


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]


def _hashed(prefix: str, body: str, digest: str) -> str:
    room = MAX_IDENTIFIER - len(prefix) - 1 - len(digest)
    return f"{prefix}{_NOT_IDENT.sub('_', body)[:room]}_{digest}"


def login_name(user: str, resource: str) -> str:
    """The PostgreSQL login of an Accord user on one resource, sanitized injectively."""
    return _hashed(LOGIN_PREFIX, user, _digest("login", user, resource))


def gateway_login_name(resource: str, role: str) -> str:
    """The login the gateway uses upstream for sessions of `role` on `resource`."""
    return _hashed(GATEWAY_PREFIX, f"{resource}_{role}", _digest("gateway", resource, role))


def group_name(resource: str, role: str) -> str:
    """The group role of an Accord role on a resource: ``accord_<resource>_<role>``."""
    plain = f"{GROUP_PREFIX}{resource}_{role}"
    if (_PLAIN.match(resource) and _PLAIN.match(role) and resource != "u"
            and len(plain) <= MAX_IDENTIFIER):
        return plain
    return _hashed(HASHED_GROUP_PREFIX, f"{resource}_{role}", _digest("group", resource, role))


def user_of_login(login: str, resource: str, comment: str | None = None,
                  known: Mapping[str, str] | None = None) -> str | None:
    """The Accord user whose login is `login`, or None when it cannot be told.

    Plain logins decode by themselves; hashed ones through the role's comment (written by
    `grant`) or `known`. Every candidate is checked by recomputing its login name, so a
    hand-written comment cannot make one login pass for another user.
    """
    candidates: list[str] = []
    if m := _PLAIN_LOGIN.match(login):
        candidates.append(m.group(1))
    if comment and comment.startswith(COMMENT_PREFIX):
        candidates.append(comment.removeprefix(COMMENT_PREFIX))
    if known and login in known:
        candidates.append(known[login])
    for user in candidates:
        if NAME.match(user) and login_name(user, resource) == login:
            return user
    return None


# ------------------------------------------------------------------- admin DSN


def admin_dsn(target: PostgresTarget, env: Mapping[str, str]) -> str:
    """The admin DSN from the env var `dsn_env` or the file `dsn_file` (env var first).

    Raises ConnectorError(retryable=False) naming the variable or file, never the DSN.
    """
    problems: list[str] = []
    if target.dsn_env:
        value = env.get(target.dsn_env, "").strip()
        if value:
            return _checked(value, f"environment variable {target.dsn_env}")
        problems.append(f"environment variable {target.dsn_env} is not set or empty")
    if target.dsn_file:
        path = Path(target.dsn_file)
        try:
            value = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            problems.append(f"file {path} does not exist")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "unreadable"
            problems.append(f"file {path} cannot be read ({reason})")
        else:
            if value:
                return _checked(value, f"file {path}")
            problems.append(f"file {path} is empty")
    if not problems:
        raise ConnectorError(
            "postgres target has no admin DSN: set provision.dsn_env or provision.dsn_file",
            retryable=False)
    raise ConnectorError("postgres target admin DSN unavailable: " + "; ".join(problems),
                         retryable=False)


def _checked(dsn: str, source: str) -> str:
    try:
        conninfo_to_dict(dsn)
    except psycopg.Error:
        valid = False  # libpq's parse errors quote the offending text: maybe the password
    else:
        valid = True
    if not valid:
        raise ConnectorError(f"the admin DSN in {source} is not a valid connection string",
                             retryable=False)
    return dsn


# -------------------------------------------------------------------- connector


def _utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


class PostgresConnector:
    """Grants Accord roles on one resource backed by a PostgreSQL database."""

    kind = "postgres"

    def __init__(self, resource: ResourceSpec, target: PostgresTarget, admin_dsn: str) -> None:
        self.resource = resource
        self.target = target
        self._dsn = admin_dsn
        try:
            self._password = str(conninfo_to_dict(admin_dsn).get("password") or "")
        except psycopg.Error:
            self._password = ""
        self._conn: Conn | None = None
        self._lock = threading.Lock()
        # group role name -> Accord role; roles dropped from `provision.roles` but still
        # offered by the resource stay mapped, so their leftovers show up as drift.
        self._groups = {group_name(resource.name, r): r
                        for r in sorted({*target.roles, *resource.roles})}
        self._known: dict[str, str] = {}  # login -> Accord user, for logins seen here
        # The gateway's own logins are members by design, not drift.
        self._gateway_logins = [gateway_login_name(resource.name, r)
                                for r in sorted({*target.roles, *resource.roles})]

    def __repr__(self) -> str:
        return f"PostgresConnector(resource={self.resource.name!r})"

    # -- the Connector interface

    def grant(self, spec: GrantSpec) -> GrantResult:
        self._check_spec(spec)
        privileges = self.target.roles.get(spec.role)
        if privileges is None:
            raise ConnectorError(
                f"resource {self.resource.name}: role {spec.role!r} is not provisioned "
                f"(not under provision.roles)", retryable=False)
        group = group_name(self.resource.name, spec.role)
        login = login_name(spec.user, self.resource.name)
        password = secrets.token_urlsafe(24)
        ends = _utc(spec.ends_at)

        def run(conn: Conn) -> None:
            self._ensure_group(conn, group, privileges.privileges)
            self._ensure_login(conn, login, spec.user, password, ends, group)
            if not self._is_member(conn, group, login):
                conn.execute(sql.SQL("GRANT {} TO {}").format(
                    sql.Identifier(group), sql.Identifier(login)))

        self._run("grant", run)
        self._known[login] = spec.user
        log.info("postgres grant: resource=%s role=%s login=%s until=%s",
                 self.resource.name, spec.role, login, ends.isoformat())
        return GrantResult(
            login=login,
            connection={"host": self.target.host, "port": self.target.port,
                        "database": self.target.database, "user": login},
            secret=password,
        )

    def revoke(self, spec: GrantSpec) -> None:
        self._check_spec(spec)
        group = group_name(self.resource.name, spec.role)
        login = login_name(spec.user, self.resource.name)

        def run(conn: Conn) -> None:
            if not self._role_exists(conn, login):
                # Drift held by a role Accord did not create (reported by its own name).
                if self._role_exists(conn, spec.user) and self._is_member(conn, group, spec.user):
                    conn.execute(sql.SQL("REVOKE {} FROM {}").format(
                        sql.Identifier(group), sql.Identifier(spec.user)))
                    self._terminate(conn, spec.user)
                return
            if self._is_member(conn, group, login):
                conn.execute(sql.SQL("REVOKE {} FROM {}").format(
                    sql.Identifier(group), sql.Identifier(login)))
                if self._is_member(conn, group, login):
                    # e.g. PostgreSQL 16+ when the membership was granted by another role
                    raise ConnectorError(
                        f"resource {self.resource.name}: membership of {group} for {login} "
                        f"survived REVOKE (granted by another role?)", retryable=False)
            if not self._other_groups(conn, login, exclude=group):
                conn.execute(sql.SQL("ALTER ROLE {} WITH NOLOGIN PASSWORD {}").format(
                    sql.Identifier(login),
                    sql.Literal(self._verifier(conn, login, secrets.token_urlsafe(24)))))
            self._terminate(conn, login)

        self._run("revoke", run)
        log.info("postgres revoke: resource=%s role=%s login=%s",
                 self.resource.name, spec.role, login)

    def granted(self) -> set[tuple[str, str]]:
        query = """
            SELECT g.rolname, m.rolname, shobj_description(m.oid, 'pg_authid')
            FROM pg_auth_members am
            JOIN pg_roles g ON g.oid = am.roleid
            JOIN pg_roles m ON m.oid = am.member
            WHERE g.rolname = ANY(%s) AND m.rolname <> current_user
              AND m.rolname <> ALL(%s)
        """

        # Every member counts, not only Accord's logins: a DBA granting the group to any
        # other role is exactly the drift to report.
        def run(conn: Conn) -> list[TupleRow]:
            return conn.execute(query, (list(self._groups), self._gateway_logins)).fetchall()

        out: set[tuple[str, str]] = set()
        for group, login, comment in self._run("granted", run):
            user = user_of_login(str(login), self.resource.name,
                                 comment if isinstance(comment, str) else None, self._known)
            out.add((user or str(login), self._groups[str(group)]))
        return out

    def ensure_gateway_login(self, role: str, password: str) -> str:
        """Make the gateway's login for `role` exist with `password`, as a member of the
        role's group and of no other role, without elevated attributes; returns its name.

        Idempotent, and safe beside other gateway processes doing the same (they set the
        same password). Raises ConnectorError when the login cannot be confined (a
        membership the admin role cannot revoke, an elevated attribute it cannot remove).
        """
        privileges = self.target.roles.get(role)
        if privileges is None or not NAME.match(role):
            raise ConnectorError(f"resource {self.resource.name}: role {role!r} is not "
                                 f"provisioned (not under provision.roles)", retryable=False)
        group = group_name(self.resource.name, role)
        login = gateway_login_name(self.resource.name, role)

        def run(conn: Conn) -> None:
            self._ensure_group(conn, group, privileges.privileges)
            attrs = self._attributes(conn, login)
            verifier = sql.Literal(self._verifier(conn, login, password))
            if attrs is not None and any(attrs[a] for a in _ELEVATED):
                raise ConnectorError(
                    f"resource {self.resource.name}: the gateway login {login} has elevated "
                    f"attributes (superuser, createrole, ...); refusing to use it",
                    retryable=False)
            created = attrs is None and self._create(conn, sql.SQL(
                "CREATE ROLE {} WITH LOGIN INHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE "
                "NOREPLICATION NOBYPASSRLS PASSWORD {}").format(sql.Identifier(login), verifier))
            if not created:
                conn.execute(sql.SQL(
                    "ALTER ROLE {} WITH LOGIN INHERIT PASSWORD {} VALID UNTIL 'infinity'").format(
                        sql.Identifier(login), verifier))
            comment = f"{GATEWAY_COMMENT}{self.resource.name}/{role}"
            conn.execute(sql.SQL("COMMENT ON ROLE {} IS {}").format(
                sql.Identifier(login), sql.Literal(comment)))
            for (other,) in conn.execute(
                    "SELECT g.rolname FROM pg_auth_members am JOIN pg_roles g ON g.oid = am.roleid "
                    "JOIN pg_roles m ON m.oid = am.member WHERE m.rolname = %s AND g.rolname <> %s",
                    (login, group)).fetchall():
                conn.execute(sql.SQL("REVOKE {} FROM {}").format(
                    sql.Identifier(str(other)), sql.Identifier(login)))
                if self._is_member(conn, str(other), login):
                    raise ConnectorError(
                        f"resource {self.resource.name}: the gateway login {login} is a member "
                        f"of {other}, which the admin role cannot revoke; refusing to use it",
                        retryable=False)
            if not self._is_member(conn, group, login):
                conn.execute(sql.SQL("GRANT {} TO {}").format(
                    sql.Identifier(group), sql.Identifier(login)))

        self._run("gateway login", run)
        log.info("postgres gateway login ready: resource=%s role=%s login=%s",
                 self.resource.name, role, login)
        return login

    def health(self) -> Health:
        def run(conn: Conn) -> Health:
            conn.execute("SELECT 1").fetchone()
            row = conn.execute(
                "SELECT rolsuper OR rolcreaterole, "
                "rolsuper OR pg_has_role(current_user, 'pg_signal_backend', 'MEMBER') "
                "FROM pg_roles WHERE rolname = current_user").fetchone()
            version = conn.info.parameter_status("server_version") or "?"
            where = f"database {self.target.database}, PostgreSQL {version}"
            if row is None or not row[0]:
                return Health(False, f"connected ({where}) but the admin role cannot "
                                     f"create roles (needs CREATEROLE)")
            if not row[1]:
                return Health(False, f"connected ({where}) but the admin role cannot end "
                                     f"sessions (needs pg_signal_backend)")
            return Health(True, f"connected ({where})")

        try:
            return self._run("health check", run)
        except ConnectorError as exc:
            return Health(False, str(exc))

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # -- statements

    def _ensure_group(self, conn: Conn, group: str,
                      privileges: Iterable[str]) -> None:
        attrs = self._attributes(conn, group)
        if attrs is None:
            self._create(conn, sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(group)))
        elif attrs["rolcanlogin"] or any(attrs[a] for a in _ELEVATED):
            raise ConnectorError(
                f"resource {self.resource.name}: role {group} exists and is not a plain "
                f"NOLOGIN group (LOGIN or elevated attributes); refusing to use it",
                retryable=False)
        for privilege in privileges:
            # Operator-written fragment from accord.yaml, e.g. "SELECT ON ALL TABLES IN
            # SCHEMA public": trusted configuration, not user input.
            conn.execute(sql.SQL("GRANT {} TO {}").format(
                sql.SQL(privilege), sql.Identifier(group)))
        # Table privileges are useless without CONNECT; PUBLIC usually has it, and the
        # database's ACL is only touched where it was hardened.
        row = conn.execute("SELECT has_database_privilege(%s, %s, 'CONNECT')",
                           (group, self.target.database)).fetchone()
        if row is None or not row[0]:
            conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
                sql.Identifier(self.target.database), sql.Identifier(group)))

    def _ensure_login(self, conn: Conn, login: str,
                      user: str, password: str, ends: datetime, group: str) -> None:
        attrs = self._attributes(conn, login)
        until = sql.Literal(ends.isoformat())
        verifier = sql.Literal(self._verifier(conn, login, password))
        if attrs is not None and any(attrs[a] for a in _ELEVATED):
            raise ConnectorError(
                f"resource {self.resource.name}: login {login} exists with elevated "
                f"attributes (superuser, createrole, ...); refusing to hand it out",
                retryable=False)
        created = attrs is None and self._create(conn, sql.SQL(
            "CREATE ROLE {} WITH LOGIN INHERIT PASSWORD {} VALID UNTIL {}").format(
                sql.Identifier(login), verifier, until))
        if not created:
            # Another Accord group may need the login longer than this grant does.
            row = conn.execute(
                "SELECT rolvaliduntil > %s, rolvaliduntil::text FROM pg_roles "
                "WHERE rolname = %s", (ends, login)).fetchone()
            if row is not None and row[0] and self._other_groups(conn, login, exclude=group):
                until = sql.Literal(str(row[1]))
            conn.execute(sql.SQL(
                "ALTER ROLE {} WITH LOGIN INHERIT PASSWORD {} VALID UNTIL {}").format(
                    sql.Identifier(login), verifier, until))
        conn.execute(sql.SQL("COMMENT ON ROLE {} IS {}").format(
            sql.Identifier(login), sql.Literal(COMMENT_PREFIX + user)))

    def _create(self, conn: Conn,
                statement: sql.Composed) -> bool:
        """Run a CREATE ROLE; False if a concurrent caller created it first."""
        try:
            conn.execute(statement)
        except (psycopg.errors.DuplicateObject, psycopg.errors.UniqueViolation):
            return False
        return True

    @staticmethod
    def _attributes(conn: Conn,
                    role: str) -> dict[str, bool] | None:
        cols = ("rolcanlogin", *_ELEVATED)
        row = conn.execute(
            sql.SQL("SELECT {} FROM pg_roles WHERE rolname = %s").format(
                sql.SQL(", ").join(sql.Identifier(c) for c in cols)), (role,)).fetchone()
        return None if row is None else {c: bool(v) for c, v in zip(cols, row, strict=True)}

    @staticmethod
    def _role_exists(conn: Conn, role: str) -> bool:
        return conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s",
                            (role,)).fetchone() is not None

    @staticmethod
    def _is_member(conn: Conn, group: str,
                   login: str) -> bool:
        return conn.execute(
            "SELECT 1 FROM pg_auth_members am JOIN pg_roles g ON g.oid = am.roleid "
            "JOIN pg_roles m ON m.oid = am.member WHERE g.rolname = %s AND m.rolname = %s",
            (group, login)).fetchone() is not None

    @staticmethod
    def _other_groups(conn: Conn, login: str,
                      exclude: str) -> bool:
        """Whether `login` directly holds an Accord group role other than `exclude`."""
        return conn.execute(
            "SELECT 1 FROM pg_auth_members am JOIN pg_roles g ON g.oid = am.roleid "
            "JOIN pg_roles m ON m.oid = am.member WHERE m.rolname = %s "
            "AND g.rolname LIKE %s AND g.rolname NOT LIKE %s AND g.rolname <> %s LIMIT 1",
            (login, _LIKE_ACCORD, _LIKE_LOGIN, exclude)).fetchone() is not None

    @staticmethod
    def _terminate(conn: Conn, login: str) -> None:
        # PostgreSQL 14+ can wait (up to 5 s) until the sessions are really gone.
        wait = ", 5000" if conn.info.server_version >= 140000 else ""
        conn.execute(
            sql.SQL("SELECT pg_terminate_backend(pid{}) FROM pg_stat_activity "
                    "WHERE usename = %s AND pid <> pg_backend_pid()").format(sql.SQL(wait)),
            (login,)).fetchall()

    @staticmethod
    def _verifier(conn: Conn, login: str,
                  password: str) -> str:
        """A SCRAM verifier computed client-side: the password never reaches server logs."""
        return conn.pgconn.encrypt_password(
            password.encode(), login.encode(), b"scram-sha-256").decode()

    # -- plumbing

    def _check_spec(self, spec: GrantSpec) -> None:
        if spec.resource != self.resource.name:
            raise ConnectorError(f"connector for resource {self.resource.name} got a spec "
                                 f"for resource {spec.resource!r}", retryable=False)
        if not NAME.match(spec.user) or not NAME.match(spec.role):
            raise ConnectorError(f"resource {self.resource.name}: invalid user or role name",
                                 retryable=False)

    # Errors are raised outside `except` blocks: no chained original exception (whose
    # text may quote the DSN) travels with them into logs or tracebacks.

    def _open(self) -> Conn:
        failure: ConnectorError | None = None
        try:
            conn = psycopg.connect(self._dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT,
                                   dbname=self.target.database, application_name="accord")
        except psycopg.ProgrammingError:
            # libpq's parse errors quote the offending text, which may be the password.
            failure = ConnectorError(f"resource {self.resource.name}: the admin DSN is not "
                                     f"a valid connection string", retryable=False)
        except psycopg.Error as exc:
            failure = self._error("connection", exc)
        if failure is not None:
            raise failure
        try:
            conn.execute("SET lock_timeout = '10s'")
            conn.execute("SET statement_timeout = '30s'")
        except psycopg.Error as exc:
            conn.close()
            failure = self._error("connection", exc)
        if failure is not None:
            raise failure
        return conn

    def _run(self, what: str, fn: Callable[[Conn], T]) -> T:
        """Run `fn` on the admin connection, mapping failures to ConnectorError.

        Every operation is idempotent, so a failure on a reused connection that broke it
        (the server restarted, an idle connection was cut) is retried once on a new one.
        """
        with self._lock:
            failure: ConnectorError | None = None
            for attempt in (1, 2):
                conn = self._conn
                reused = conn is not None and not conn.closed
                if conn is None or conn.closed:
                    conn = self._conn = self._open()
                try:
                    return fn(conn)
                except psycopg.Error as exc:
                    failure = self._error(what, exc)
                    if conn.broken or conn.closed:
                        conn.close()
                        self._conn = None
                        if reused and attempt == 1:
                            continue
                break
            assert failure is not None
            raise failure

    def _error(self, what: str, exc: psycopg.Error) -> ConnectorError:
        state = exc.sqlstate or ""
        retryable = (isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)
                     or state[:2] in {"08", "40", "53", "57", "58"}
                     or state in {"55P03", "55006", "XX000"})  # XX000: tuple concurrently updated
        return ConnectorError(
            f"postgres {what} for resource {self.resource.name} failed: {self._redact(exc)}",
            retryable=retryable)

    def _redact(self, exc: psycopg.Error) -> str:
        message = (exc.diag.message_primary if exc.diag.message_primary else str(exc)).strip()
        message = " ".join(message.split())
        for secret in (self._dsn, self._password):
            if secret:
                message = message.replace(secret, "***")
        return message or type(exc).__name__
