"""Where a client reaches the gateway, whatever its protocol: the host and port it is told
(`gateway.public_host`, a listener's `public_port`) and how it should use TLS."""

from __future__ import annotations

from dataclasses import dataclass

from accord.spec.gateway import GatewaySpec


@dataclass(frozen=True)
class Address:
    """What `accord connect` tells a database client (a protocol adds its DSN and command)."""

    host: str
    port: int
    database: str  # the resource
    user: str
    sslmode: str  # require | prefer | disable (PostgreSQL's words, for every protocol)


def reach(spec: GatewaySpec, listen: tuple[str, int], public_port: int | None
          ) -> tuple[str, int, str]:
    """(host, port, sslmode) for a listener at `listen`."""
    host, port = listen
    if spec.public_host:
        host = spec.public_host
    elif host in ("0.0.0.0", "::", ""):  # noqa: S104 - a wildcard listen address is no host
        host = "127.0.0.1"
    sslmode = "require" if spec.tls.required else ("prefer" if spec.tls.cert else "disable")
    return host, public_port or port, sslmode
