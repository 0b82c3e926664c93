"""What a PostgreSQL client needs to reach a resource through the gateway: host, port,
database (the resource), user and sslmode, as a DSN and a psql command."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

from accord.gateway.address import Address, reach
from accord.spec.gateway import GatewaySpec


@dataclass(frozen=True)
class ConnectionInfo(Address):
    client: str = "psql"

    def dsn(self, token: str) -> str:
        return (f"postgresql://{quote(self.user, safe='')}:{quote(token, safe='')}@"
                f"{self.host}:{self.port}/{quote(self.database, safe='')}"
                f"?sslmode={self.sslmode}")

    def command(self, token: str) -> str:
        return self.psql(token)

    def psql(self, token: str) -> str:
        return (f"PGPASSWORD='{token}' psql 'host={self.host} port={self.port} "
                f"dbname={self.database} user={self.user} sslmode={self.sslmode}'")


def connection_info(spec: GatewaySpec, *, user: str, resource: str) -> ConnectionInfo:
    host, port, sslmode = reach(spec, spec.host_port, spec.public_port)
    return ConnectionInfo(host, port, resource, user, sslmode)
