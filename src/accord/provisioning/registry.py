"""One connector per provisioned resource, built from accord.yaml and the environment."""

from __future__ import annotations

import os
import threading

from accord.provisioning.base import Connector, ConnectorError
from accord.spec.resources import MariaDBTarget, PostgresTarget, ResourceSpec, WebhookTarget


class Connectors:
    """Connectors by resource name, created on first use and reused."""

    def __init__(self, resources: dict[str, ResourceSpec], env: dict[str, str] | None = None):
        self.resources = resources
        self.env = dict(os.environ if env is None else env)
        self._made: dict[str, Connector] = {}
        self._lock = threading.Lock()

    def provisioned(self, resource: str) -> bool:
        spec = self.resources.get(resource)
        return spec is not None and spec.provision is not None

    def kind(self, resource: str) -> str:
        """The kind of `resource`'s target (postgres, mariadb, webhook), or `none`."""
        spec = self.resources.get(resource)
        target = spec.provision if spec is not None else None
        return str(getattr(target, "type", None) or "none")

    def get(self, resource: str) -> Connector:
        with self._lock:
            if resource not in self._made:
                self._made[resource] = self._build(resource)
            return self._made[resource]

    def _build(self, resource: str) -> Connector:
        spec = self.resources.get(resource)
        if spec is None or spec.provision is None:
            raise ConnectorError(f"{resource} has no provisioning target", retryable=False)
        target = spec.provision
        # A connector module brings its database driver (psycopg, pymysql): load only those
        # that the policy's targets use.
        if isinstance(target, PostgresTarget):
            from accord.provisioning import postgres

            return postgres.PostgresConnector(spec, target, postgres.admin_dsn(target, self.env))
        if isinstance(target, MariaDBTarget):
            from accord.provisioning import mariadb

            return mariadb.MariaDBConnector(spec, target, mariadb.admin_dsn(target, self.env))
        if isinstance(target, WebhookTarget):
            from accord.provisioning import webhook

            secret = self.env.get(target.secret_env, "")
            if not secret:
                raise ConnectorError(f"{resource}: set {target.secret_env} to the webhook's "
                                     "HMAC secret", retryable=False)
            return webhook.WebhookConnector(spec, target, secret.encode())
        raise ConnectorError(f"{resource}: unsupported target", retryable=False)

    def close(self) -> None:
        with self._lock:
            for connector in self._made.values():
                connector.close()
            self._made.clear()
