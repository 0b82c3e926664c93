"""The gateway a process runs: the PostgreSQL server, with the MySQL front beside it when
`gateway.mysql` is configured and the SSH front when `gateway.ssh` is. Imported by the
entry points only (the protocols' parsers load with it)."""

from __future__ import annotations

import socket
from typing import Any, Protocol

from accord.gateway.server import GatewayServer
from accord.spec.gateway import GatewaySpec
from accord.state import AppState


def build(st: AppState, spec: GatewaySpec, *, mysql_listen: tuple[str, int] | None = None,
          ssh_listen: tuple[str, int] | None = None, **kw: Any) -> GatewayServer:
    """One gateway process's server with every protocol `spec` configures (`kw`: the
    server's own arguments, `listen`, `inbox`, `index`, `env`)."""
    from accord.gateway.postgres.proxy import PostgresGateway

    gw = PostgresGateway(st, spec, **kw)
    if spec.mysql is not None:
        from accord.gateway.mysql.proxy import MySQLFront

        gw.add_front(MySQLFront(gw, mysql_listen or spec.mysql.host_port,
                                spec.mysql.server_version))
    if spec.ssh is not None:
        from accord.gateway.ssh.proxy import SSHFront

        gw.add_front(SSHFront(gw, ssh_listen or spec.ssh.host_port, spec.ssh))
    return gw


def listeners(spec: GatewaySpec, host: str, port: int) -> list[socket.socket]:
    """The prefork parent's listening sockets: PostgreSQL's, and MySQL's when configured."""
    from accord.gateway import prefork

    out = prefork.listen(host, port)
    if spec.mysql is not None:
        out += prefork.listen(*spec.mysql.host_port)
    if spec.ssh is not None:
        out += prefork.listen(*spec.ssh.host_port)
    return out


class ConnectionInfo(Protocol):
    """Where a client reaches a resource through the gateway (a protocol's `connect`)."""

    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def database(self) -> str: ...
    @property
    def user(self) -> str: ...
    @property
    def sslmode(self) -> str: ...
    @property
    def client(self) -> str: ...  # the command-line client `command` runs

    def dsn(self, token: str) -> str: ...

    def command(self, token: str) -> str: ...


def connection_info(spec: GatewaySpec, *, user: str, resource: str,
                    protocol: str = "postgres") -> ConnectionInfo | None:
    """How `user` reaches `resource` over its protocol; None when the gateway does not serve
    that protocol (`gateway.mysql` unset for a MySQL resource, `gateway.ssh` for SSH)."""
    if protocol == "ssh":
        if spec.ssh is None:
            return None
        from accord.gateway.ssh import connect as ssh_connect

        return ssh_connect.connection_info(spec, user=user, resource=resource)
    if protocol == "mysql":
        if spec.mysql is None:
            return None
        from accord.gateway.mysql import connect as mysql_connect

        return mysql_connect.connection_info(spec, user=user, resource=resource)
    from accord.gateway.postgres import connect as pg_connect

    return pg_connect.connection_info(spec, user=user, resource=resource)
