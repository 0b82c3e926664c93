"""The gateway's connection to a resource's PostgreSQL: where, as whom, and the login itself.

The gateway logs in with the resource's own credentials: `resources[].gateway.dsn_env` /
`dsn_file`, else the DSN of its postgres provision target (read the way provisioning reads
it). When the resource provisions the granted role (`provision.roles.<role>`), the session
then runs `SET ROLE accord_<resource>_<role>`, the group role provisioning grants, so the
database enforces that role's privileges; `gateway.set_role` overrides the default.
Authentication is whatever the server asks: trust, cleartext, MD5 or SCRAM-SHA-256.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import cast

import psycopg
from psycopg.conninfo import conninfo_to_dict

from accord.config import PostgresTarget, ResourceSpec
from accord.gateway import protocol as pq
from accord.gateway.link import Closed, Link
from accord.gateway.scram import MECHANISM, AuthError, ScramClient, md5_password
from accord.provisioning.base import ConnectorError
from accord.provisioning.postgres import admin_dsn, group_name

log = logging.getLogger("accord.gateway")
CONNECT_TIMEOUT = 10.0
# Client startup parameters passed upstream; anything else (notably `options`, which can
# set `role`) is dropped.
PASSED_PARAMS = ("application_name", "client_encoding", "DateStyle", "TimeZone",
                 "extra_float_digits", "IntervalStyle", "datestyle", "timezone",
                 "intervalstyle")


class UpstreamError(Exception):
    """The upstream database could not be reached or refused the gateway."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    user: str
    password: str = field(repr=False)
    database: str
    sslmode: str = "prefer"
    sslrootcert: str | None = None
    role: str | None = None  # SET ROLE to this after login

    @property
    def unix_socket(self) -> str | None:
        return f"{self.host}/.s.PGSQL.{self.port}" if self.host.startswith("/") else None


def target_for(spec: ResourceSpec, role: str, env: Mapping[str, str] | None = None) -> Target:
    """Where and as whom to connect for a grant of `role` on `spec` (raises UpstreamError)."""
    env = os.environ if env is None else env
    g = spec.gateway
    provision = spec.provision if isinstance(spec.provision, PostgresTarget) else None
    try:
        if g is not None and (g.dsn_env or g.dsn_file):
            dsn = admin_dsn(PostgresTarget(type="postgres", dsn_env=g.dsn_env,
                                           dsn_file=g.dsn_file), env)
        elif provision is not None:
            dsn = admin_dsn(provision, env)
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
    database = (g.database if g is not None and g.database else None) \
        or (provision.database if provision is not None else None) \
        or str(params.get("dbname") or user)
    set_role = g.set_role if g is not None and g.set_role is not None else \
        (provision is not None and role in provision.roles)
    return Target(host=host, port=port, user=user, password=str(params.get("password") or ""),
                  database=database, sslmode=str(params.get("sslmode") or "prefer"),
                  sslrootcert=str(params["sslrootcert"]) if params.get("sslrootcert") else None,
                  role=group_name(spec.name, role) if set_role else None)


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
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            return await _connect(target, startup)
    except (OSError, Closed, TimeoutError) as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (
            "connection closed" if isinstance(exc, Closed) else exc.strerror or str(exc))
        raise UpstreamError("08006", f"the database behind this resource is unavailable "
                                     f"({reason})") from None
    except pq.ProtocolError as exc:
        raise UpstreamError("08P01", f"upstream protocol error: {exc}") from None


async def _connect(target: Target, startup: Mapping[str, str]) -> Upstream:
    link = await _open(target)
    ok = False
    try:
        params = {"user": target.user, "database": target.database}
        params.update({k: v for k, v in startup.items() if k in PASSED_PARAMS})
        link.write(pq.startup_message(params))
        status: dict[str, str] = {}
        pid, secret = 0, b""
        scram: ScramClient | None = None
        scram_verified = False
        while True:
            kind, body = await link.read_message(1 << 20)
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
                log.warning("gateway: upstream %s:%s refused the login: %s %s", target.host,
                            target.port, fields.get("C"), fields.get("M"))
                raise UpstreamError("08004", "the database behind this resource refused the "
                                             "gateway's login (see the gateway's log)")
            elif kind == ord("Z"):
                break
            # NoticeResponse, NegotiateProtocolVersion: nothing to do
        if target.role:
            link.write(pq.query(f"SET ROLE {quote_ident(target.role)}"))
            failure: dict[str, str] | None = None
            while True:
                kind, body = await link.read_message(1 << 20)
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
