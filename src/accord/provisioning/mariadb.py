"""MariaDB connector: one login per Accord user, one MariaDB role per (resource, Accord role).

Names on the server (all deterministic, so any process can find what another made):

- `accord_u_<user>`@'%' — the login a grantee connects with. '.' and '-' (and anything
  else outside [A-Za-z0-9_]) become '_'; at 32 characters or more the name is cut and
  ends in `_<8 hex of sha256(user)>` (MySQL-compatible length, never ambiguous).
- `accord_r_<resource>_<role>_<8 hex>` — holds the privileges the operator configured for
  that Accord role. The hash of the exact (resource, role) pair keeps `shop.db`/`shop_db`
  or (`a_b`, `c`)/(`a`, `b_c`) from ever sharing a role and so each other's privileges.
- `accord_gw_<resource>_<role>_<8 hex>` — the gateway's own login for one Accord role of a
  resource (`ensure_gateway_login`): it holds that resource role and nothing else, and is
  not a grant (`granted()` leaves it out). Its password is derived from Accord's secrets
  key, so every gateway process finds the same.
- `accord_p_<user>` — the user's personal role, spelled with the exact Accord user name.
  Every resource role the user holds is granted to it, and it is the login's default
  role. MariaDB allows one default role per account, so granting resource roles straight
  to the login would leave only the last one effective in new sessions; nesting them
  under one personal role makes all of them effective. It also lets `granted()` report
  the exact Accord user even where the login had to be sanitized.

The admin account needs CREATE USER, the configured privileges WITH GRANT OPTION, SELECT
on `mysql.roles_mapping` and `mysql.user`, PROCESS, and CONNECTION ADMIN (or SUPER) to
kill sessions. It holds the admin option on every role it creates (MariaDB requires
that to grant a role); `granted()` leaves that creator entry out.

Only MariaDB is supported: MySQL stores roles differently (`mysql.role_edges`, roles with
a host part, several default roles), so a `type: mysql` target fails with a clear error.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pymysql
from pymysql.connections import Connection
from pymysql.cursors import Cursor

from accord.provisioning.base import ConnectorError, GrantResult, GrantSpec, Health
from accord.spec.base import NAME
from accord.spec.resources import MariaDBTarget, ResourceSpec

log = logging.getLogger("accord.provisioning.mariadb")

USER_PREFIX = "accord_u_"
GATEWAY_PREFIX = "accord_gw_"
PERSONAL_PREFIX = "accord_p_"
ROLE_PREFIX = "accord_r_"
MAX_LOGIN = 32  # MySQL's limit; MariaDB allows 128
MAX_ROLE = 80  # MariaDB before 10.6 allowed 80
LOCK_TIMEOUT = 10  # seconds to wait for another grant/revoke of the same login
CONNECT_TIMEOUT = 5
IO_TIMEOUT = 30

_UNSAFE = re.compile(r"[^A-Za-z0-9_]")
_HASHED = re.compile(r"_[0-9a-f]{8}$")

# Server errors an operator has to fix; retrying cannot help.
_PERMANENT = frozenset({
    1044,  # access denied to database
    1045,  # access denied (bad admin credentials)
    1049,  # unknown database
    1064,  # syntax error (a configured privilege string)
    1133,  # no such user
    1142, 1143, 1227, 1370,  # the admin lacks a privilege
    1146,  # unknown table
    1396,  # CREATE/ALTER USER failed
    1410,  # not allowed to create a user with GRANT
    1698,  # access denied (e.g. no admin option on a role)
    1959,  # invalid role specification
})


# ------------------------------------------------------------------- names


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:8]


def _fit(name: str, limit: int, *key: str) -> str:
    """`name` if shorter than `limit`, else cut so that `_<hash of key>` ends it at `limit`."""
    if len(name) < limit:
        return name
    return name[: limit - 9] + "_" + _digest(*key)


def login_for(user: str) -> str:
    """The MariaDB login of an Accord user (at most 32 characters, [A-Za-z0-9_]).

    Injective: when sanitizing changed the name ('.' or '-' became '_'), a hash of the
    exact user name is appended, so `a.b`, `a-b` and `a_b` never share an account.
    """
    safe = _UNSAFE.sub("_", user)
    if safe != user:
        return (USER_PREFIX + safe)[: MAX_LOGIN - 9] + "_" + _digest(user)
    return _fit(USER_PREFIX + safe, MAX_LOGIN, user)


def personal_role(user: str) -> str:
    """The role holding every resource role an Accord user has on this server."""
    return _fit(PERSONAL_PREFIX + user, MAX_ROLE, user)


def role_name(resource: str, role: str) -> str:
    """The MariaDB role that carries an Accord role's privileges on a resource."""
    base = f"{ROLE_PREFIX}{_UNSAFE.sub('_', resource)}_{_UNSAFE.sub('_', role)}"
    suffix = "_" + _digest(resource, role)
    return base[: MAX_ROLE - len(suffix)] + suffix


