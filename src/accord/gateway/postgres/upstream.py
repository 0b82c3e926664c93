"""The gateway's connection to a resource's PostgreSQL: where, as whom, and the login itself.

Whose login, in order of preference:

* A role the resource provisions (`provision.roles.<role>` of a postgres target, and no
  `gateway.dsn_env`/`dsn_file`): the gateway's own login for that role
  (`accord_gw_<resource>_<role>_<hash>`), a member of the role's group and of nothing
  else, with a password derived from Accord's secrets key; the gateway makes it exist
  (with the provision target's admin DSN) before its first session. The session can never
  be more than its grant: `RESET ROLE` and friends lead back to this login.
* Otherwise the shared credentials of `gateway.dsn_env`/`dsn_file`, then `SET ROLE` when
  `gateway.set_role` says so. That login is the ceiling of every grant on the resource:
  `accord policy check` warns when it holds more than a grant should.
* Never the provision target's admin DSN: a role the target does not provision, on a
  resource without shared credentials, has no login to serve its sessions, which are
  refused (`accord policy check` says so).

Every login pins the settings that decide how the server reads statement text
(`scope.PINNED_SETTINGS`) as startup parameters, so that the gateway's parser and the
server read the same bytes alike. Authentication is whatever the server asks: trust,
cleartext, MD5 or SCRAM-SHA-256.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, cast

import psycopg
from psycopg.conninfo import conninfo_to_dict

from accord.gateway import session
from accord.gateway.link import Closed, Link
from accord.gateway.postgres import protocol as pq
from accord.gateway.postgres.scope import PINNED_SETTINGS
from accord.gateway.postgres.scram import MECHANISM, AuthError, ScramClient, md5_password
from accord.provisioning.base import ConnectorError
from accord.provisioning.postgres import admin_dsn, gateway_login_name, group_name
from accord.provisioning.secrets import SecretBox
from accord.spec.resources import PostgresTarget, ResourceSpec

UpstreamError = session.UpstreamError
log = logging.getLogger("accord.gateway")
CONNECT_TIMEOUT = session.CONNECT_TIMEOUT
# Client startup parameters passed upstream; anything else (notably `options`, which can
# set `role`) is dropped, and the pinned settings are the gateway's (`startup_problem`).
PASSED_PARAMS = ("application_name", "DateStyle", "TimeZone",
                 "extra_float_digits", "IntervalStyle", "datestyle", "timezone",
                 "intervalstyle")
# client_encoding values a client may ask for: UTF8 in PostgreSQL's spellings, and
# SQL_ASCII (libpq's "auto" in the C locale), which the gateway answers with UTF8.
_CLIENT_ENCODINGS = frozenset({"utf8", "unicode", "sqlascii"})
_IDENTITY_PARAMS = frozenset({"role", "session_authorization"})


def _encoding_key(name: str) -> str:
    """PostgreSQL compares encoding names ignoring case and punctuation."""
    return "".join(ch for ch in name.lower() if ch.isalnum())


def _options(value: str) -> list[tuple[str, str]]:
    """The settings in a startup `options` string (`-c name=value`, `--name=value`), as the
    server reads them: words split at unescaped whitespace, `-` in names read as `_`."""
    words: list[str] = []
    word: list[str] = []
    escaped = False
    for ch in value:
        if escaped:
            word.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch.isspace():
            if word:
                words.append("".join(word))
                word = []
        else:
            word.append(ch)
    if word:
        words.append("".join(word))
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(words):
        w = words[i]
        setting = None
        if w == "-c" and i + 1 < len(words):
            setting, i = words[i + 1], i + 1
        elif w.startswith(("-c", "--")):
            setting = w[2:]
        if setting is not None:
            name, _, val = setting.partition("=")
            out.append((name.replace("-", "_").lower(), val))
        i += 1
    return out


def startup_problem(params: Mapping[str, str]) -> tuple[str, str, str] | None:
    """Why a client's startup parameters cannot be honoured: (SQLSTATE, message, what the
    client tried: `identity`, `encoding` or `server`), or None.

    Refused rather than dropped: replication, a role or session authorization, and any
    pinned setting (`client_encoding` other than UTF8, `standard_conforming_strings`, ...),
    directly or inside `options`.
    """
    if params.get("replication", "false").lower() not in ("false", "off", "0", "no"):
        return ("28000", "replication connections are not available through the Accord "
                         "gateway", "server")
    settings = [(k.lower(), v) for k, v in params.items()
                if k not in ("user", "database", "options")]
    settings += _options(params.get("options", ""))
    for name, value in settings:
        if name in _IDENTITY_PARAMS:
            return ("28000", f"the Accord gateway does not let a session choose its {name}; "
                             f"it is the grant's", "identity")
        if name == "client_encoding":
            if _encoding_key(value) not in _CLIENT_ENCODINGS:
                return ("22023", f"client_encoding {value[:40]!r} is not available through "
                                 f"the Accord gateway, which speaks UTF8 only (set "
                                 f"PGCLIENTENCODING=UTF8)", "encoding")
        elif name in PINNED_SETTINGS and value.lower() != PINNED_SETTINGS[name]:
            return ("22023", f"{name} is pinned to {PINNED_SETTINGS[name]} by the Accord "
                             f"gateway, so that it and the server read statements alike",
                    "encoding")
    return None


@dataclass(frozen=True)
class Target(session.Target):
    sslmode: str = "prefer"
    sslrootcert: str | None = None

    @property
    def unix_socket(self) -> str | None:
        return f"{self.host}/.s.PGSQL.{self.port}" if self.host.startswith("/") else None


def uses_gateway_login(spec: ResourceSpec, role: str) -> bool:
    return session.uses_gateway_login(spec, role, PostgresTarget)


def unserved_role(resource: str, role: str) -> str:
    """Why the gateway serves no session of `role` on `resource` (see `target_for`)."""
    return (f"resource {resource}: role {role} is not provisioned (not under "
            f"provision.roles) and the resource has no shared gateway credentials; the "
            f"provision target's admin credentials never serve a session. Provision the "
            f"role, or give the gateway a login of its own with gateway.dsn_env or "
            f"gateway.dsn_file")


def unserved_roles(spec: ResourceSpec) -> list[str]:
    """The roles of `spec` whose gateway sessions would all be refused (`unserved_role`)."""
    g = spec.gateway
    if not isinstance(spec.provision, PostgresTarget) or (
            g is not None and (g.dsn_env or g.dsn_file)):
        return []
    return [r for r in spec.roles if r not in spec.provision.roles]


# PostgreSQL's predefined roles that widen what a login can do beyond the tables a grant
# covers, grouped by what they give (membership is inherited: pg_monitor brings the
# pg_read_all_* and pg_stat_scan_tables roles). Roles this server does not have are skipped.
PREDEFINED_RISKS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("pg_execute_server_program", "pg_read_server_files", "pg_write_server_files"),
     "server files or programs are within reach"),
    (("pg_read_all_data", "pg_write_all_data"),
     "every table is within reach, whatever a grant covers"),
    (("pg_signal_backend",), "other sessions can be cancelled or terminated"),
    (("pg_checkpoint", "pg_create_subscription", "pg_use_reserved_connections", "pg_maintain"),
     "server-wide operations are within reach"),
    (("pg_monitor", "pg_read_all_settings", "pg_read_all_stats", "pg_stat_scan_tables"),
     "lower risk: every setting and other sessions' statements and statistics are readable"),
)
_PREDEFINED = [r for roles, _ in PREDEFINED_RISKS for r in roles]


def shared_login_risks(spec: ResourceSpec, env: Mapping[str, str] | None = None) -> list[str]:
    """What the shared upstream login of `spec` holds beyond what a grant should: one line
    each (empty: nothing found). Connects to the database (raises UpstreamError)."""
    target = target_for(spec, next(iter(spec.roles)), env)
    groups = {group_name(spec.name, r) for r in spec.roles}
    params: dict[str, Any] = {
        "host": target.host, "port": target.port, "user": target.user,
        "dbname": target.database, "sslmode": target.sslmode, "connect_timeout": 5,
        "application_name": "accord policy check"}
    if target.password:
        params["password"] = target.password
    if target.sslrootcert:
        params["sslrootcert"] = target.sslrootcert
    try:
        with psycopg.connect(**params, autocommit=True) as conn:
            row = conn.execute(
                "SELECT rolsuper, rolcreaterole, rolbypassrls, rolreplication FROM pg_roles "
                "WHERE rolname = current_user").fetchone()
            predefined = {r for (r,) in conn.execute(  # by oid: a name it lacks is no error
                "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s) "
                "AND pg_has_role(current_user, oid, 'MEMBER')", (_PREDEFINED,))}
            # Predefined roles are reported above; pg_database_owner is every database
            # owner's implicitly.
            member_of = sorted(r for (r,) in conn.execute(
                "SELECT rolname FROM pg_roles WHERE rolname <> current_user "
                "AND rolname NOT LIKE 'pg\\_%' AND pg_has_role(current_user, oid, 'MEMBER')"))
    except psycopg.Error:
        # libpq's messages may quote the DSN: say only where
        raise UpstreamError("08006", f"resource {spec.name}: cannot connect to "
                                     f"{target.host}:{target.port} as {target.user} to "
                                     f"inspect the shared login") from None
    who = f"resource {spec.name}: the gateway's shared login {target.user}"
    out: list[str] = []
    if row is not None and row[0]:
        out.append(f"{who} is a superuser: a session that gets past the gateway's parser "
                   f"can run programs as the server's OS user")
    else:
        if row is not None and row[1]:
            out.append(f"{who} has CREATEROLE: a session could grant itself any role")
        if row is not None and row[2]:
            out.append(f"{who} has BYPASSRLS: row-level security does not apply to it")
        if row is not None and row[3]:
            out.append(f"{who} has REPLICATION: it can read every table's changes "
                       f"(logical replication slots) and stream the whole cluster")
        for roles, why in PREDEFINED_RISKS:
            held = [r for r in roles if r in predefined]
            if held:
                out.append(f"{who} is a member of {', '.join(held)}: {why}")
    beyond = [r for r in member_of if r not in groups]
    if beyond or len([r for r in member_of if r in groups]) > 1:
        out.append(f"{who} is a member of {', '.join(member_of)}: every grant on "
                   f"{spec.name} has it as its ceiling (RESET ROLE reaches it); provision the "
                   f"roles (provision.type postgres) so that the gateway logs in per role")
    return out


def target_for(spec: ResourceSpec, role: str, env: Mapping[str, str] | None = None,
               secrets: SecretBox | None = None) -> Target:
    """Where and as whom to connect for a grant of `role` on `spec` (raises UpstreamError).

    Without `secrets` the gateway login's password cannot be derived: only shared
    credentials are possible then (what `accord policy check` inspects)."""
    env = os.environ if env is None else env
    g = spec.gateway
    provision = spec.provision if isinstance(spec.provision, PostgresTarget) else None
    shared = g is not None and bool(g.dsn_env or g.dsn_file)
    try:
        if shared:
            assert g is not None
            dsn = admin_dsn(PostgresTarget(type="postgres", dsn_env=g.dsn_env,
                                           dsn_file=g.dsn_file), env)
        elif provision is not None and role in provision.roles:
            # Where the server is; the login is the gateway's own for the role (below).
            dsn = admin_dsn(provision, env)
        elif provision is not None:
            raise UpstreamError("08001", unserved_role(spec.name, role))
        else:
            raise UpstreamError("08001", f"resource {spec.name} has no upstream DSN")
        params = conninfo_to_dict(dsn)
    except ConnectorError as exc:
        raise UpstreamError("08001", str(exc)) from None
    except psycopg.Error:
        raise UpstreamError("08001", f"resource {spec.name}: the upstream DSN is not a valid "
                                     f"connection string") from None
    # libpq connects to hostaddr when given (host then only names the server for TLS).
    host = str(params.get("hostaddr") or params.get("host")
               or "/var/run/postgresql").split(",")[0]
    port = int(str(params.get("port") or 5432).split(",")[0])
    user = str(params.get("user") or "postgres")
    password = str(params.get("password") or "")
    database = (g.database if g is not None and g.database else None) \
        or (provision.database if provision is not None else None) \
        or str(params.get("dbname") or user)
    base = Target(host=host, port=port, user=user, password=password, database=database,
                  sslmode=str(params.get("sslmode") or "prefer"),
                  sslrootcert=str(params["sslrootcert"]) if params.get("sslrootcert") else None)
    if uses_gateway_login(spec, role):
        if secrets is None:  # the admin DSN's login must never stand in for it
            raise UpstreamError("08001", f"resource {spec.name}: the gateway's login for role "
                                         f"{role} needs Accord's secrets key")
        login = gateway_login_name(spec.name, role)
        return replace(base, user=login, gateway_login=role,
                       password=secrets.derive(f"postgres gateway login {login}"))
    set_role = g.set_role if g is not None and g.set_role is not None else \
        (provision is not None and role in provision.roles)
    return replace(base, role=group_name(spec.name, role)) if set_role else base


def _client_context(target: Target) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=target.sslrootcert)
    if target.sslmode in ("require", "prefer", "allow"):
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # libpq's meaning of require/prefer: no verification
    elif target.sslmode == "verify-ca":
        ctx.check_hostname = False
    return ctx


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass
class Upstream:
    link: Link
    params: dict[str, str]
    pid: int
    secret: bytes


async def _open(target: Target) -> Link:
    loop = asyncio.get_running_loop()
    if target.unix_socket:
        _, link = await loop.create_unix_connection(Link, target.unix_socket)
    else:
        _, link = await loop.create_connection(Link, target.host, target.port)
    if target.sslmode in ("disable", "allow") or target.unix_socket:
        return link
    link.write(pq.ssl_request())
    answer = await link.read_exactly(1)
    if answer == b"S":
        if link.buffered:
            raise UpstreamError("08P01", "upstream sent data before the TLS handshake")
        assert link.transport is not None
        transport = await loop.start_tls(link.transport, link, _client_context(target),
                                         server_hostname=target.host)
        link.transport = cast(asyncio.Transport, transport)
    elif answer != b"N" or target.sslmode != "prefer":
        raise UpstreamError("08001", "the upstream server does not offer TLS, which its "
                                     f"sslmode={target.sslmode} requires")
    return link


async def connect(target: Target, startup: Mapping[str, str]) -> Upstream:
    """Log in upstream and SET ROLE; returns the ready connection (raises UpstreamError)."""
    return await session.log_in(_connect(target, startup), pq.ProtocolError)


async def _connect(target: Target, startup: Mapping[str, str]) -> Upstream:
    link = await _open(target)
    ok = False
    try:
        params = {"user": target.user, "database": target.database}
        params.update({k: v for k, v in startup.items() if k in PASSED_PARAMS})
        params.update(PINNED_SETTINGS)  # the server reads text as the gateway's parser does
        link.write(pq.startup_message(params))
        status: dict[str, str] = {}
        pid, secret = 0, b""
        scram: ScramClient | None = None
        scram_verified = False
        while True:
            kind, body = await pq.read_message(link, 1 << 20)
            if kind == ord("R"):
                code, rest = pq.parse_auth(body)
                if code == pq.AUTH_OK:
                    if scram is not None and not scram_verified:  # never proved it knows us
                        raise UpstreamError("28000", "upstream ended SCRAM without proving "
                                                     "the server's signature")
                    continue
                if code == pq.AUTH_CLEARTEXT:
                    link.write(pq.password_message(target.password.encode()))
                elif code == pq.AUTH_MD5:
                    link.write(pq.password_message(md5_password(target.user, target.password,
                                                                rest[:4])))
                elif code == pq.AUTH_SASL:
                    if MECHANISM not in pq.sasl_mechanisms(rest):
                        raise UpstreamError("28000", "upstream offers no SASL mechanism the "
                                                     "gateway supports")
                    scram = ScramClient(target.password)
                    link.write(pq.sasl_initial_response(MECHANISM, scram.first()))
                elif code == pq.AUTH_SASL_CONTINUE and scram is not None:
                    link.write(pq.sasl_response(scram.final(rest)))
                elif code == pq.AUTH_SASL_FINAL and scram is not None:
                    scram.verify(rest)
                    scram_verified = True
                else:
                    raise UpstreamError("28000", f"upstream asks for an authentication "
                                                 f"method the gateway does not support ({code})")
            elif kind == ord("S"):
                name, value = pq.parse_parameter_status(body)
                status[name] = value
            elif kind == ord("K"):
                pid, secret = pq.parse_backend_key(body)
            elif kind == ord("E"):
                fields = pq.parse_fields(body)
                log.warning("gateway: upstream %s:%s refused the login of %s: %s %s",
                            target.host, target.port, target.user, fields.get("C"),
                            fields.get("M"))
                raise UpstreamError("08004", "the database behind this resource refused the "
                                             "gateway's login (see the gateway's log)",
                                    server_code=fields.get("C"))
            elif kind == ord("Z"):
                break
            # NoticeResponse, NegotiateProtocolVersion: nothing to do
        if target.role:
            link.write(pq.query(f"SET ROLE {quote_ident(target.role)}"))
            failure: dict[str, str] | None = None
            while True:
                kind, body = await pq.read_message(link, 1 << 20)
                if kind == ord("E"):
                    failure = pq.parse_fields(body)
                elif kind == ord("S"):
                    name, value = pq.parse_parameter_status(body)
                    status[name] = value
                elif kind == ord("Z"):
                    break
            if failure is not None:
                log.warning("gateway: SET ROLE %s failed upstream: %s", target.role,
                            failure.get("M"))
                raise UpstreamError("28000", f"the gateway cannot take the role {target.role} "
                                             f"upstream: {failure.get('M', '')}")
        ok = True
        return Upstream(link, status, pid, secret)
    except AuthError as exc:
        raise UpstreamError("28000", f"upstream authentication failed: {exc}") from None
    finally:
        if not ok:
            link.close()


async def cancel(target: Target, pid: int, secret: bytes) -> None:
    """Ask the upstream server to cancel what the backend `pid` is running."""
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            link = await _open(target)
            link.write(pq.cancel_request(pid, secret))
            try:
                await link.read_exactly(1)  # the server closes the connection when done
            except Closed:
                pass
            finally:
                link.close()
    except (OSError, Closed, TimeoutError, UpstreamError, pq.ProtocolError) as exc:
        log.warning("gateway: cancel request upstream failed: %s", exc)
