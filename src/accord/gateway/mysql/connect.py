"""What a MySQL client needs to reach a resource through the gateway: host, port, database
(the resource), user and TLS, as a DSN and a mariadb command."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

from accord.gateway.address import Address, reach
from accord.spec.gateway import GatewaySpec


@dataclass(frozen=True)
class ConnectionInfo(Address):
    client: str = "mariadb"

    def dsn(self, token: str) -> str:
        mode = {"require": "REQUIRED", "prefer": "PREFERRED"}.get(self.sslmode, "DISABLED")
        return (f"mysql://{quote(self.user, safe='')}:{quote(token, safe='')}@"
                f"{self.host}:{self.port}/{quote(self.database, safe='')}?ssl-mode={mode}")

    def command(self, token: str) -> str:
        """A mariadb command line (the `mysql` client takes the same options but TLS:
        --ssl-mode=REQUIRED or DISABLED)."""
        ssl = "--ssl" if self.sslmode == "require" else (
            "--ssl" if self.sslmode == "prefer" else "--skip-ssl")
        return (f"MYSQL_PWD='{token}' mariadb --host={self.host} --port={self.port} "
                f"--user={self.user} {ssl} {self.database}")


def connection_info(spec: GatewaySpec, *, user: str, resource: str) -> ConnectionInfo:
    assert spec.mysql is not None
    host, port, sslmode = reach(spec, spec.mysql.host_port, spec.mysql.public_port)
    return ConnectionInfo(host, port, resource, user, sslmode)