def gateway_login_name(resource: str, role: str) -> str:
    """The gateway's MariaDB login for sessions of `role` on `resource` (at most 32
    characters; the hash of the exact pair keeps look-alike names apart)."""
    base = f"{GATEWAY_PREFIX}{_UNSAFE.sub('_', resource)}_{_UNSAFE.sub('_', role)}"
    return base[: MAX_LOGIN - 9] + "_" + _digest("gateway", resource, role)


def _user_of_login(login: str) -> str:
    """Best effort: the Accord user behind a login, or the login itself if unknowable."""
    if not login.startswith(USER_PREFIX) or len(login) >= MAX_LOGIN:
        return login
    return login[len(USER_PREFIX):]  # '.'/'-' were folded to '_' and stay that way


def _user_of_personal(role: str) -> str | None:
    if not role.startswith(PERSONAL_PREFIX) or len(role) >= MAX_ROLE:
        return None
    return role[len(PERSONAL_PREFIX):]


def _holder(user: str, host: str, admin: str, me: tuple[str, str]) -> str | None:
    """Who a `mysql.roles_mapping` row says holds the role, as `granted()` reports it.

    None for the admin's own entry: MariaDB gives a role's creator the admin option on
    it, which is how the connector may grant it, not a grant.
    """
    if host == "":  # granted to a role: a personal role, or one made by hand
        return _user_of_personal(user) or user
    if user.startswith(GATEWAY_PREFIX):  # the gateway's login for the role: no grant
        return None
    if admin == "Y" and (user, host) == me:
        return None
    return _user_of_login(user)


def native_password_hash(password: str) -> str:
    """The mysql_native_password verifier: `*` and hex SHA1(SHA1(password)), upper case."""
    inner = hashlib.sha1(password.encode(), usedforsecurity=False).digest()
    return "*" + hashlib.sha1(inner, usedforsecurity=False).hexdigest().upper()


# ------------------------------------------------------------------- admin DSN


def admin_dsn(target: MariaDBTarget, env: Mapping[str, str] | None = None) -> str:
    """The admin DSN from the env var `dsn_env`, else the file `dsn_file`.

    Error messages name where the DSN was looked for, never what was found.
    """
    environ: Mapping[str, str] = os.environ if env is None else env
    if target.dsn_env:
        value = environ.get(target.dsn_env, "").strip()
        if value:
            return value
        if not target.dsn_file:
            raise ConnectorError(
                f"environment variable {target.dsn_env} (the MariaDB admin DSN) is not set",
                retryable=False)
    if target.dsn_file:
        path = Path(target.dsn_file)
        try:
            value = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
            raise ConnectorError(f"cannot read the MariaDB admin DSN file {path}: {why}",
                                 retryable=False) from None
        if value:
            return value
        raise ConnectorError(f"the MariaDB admin DSN file {path} is empty", retryable=False)
    raise ConnectorError("no MariaDB admin DSN: set provision.dsn_env or provision.dsn_file",
                         retryable=False)


def connect_args(dsn: str) -> dict[str, Any]:
    """pymysql.connect() arguments from `mysql://user:password@host:port/database`."""
    bad = ConnectorError("the MariaDB admin DSN is not a valid mysql://user@host:port/ URL",
                         retryable=False)
    try:
        parts = urlsplit(dsn)
        port = parts.port
    except ValueError:
        raise bad from None
    if parts.scheme not in ("mysql", "mariadb", "mysql+pymysql", "mariadb+pymysql"):
        raise bad
    args: dict[str, Any] = {
        "host": parts.hostname or "127.0.0.1",
        "port": port or 3306,
        "user": unquote(parts.username or "root"),
        "password": unquote(parts.password or ""),
        "database": unquote(parts.path.lstrip("/")) or None,
    }
    query = parse_qs(parts.query)
    unknown = sorted(set(query) - {"unix_socket", "ssl_ca"})
    if unknown:
        raise ConnectorError(f"the MariaDB admin DSN has unsupported options: {', '.join(unknown)}",
                             retryable=False)
    if "unix_socket" in query:
        args["unix_socket"] = query["unix_socket"][-1]
    if "ssl_ca" in query:
        args["ssl_ca"] = query["ssl_ca"][-1]
    return args


