"""What an SSH client needs to reach a resource through the gateway: an `ssh` command line
logging in as USER+RESOURCE, the connection token being the password."""

from __future__ import annotations

from dataclasses import dataclass

from accord.spec.gateway import GatewaySpec


@dataclass(frozen=True)
class ConnectionInfo:
    host: str
    port: int
    database: str  # the resource
    user: str  # USER+RESOURCE, the login name the gateway reads both from
    sslmode: str = "ssh"  # the channel is SSH's own encryption
    client: str = "ssh"

    def dsn(self, token: str) -> str:
        """An ssh URI (the token is not in it: ssh asks for it as the password)."""
        return f"ssh://{self.user}@{self.host}:{self.port}"

    def command(self, token: str) -> str:
        return (f"ssh -p {self.port} -o PreferredAuthentications=password "
                f"{self.user}@{self.host}")


def login_name(user: str, resource: str) -> str:
    return f"{user}+{resource}"


def connection_info(spec: GatewaySpec, *, user: str, resource: str) -> ConnectionInfo:
    assert spec.ssh is not None
    host, port = spec.ssh.host_port
    if spec.public_host:
        host = spec.public_host
    elif host in ("0.0.0.0", "::", ""):  # noqa: S104 - a wildcard listen address is no host
        host = "127.0.0.1"
    return ConnectionInfo(host, spec.ssh.public_port or port, resource,
                          login_name(user, resource))
