"""The gateway's connection to a resource's MySQL or MariaDB server: where, as whom, the login.

Whose login, as for PostgreSQL (docs/gateway.md, What confines a session):

* A role the resource provisions (`provision.roles.<role>` of a mariadb target, and no
  `gateway.dsn_env`/`dsn_file`): the gateway's own login for that role
  (`provisioning.mariadb.gateway_login_name`), holding that role's MariaDB role as its
  default and nothing else, with a password derived from Accord's secrets key; the gateway
  makes it exist (with the provision target's admin DSN) before its first session. `SET
  ROLE NONE` leaves it with less, never more.
* Otherwise the shared credentials of `gateway.dsn_env`/`dsn_file` (a `mysql://` URL), then
  `SET ROLE` to the role's MariaDB role when `gateway.set_role` says so.
* Never the provision target's admin DSN.

Every upstream session clears the `sql_mode` flags that change how statement text is
tokenized (`PIN_SQL_MODE`), so that the gateway's parser and the server read the same
bytes alike, and carries the client's character set only when it is one where that holds.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import cast
from urllib.parse import parse_qs, urlsplit

from accord.gateway import session
from accord.gateway.link import Closed, Link
from accord.gateway.mysql import auth
from accord.gateway.mysql import protocol as my
from accord.provisioning.base import ConnectorError
from accord.provisioning.mariadb import (
    admin_dsn,
    connect_args,
    gateway_login_name,
    role_name,
)
from accord.provisioning.secrets import SecretBox
from accord.spec.resources import MariaDBTarget, ResourceSpec

UpstreamError = session.UpstreamError
log = logging.getLogger("accord.gateway")
CONNECT_TIMEOUT = session.CONNECT_TIMEOUT
MAX_LOGIN_PACKET = 1 << 20
# Clear the sql_mode flags that change tokenizing (NO_BACKSLASH_ESCAPES, ANSI_QUOTES and the
# modes that include it), whatever the server's default: the gateway parses text the way a
# server without them reads it. Empty elements in the list are allowed.
PIN_SQL_MODE = (
    "SET SESSION sql_mode = REPLACE(REPLACE(REPLACE(REPLACE(REPLACE(REPLACE(REPLACE(REPLACE("
    "REPLACE(CONCAT(',', @@SESSION.sql_mode, ','), ',NO_BACKSLASH_ESCAPES,', ','), "
    "',ANSI_QUOTES,', ','), ',ANSI,', ','), ',ORACLE,', ','), ',MSSQL,', ','), ',DB2,', ','), "
    "',POSTGRESQL,', ','), ',MAXDB,', ','), ',ANSI,', ',')")


@dataclass(frozen=True)
class Target(session.Target):
    unix_socket: str | None = None
    ssl_ca: str | None = None  # verify the server with it (else TLS when offered, unverified)
    ssl_required: bool = False


@dataclass
class Upstream:
    link: Link
    connection_id: int
    capabilities: int
    version: str


def _dsn_target(dsn: str, database: str | None) -> Target:
    try:
        args = connect_args(dsn)
    except ConnectorError as exc:
        raise UpstreamError("08001", str(exc)) from None
    query = parse_qs(urlsplit(dsn).query)
    return Target(host=args["host"], port=int(args["port"]), user=args["user"],
                  password=args["password"], database=database or args["database"] or "",
                  unix_socket=args.get("unix_socket"), ssl_ca=args.get("ssl_ca"),
                  ssl_required="ssl_ca" in query)


def uses_gateway_login(spec: ResourceSpec, role: str) -> bool:
    return session.uses_gateway_login(spec, role, MariaDBTarget)


def target_for(spec: ResourceSpec, role: str, env: Mapping[str, str] | None = None,
               secrets: SecretBox | None = None) -> Target:
    """Where and as whom to connect for a grant of `role` on `spec` (raises UpstreamError)."""
    env = os.environ if env is None else env
    g = spec.gateway
    provision = spec.provision if isinstance(spec.provision, MariaDBTarget) else None
    database = (g.database if g is not None and g.database else None) \
        or (provision.database if provision is not None and provision.database else None)
    if g is not None and (g.dsn_env or g.dsn_file):
        try:
            dsn = admin_dsn(MariaDBTarget(type="mariadb", dsn_env=g.dsn_env,
                                          dsn_file=g.dsn_file), env)
        except ConnectorError as exc:
            raise UpstreamError("08001", str(exc)) from None
        target = _dsn_target(dsn, database)
        set_role = g.set_role if g.set_role is not None else \
            (provision is not None and role in provision.roles)
        if set_role:
            return Target(**{**target.__dict__, "role": role_name(spec.name, role)})
        return target
    if provision is None:
        raise UpstreamError("08001", f"resource {spec.name} has no upstream DSN")
    if role not in provision.roles:
        raise UpstreamError("08001", f"resource {spec.name}: role {role} is not provisioned "
                                     f"(not under provision.roles) and the resource has no "
                                     f"shared gateway credentials; the provision target's "
                                     f"admin credentials never serve a session")
    if secrets is None:
        raise UpstreamError("08001", f"resource {spec.name}: the gateway's login for role "
                                     f"{role} needs Accord's secrets key")
    try:
        server = _dsn_target(admin_dsn(provision, env), database)
    except ConnectorError as exc:
        raise UpstreamError("08001", str(exc)) from None
    login = gateway_login_name(spec.name, role)
    return Target(host=server.host, port=server.port, user=login,
                  password=secrets.derive(f"mysql gateway login {spec.name} {login}"),
                  database=database or "", unix_socket=server.unix_socket,
                  ssl_ca=server.ssl_ca, ssl_required=server.ssl_required, gateway_login=role)


def _context(target: Target) -> ssl.SSLContext:
    if target.ssl_ca:
        ctx = ssl.create_default_context(cafile=target.ssl_ca)
        ctx.check_hostname = False  # the CA names the server; hosts are often IPs here
        return ctx
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # as MySQL clients' ssl-mode=PREFERRED: unverified
    return ctx


async def _open(target: Target) -> Link:
    loop = asyncio.get_running_loop()
    if target.unix_socket:
        _, link = await loop.create_unix_connection(Link, target.unix_socket)
    else:
        _, link = await loop.create_connection(Link, target.host, target.port)
    return link


@dataclass
class ClientSide:
    """What the client asked for that the upstream session must match."""

    capabilities: int
    charset: int
    attrs: dict[str, str] = field(default_factory=dict)
    local_files: bool = False  # the role may send files (LOAD DATA LOCAL, gateway.allow)


async def connect(target: Target, client: ClientSide) -> Upstream:
    """Log in upstream (and SET ROLE, pin sql_mode); returns the ready connection."""
    return await session.log_in(_connect(target, client), (my.ProtocolError, ValueError))


async def _connect(target: Target, client: ClientSide) -> Upstream:
    link = await _open(target)
    ok = False
    try:
        _, payload = await my.read_packet(link, MAX_LOGIN_PACKET)
        hello = my.parse_greeting(payload)
        server = hello.capabilities
        if not server & my.CLIENT_PROTOCOL_41:
            raise UpstreamError("08001", "the upstream server does not speak protocol 4.1")
        missing = client.capabilities & my.STREAM_CAPABILITIES & ~server
        if missing:
            raise UpstreamError("08001", f"the upstream server lacks capabilities the client "
                                         f"uses (0x{missing:x})")
        caps = (client.capabilities & my.GATEWAY_CAPABILITIES & server) \
            | my.CLIENT_PROTOCOL_41 | my.CLIENT_SECURE_CONNECTION | my.CLIENT_LONG_PASSWORD
        caps &= ~(my.CLIENT_SSL | my.CLIENT_LOCAL_FILES | my.CLIENT_COMPRESS)
        if client.local_files:
            caps |= client.capabilities & server & my.CLIENT_LOCAL_FILES
        caps |= server & (my.CLIENT_PLUGIN_AUTH | my.CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
                          | my.CLIENT_CONNECT_ATTRS)
        if target.database:
            caps |= my.CLIENT_CONNECT_WITH_DB
        else:
            caps &= ~my.CLIENT_CONNECT_WITH_DB
        seq = 1
        secure = bool(target.unix_socket)
        if server & my.CLIENT_SSL and not target.unix_socket:
            link.write(my.packet(seq, my.ssl_request(caps, client.charset)))
            seq += 1
            assert link.transport is not None
            transport = await asyncio.get_running_loop().start_tls(
                link.transport, link, _context(target), server_hostname=target.host)
            link.transport = cast(asyncio.Transport, transport)
            secure = True
        elif target.ssl_required:
            raise UpstreamError("08001", "the upstream server does not offer TLS, which its "
                                         "DSN (ssl_ca) requires")
        password = target.password.encode()
        plugin, salt = hello.plugin, hello.salt
        link.write(my.packet(seq, my.handshake_response(
            capabilities=caps, charset=client.charset, user=target.user,
            auth=_answer(plugin, password, salt, secure), database=target.database,
            plugin=plugin, attrs={"program_name": "accord-gateway", **{
                k: v for k, v in client.attrs.items() if not k.startswith("_")}})))
        while True:
            seq, payload = await my.read_packet(link, MAX_LOGIN_PACKET)
            seq += 1
            first = payload[:1]
            if first == b"\x00":
                break
            if first == b"\xff":
                err = my.parse_err(payload)
                log.warning("gateway: upstream %s:%s refused the login of %s: (%d) %s",
                            target.host, target.port, target.user, err.errno, err.message)
                raise UpstreamError("08004", "the database behind this resource refused the "
                                             "gateway's login (see the gateway's log)",
                                    server_code=err.errno)
            if first == b"\xfe":  # AuthSwitchRequest
                name, pos = my.read_nul(payload, 1)
                plugin, salt = name.decode("ascii", "replace"), payload[pos:].rstrip(b"\0")
                link.write(my.packet(seq, _answer(plugin, password, salt, secure)))
            elif first == b"\x01" and plugin == my.CACHING_SHA2:  # AuthMoreData
                if payload[1:2] == bytes((auth.FAST_AUTH_OK,)):
                    continue
                if payload[1:2] != bytes((auth.FULL_AUTH,)):
                    raise UpstreamError("08P01", "unexpected caching_sha2_password data")
                if secure:
                    link.write(my.packet(seq, password + b"\0"))
                    continue
                link.write(my.packet(seq, auth.REQUEST_PUBLIC_KEY))
                seq, key = await my.read_packet(link, MAX_LOGIN_PACKET)
                if key[:1] != b"\x01":
                    raise UpstreamError("08P01", "the upstream server sent no public key")
                link.write(my.packet(seq + 1, auth.rsa_encrypt(password, salt, key[1:])))
            else:
                raise UpstreamError("08P01", "unexpected packet while logging in upstream")
        for statement in ([f"SET ROLE {quote_ident(target.role)}"] if target.role else []) \
                + [PIN_SQL_MODE]:
            link.write(my.packet(0, bytes((my.COM_QUERY,)) + statement.encode()))
            _, payload = await my.read_packet(link, MAX_LOGIN_PACKET)
            if payload[:1] == b"\xff":
                err = my.parse_err(payload)
                raise UpstreamError("08004", f"the gateway's session setup failed upstream: "
                                             f"({err.errno}) {err.message}")
        ok = True
        return Upstream(link, hello.connection_id, caps, hello.version)
    finally:
        if not ok:
            link.close()


def _answer(plugin: str, password: bytes, salt: bytes, secure: bool) -> bytes:
    if plugin == my.NATIVE:
        return auth.native_scramble(password, salt)
    if plugin == my.CACHING_SHA2:
        return auth.sha2_scramble(password, salt)
    if plugin == my.CLEAR:
        if not secure:
            raise UpstreamError("08001", "the upstream server asks for the password in clear "
                                         "over a connection without TLS; refused")
        return password + b"\0"
    raise UpstreamError("08001", f"the upstream server asks for an authentication plugin "
                                 f"the gateway does not support ({plugin[:40]})")


def quote_ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


async def kill(target: Target, connection_id: int) -> None:
    """End the upstream session `connection_id` and what it runs (KILL CONNECTION, from a
    new connection as the same login: a login may kill its own sessions)."""
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            up = await _connect(target, ClientSide(my.CLIENT_PROTOCOL_41, 45))
            try:
                up.link.write(my.packet(0, bytes((my.COM_QUERY,))
                                        + f"KILL CONNECTION {int(connection_id)}".encode()))
                await my.read_packet(up.link, MAX_LOGIN_PACKET)
            finally:
                up.link.write(my.packet(0, bytes((my.COM_QUIT,))))
                up.link.close()
    except (OSError, Closed, TimeoutError, UpstreamError, my.ProtocolError, ValueError) as exc:
        log.warning("gateway: killing upstream session %d failed: %s", connection_id, exc)