# ------------------------------------------------------------------- connector


class MariaDBConnector:
    """Grants and revokes Accord roles on one MariaDB resource."""

    kind = "mariadb"

    def __init__(self, resource: ResourceSpec, target: MariaDBTarget, admin_dsn: str) -> None:
        self.resource = resource
        self.target = target
        self._name = resource.name
        self._args = connect_args(admin_dsn)
        self._scrub = [s for s in (admin_dsn, self._args["password"]) if s]
        self._conn: Connection[Cursor] | None = None
        self._mutex = threading.Lock()
        # MariaDB role -> Accord role. Roles the resource still offers but no longer
        # provisions stay mapped, so their leftovers show up as drift.
        self._roles = {role_name(self._name, r): r
                       for r in sorted({*target.roles, *resource.roles})}

    def __repr__(self) -> str:
        return f"MariaDBConnector(resource={self._name!r})"

    # -- the Connector interface

    def grant(self, spec: GrantSpec) -> GrantResult:
        self._check(spec)
        if not NAME.match(spec.user):
            raise ConnectorError(f"mariadb {self._name}: invalid user name {spec.user!r}",
                                 retryable=False)
        privileges = self._privileges(spec.role)
        role = role_name(self._name, spec.role)
        login, personal = login_for(spec.user), personal_role(spec.user)
        password = secrets.token_urlsafe(24)
        account = "%s@'%%'"
        with self._cursor("grant") as cur:
            self._ensure_role(cur, role, privileges)
            with self._login_lock(cur, login):
                self._run(cur, "CREATE ROLE IF NOT EXISTS %s", (personal,))
                self._run(cur, "GRANT %s TO %s", (role, personal))
                # The hash, computed here, so the password is in no statement the server
                # might log or replicate (the same hash IDENTIFIED BY would store).
                verifier = native_password_hash(password)
                self._run(cur, f"CREATE USER IF NOT EXISTS {account} IDENTIFIED BY PASSWORD %s",
                          (login, verifier), quiet=True)
                self._run(cur, f"ALTER USER {account} IDENTIFIED BY PASSWORD %s ACCOUNT UNLOCK",
                          (login, verifier), quiet=True)
                self._run(cur, f"GRANT %s TO {account}", (personal, login))
                self._run(cur, f"SET DEFAULT ROLE %s FOR {account}", (personal, login))
        log.info("mariadb %s: granted %s to %s", self._name, spec.role, login)
        connection: dict[str, str | int] = {
            "host": self.target.host,
            "port": self.target.port,
            "database": self.target.database,
            "user": login,
        }
        return GrantResult(login=login, connection=connection, secret=password)

    def revoke(self, spec: GrantSpec) -> None:
        """Take the role away from everyone `granted()` reports as `spec.user`.

        That is the user's personal role, the user's login should someone have granted
        the role to it by hand, and (for drift enforcement) a non-Accord account or role
        whose raw name `granted()` reported. The Accord login is locked once it holds no
        Accord role on any resource; every session of the affected accounts is killed.
        """
        self._check(spec)
        role = role_name(self._name, spec.role)
        login = login_for(spec.user)
        killed = 0
        with self._cursor("revoke") as cur, self._login_lock(cur, login):
            me = self._current_user(cur)
            cur.execute("SELECT User, Host, Admin_option FROM mysql.roles_mapping"
                        " WHERE Role = %s", (role,))
            accounts = {login}
            for user, host, admin in cur.fetchall():
                holder = _holder(user, host, admin, me)
                if holder != spec.user and not (host and user == login):
                    continue
                if host:
                    self._run(cur, "REVOKE %s FROM %s@%s", (role, user, host))
                    accounts.add(user)
                else:
                    self._run(cur, "REVOKE %s FROM %s", (role, user))
            if not self._holds_any(cur, login):
                cur.execute("SELECT Host FROM mysql.user WHERE User = %s AND Host <> ''",
                            (login,))
                for (host,) in cur.fetchall():
                    self._run(cur, "ALTER USER %s@%s ACCOUNT LOCK", (login, host))
            for account in sorted(accounts):
                killed += self._kill_sessions(cur, account)
        log.info("mariadb %s: revoked %s from %s (%d session(s) killed)",
                 self._name, spec.role, login, killed)

    def ensure_gateway_login(self, role: str, password: str) -> str:
        """Make the gateway's login for `role` exist with `password`, holding the role's
        MariaDB role (its default) and nothing else: other roles and direct privileges,
        added by hand, are revoked. Returns the login's name."""
        if not NAME.match(role):
            raise ConnectorError(f"mariadb {self._name}: invalid role name {role!r}",
                                 retryable=False)
        privileges = self._privileges(role)
        mine = role_name(self._name, role)
        login = gateway_login_name(self._name, role)
        account = "%s@'%%'"
        with self._cursor("preparing the gateway's login") as cur:
            self._ensure_role(cur, mine, privileges)
            with self._login_lock(cur, login):
                verifier = native_password_hash(password)
                self._run(cur, f"CREATE USER IF NOT EXISTS {account} IDENTIFIED BY PASSWORD %s",
                          (login, verifier), quiet=True)
                self._run(cur, f"ALTER USER {account} IDENTIFIED BY PASSWORD %s ACCOUNT UNLOCK",
                          (login, verifier), quiet=True)
                cur.execute("SELECT Role FROM mysql.roles_mapping WHERE User = %s AND "
                            "Host = '%%'", (login,))
                for (other,) in cur.fetchall():
                    if other != mine:
                        self._run(cur, f"REVOKE %s FROM {account}", (other, login))
                self._run(cur, f"REVOKE ALL PRIVILEGES, GRANT OPTION FROM {account}", (login,))
                self._run(cur, f"GRANT %s TO {account}", (mine, login))
                self._run(cur, f"SET DEFAULT ROLE %s FOR {account}", (mine, login))
        return login

    def granted(self) -> set[tuple[str, str]]:
        """Holders of this resource's roles: Accord users, else raw account or role names."""
        if not self._roles:
            return set()
        with self._cursor("listing grants") as cur:
            me = self._current_user(cur)
            cur.execute("SELECT User, Host, Role, Admin_option FROM mysql.roles_mapping"
                        " WHERE Role IN %s", (tuple(self._roles),))  # PyMySQL expands it
            rows = cur.fetchall()
        out: set[tuple[str, str]] = set()
        for user, host, role, admin in rows:
            holder = _holder(user, host, admin, me)
            if holder is not None:
                out.add((holder, self._roles[role]))
        return out

    def health(self) -> Health:
        try:
            with self._cursor("health check") as cur:
                cur.execute("SELECT 1")
                _one(cur)
        except ConnectorError as exc:
            return Health(ok=False, detail=str(exc))
        return Health(ok=True, detail="SELECT 1 ok")

    def close(self) -> None:
        with self._mutex:
            self._drop()

    # -- helpers

    def _check(self, spec: GrantSpec) -> None:
        if spec.resource != self._name:
            raise ConnectorError(f"mariadb {self._name}: got a spec for resource "
                                 f"{spec.resource!r}", retryable=False)
        if not NAME.match(spec.role):
            raise ConnectorError(f"mariadb {self._name}: invalid role name {spec.role!r}",
                                 retryable=False)

    def _current_user(self, cur: Cursor) -> tuple[str, str]:
        cur.execute("SELECT CURRENT_USER()")
        user, _, host = str(_one(cur)).rpartition("@")
        return user, host

    def _privileges(self, role: str) -> list[str]:
        spec = self.target.roles.get(role)
        if spec is None:
            raise ConnectorError(f"mariadb {self._name}: role {role!r} has no privileges "
                                 "configured (provision.roles)", retryable=False)
        return spec.privileges

    def _ensure_role(self, cur: Cursor, role: str, privileges: list[str]) -> None:
        """Create the resource role and give it the configured privileges (additive)."""
        self._run(cur, "CREATE ROLE IF NOT EXISTS %s", (role,))
        for privilege in privileges:
            # Trusted operator text such as "SELECT ON shop.*"; only the role is a parameter.
            try:
                cur.execute("GRANT " + privilege.replace("%", "%%") + " TO %s", (role,))
            except pymysql.MySQLError as exc:
                raise self._error(f"granting the configured privilege {privilege!r}",
                                  exc) from None

    def _holds_any(self, cur: Cursor, login: str) -> bool:
        """Whether the login still holds an Accord resource role, for any resource."""
        cur.execute(
            "SELECT COUNT(*) FROM mysql.roles_mapping WHERE Role LIKE 'accord\\_r\\_%%'"
            " AND ((User = %s AND Host <> '') OR (Host = '' AND User IN ("
            "   SELECT Role FROM mysql.roles_mapping"
            "   WHERE User = %s AND Host <> '' AND Role LIKE 'accord\\_p\\_%%')))",
            (login, login))
        return int(_one(cur)) > 0

    def _kill_sessions(self, cur: Cursor, login: str) -> int:
        cur.execute("SELECT ID FROM information_schema.PROCESSLIST WHERE USER = %s", (login,))
        killed = 0
        for (pid,) in cur.fetchall():
            try:
                cur.execute(f"KILL CONNECTION {int(pid)}")
                killed += 1
            except pymysql.MySQLError as exc:
                if _code(exc) != 1094:  # unknown thread: it ended meanwhile
                    raise
        return killed

    @contextmanager
    def _login_lock(self, cur: Cursor, login: str) -> Iterator[None]:
        """Serialize grant/revoke of one login across processes (GET_LOCK)."""
        name = "accord:" + login
        cur.execute("SELECT GET_LOCK(%s, %s)", (name, LOCK_TIMEOUT))
        if _one(cur) != 1:
            raise ConnectorError(f"mariadb {self._name}: timed out waiting for another "
                                 f"change to {login}", retryable=True)
        try:
            yield
        finally:
            with suppress(pymysql.MySQLError):  # a lost connection releases it anyway
                cur.execute("SELECT RELEASE_LOCK(%s)", (name,))
                cur.fetchall()

    def _run(self, cur: Cursor, sql: str, args: tuple[Any, ...], *, quiet: bool = False) -> None:
        """Execute with PyMySQL's quoting of `args`; `quiet` hides the server's text."""
        try:
            cur.execute(sql, args)
        except pymysql.MySQLError as exc:
            if not quiet:
                raise
            code = _code(exc)
            raise ConnectorError(f"mariadb {self._name}: setting a password failed "
                                 f"(error {code})", retryable=_retryable(exc)) from None

    @contextmanager
    def _cursor(self, what: str) -> Iterator[Cursor]:
        with self._mutex:
            try:
                conn = self._connection()
                with conn.cursor() as cur:
                    yield cur
            except pymysql.MySQLError as exc:
                if _retryable(exc):
                    self._drop()  # the connection may be broken; start afresh next time
                raise self._error(what, exc) from None

    def _connection(self) -> Connection[Cursor]:
        if self._conn is not None:
            try:
                self._conn.ping()
                return self._conn
            except pymysql.MySQLError:
                self._drop()
        conn: Connection[Cursor] = pymysql.connect(
            **self._args, autocommit=True, charset="utf8mb4", connect_timeout=CONNECT_TIMEOUT,
            read_timeout=IO_TIMEOUT, write_timeout=IO_TIMEOUT)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT VERSION()")
                version = str(_one(cur))
        except BaseException:
            conn.close()
            raise
        if "mariadb" not in version.lower():
            conn.close()
            raise ConnectorError(f"mariadb {self._name}: the server is not MariaDB; MySQL "
                                 "is not supported by this connector", retryable=False)
        self._conn = conn
        return conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and conn.open:
            with suppress(pymysql.MySQLError):
                conn.close()

    def _error(self, what: str, exc: pymysql.MySQLError) -> ConnectorError:
        code = _code(exc)
        text = str(exc.args[1]) if len(exc.args) > 1 else type(exc).__name__
        for s in self._scrub:
            text = text.replace(s, "***")
        prefix = f"mariadb {self._name}: {what} failed"
        message = f"{prefix}: ({code}) {text}" if code else f"{prefix}: {text}"
        return ConnectorError(message, retryable=_retryable(exc))


def _one(cur: Cursor) -> Any:
    row = cur.fetchone()
    return None if row is None else row[0]


def _code(exc: pymysql.MySQLError) -> int | None:
    return exc.args[0] if exc.args and isinstance(exc.args[0], int) else None


def _retryable(exc: pymysql.MySQLError) -> bool:
    code = _code(exc)
    if code in _PERMANENT:
        return False
    return not isinstance(exc, pymysql.err.ProgrammingError | pymysql.err.IntegrityError
                          | pymysql.err.DataError | pymysql.err.NotSupportedError)
