"""Webhook connector: tells an HTTP endpoint to grant or revoke, signed with HMAC-SHA256.

Grant and revoke POST one JSON object to the target URL:

    {"action": "grant" | "revoke", "grant_id": 17, "user": "alice", "resource": "orders-db",
     "role": "read", "ends_at": "2025-01-01T12:00:00Z", "idempotency_key": "grant-17-grant"}

with the headers `Idempotency-Key` (the same key, stable across retries of one action),
`X-Accord-Timestamp` (unix seconds) and `X-Accord-Signature: sha256=<hex>`, the
HMAC-SHA256 under the shared secret of `<timestamp>.<body>` — Accord's one scheme
(`accord.signing`). Receivers check it with `accord.signing.verify`, which also refuses
stale timestamps, and drop repeated idempotency keys: Accord retries blindly.

A 2xx answer means done; its JSON may carry a `connection` object (host, port, ...)
that is shown to the grantee. `granted()` GETs the same URL (signed over an empty body)
and expects `{"grants": [{"user": ..., "role": ...}, ...]}`; an endpoint answering 404
or 405 cannot list, and then `granted()` reports nothing.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

import httpx

from accord import signing
from accord.provisioning.base import ConnectorError, GrantResult, GrantSpec, Health
from accord.spec.resources import ResourceSpec, WebhookTarget

CONNECTION_FIELDS = frozenset({"host", "port", "database", "user", "url"})
log = logging.getLogger("accord.provisioning.webhook")

IDEMPOTENCY_HEADER = "Idempotency-Key"


def rfc3339(ts: datetime) -> str:
    """UTC, `Z`-suffixed; naive datetimes are taken to be UTC already."""
    utc = ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
    return utc.isoformat().replace("+00:00", "Z")


class WebhookConnector:
    """Grants and revokes by calling the resource's HTTP endpoint."""

    kind = "webhook"

    def __init__(self, resource: ResourceSpec, target: WebhookTarget, secret: bytes,
                 transport: httpx.BaseTransport | None = None) -> None:
        if not secret:
            raise ConnectorError(f"webhook {resource.name}: the HMAC secret is empty",
                                 retryable=False)
        self.resource = resource
        self.target = target
        self._name = resource.name
        self._secret = secret
        self._http = httpx.Client(timeout=target.timeout.total_seconds(), transport=transport,
                                  follow_redirects=False)

    def __repr__(self) -> str:
        return f"WebhookConnector(resource={self._name!r})"

    # -- the Connector interface

    def grant(self, spec: GrantSpec) -> GrantResult:
        response = self._post("grant", spec)
        connection: dict[str, str | int] = {}
        payload = _json(response)
        found = payload.get("connection") if isinstance(payload, dict) else None
        if isinstance(found, dict):
            # Only fields that say where to connect: whatever else a target returns may be
            # a secret, and connection info goes into the ledger and to approvers.
            connection = {str(k): v for k, v in found.items()
                          if k in CONNECTION_FIELDS
                          and isinstance(v, str | int) and not isinstance(v, bool)}
        log.info("webhook %s: granted %s to %s (grant %d)", self._name, spec.role, spec.user,
                 spec.grant_id)
        return GrantResult(login=spec.user, connection=connection, secret=None)

    def revoke(self, spec: GrantSpec) -> None:
        self._post("revoke", spec)
        log.info("webhook %s: revoked %s from %s (grant %d)", self._name, spec.role,
                 spec.user, spec.grant_id)

    def granted(self) -> set[tuple[str, str]]:
        response = self._send("GET", b"", "listing grants", accept=(404, 405))
        if response.status_code in (404, 405):
            return set()  # the endpoint cannot list
        payload = _json(response)
        grants = payload.get("grants") if isinstance(payload, dict) else None
        if not isinstance(grants, list):
            raise ConnectorError(f"webhook {self._name}: listing grants: the answer has no "
                                 "\"grants\" list", retryable=True)
        out: set[tuple[str, str]] = set()
        for item in grants:
            if not isinstance(item, dict):
                continue
            user, role = item.get("user"), item.get("role")
            if not isinstance(user, str) or not isinstance(role, str):
                continue
            if item.get("resource", self._name) != self._name:
                continue  # an endpoint serving several resources
            out.add((user, role))
        return out

    def health(self) -> Health:
        """Reachable and answering a signed GET with something other than a 5xx."""
        try:
            response = self._send("GET", b"", "health check", accept=range(100, 500))
        except ConnectorError as exc:
            return Health(ok=False, detail=str(exc))
        return Health(ok=True, detail=f"HTTP {response.status_code}")

    def close(self) -> None:
        self._http.close()

    # -- helpers

    def _post(self, action: str, spec: GrantSpec) -> httpx.Response:
        if spec.resource != self._name:
            raise ConnectorError(f"webhook {self._name}: got a spec for resource "
                                 f"{spec.resource!r}", retryable=False)
        body = json.dumps({
            "action": action,
            "grant_id": spec.grant_id,
            "user": spec.user,
            "resource": spec.resource,
            "role": spec.role,
            "ends_at": rfc3339(spec.ends_at),
            "idempotency_key": spec.idempotency_key,
        }, separators=(",", ":")).encode()
        return self._send("POST", body, action,
                          extra={IDEMPOTENCY_HEADER: spec.idempotency_key,
                                 "Content-Type": "application/json"})

    def _send(self, method: str, body: bytes, what: str, *,
              extra: dict[str, str] | None = None,
              accept: range | tuple[int, ...] = ()) -> httpx.Response:
        headers = {**signing.headers(self._secret, body), "Accept": "application/json",
                   **(extra or {})}
        # Messages name the resource, never the URL: it may carry a token.
        try:
            response = self._http.request(method, self.target.url, content=body or None,
                                          headers=headers)
        except httpx.TimeoutException:
            raise ConnectorError(f"webhook {self._name}: {what}: timed out after "
                                 f"{self.target.timeout.total_seconds():g}s",
                                 retryable=True) from None
        except httpx.UnsupportedProtocol:
            raise ConnectorError(f"webhook {self._name}: {what}: the URL's scheme is not "
                                 "http or https", retryable=False) from None
        except httpx.TransportError as exc:
            raise ConnectorError(f"webhook {self._name}: {what}: {type(exc).__name__}",
                                 retryable=True) from None
        except httpx.InvalidURL:
            raise ConnectorError(f"webhook {self._name}: {what}: the URL is invalid",
                                 retryable=False) from None
        except httpx.HTTPError as exc:  # e.g. an undecodable answer
            raise ConnectorError(f"webhook {self._name}: {what}: {type(exc).__name__}",
                                 retryable=True) from None
        status = response.status_code
        if response.is_success or status in accept:
            return response
        raise ConnectorError(f"webhook {self._name}: {what}: HTTP {status}",
                             retryable=status >= 500 or status == 429)


def _json(response: httpx.Response) -> Any:
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        return None
