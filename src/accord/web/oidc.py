"""OpenID Connect login: authorization code flow with PKCE (RFC 7636), ID token checked.

The browser carries the flow's state, nonce and PKCE verifier in a short-lived cookie
encrypted with the server's secret key, so no table is needed for half-finished logins.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

import httpx
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from accord.provisioning.secrets import SecretBox
from accord.spec.service import OidcSpec

FLOW_COOKIE = "accord_oidc"
FLOW_TTL = 600  # seconds a user has to finish logging in at the provider
ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"]
CLOCK_SKEW = 60


class OidcError(Exception):
    """The login cannot complete; the message is safe to show the user."""


@dataclass(frozen=True)
class Identity:
    username: str
    subject: str
    groups: list[str]
    claims: dict[str, Any]


class Provider:
    """One issuer's discovery document and keys, fetched lazily and cached."""

    def __init__(self, spec: OidcSpec, client: httpx.Client | None = None) -> None:
        self.spec = spec
        self._http = client or httpx.Client(timeout=10)
        self._lock = threading.Lock()
        self._meta: dict[str, Any] | None = None
        self._keys: KeySet | None = None
        self._keys_at = 0.0

    def metadata(self) -> dict[str, Any]:
        with self._lock:
            if self._meta is None:
                url = self.spec.issuer.rstrip("/") + "/.well-known/openid-configuration"
                meta = self._get_json(url)
                if meta.get("issuer") != self.spec.issuer:
                    raise OidcError("the provider's discovery document names another issuer")
                for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
                    if not isinstance(meta.get(key), str):
                        raise OidcError(f"the provider's discovery document lacks {key}")
                self._meta = meta
            return self._meta

    def keys(self, *, refresh: bool = False) -> KeySet:
        with self._lock:
            stale = time.monotonic() - self._keys_at > 3600
            if self._keys is None or stale or refresh:
                assert self._meta is not None
                self._keys = KeySet.import_key_set(
                    self._get_json(self._meta["jwks_uri"]))  # type: ignore[arg-type]
                self._keys_at = time.monotonic()
            return self._keys

    def _get_json(self, url: str) -> dict[str, Any]:
        try:
            r = self._http.get(url)
            r.raise_for_status()
            value = r.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise OidcError(f"the identity provider did not answer ({type(exc).__name__})") \
                from None
        if not isinstance(value, dict):
            raise OidcError("the identity provider sent something that is not JSON")
        return value

    def close(self) -> None:
        self._http.close()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def begin(provider: Provider, *, box: SecretBox, redirect_uri: str,
          next_url: str) -> tuple[str, str]:
    """The provider's authorization URL and the encrypted flow cookie to set."""
    meta = provider.metadata()
    state, nonce, verifier = (secrets.token_urlsafe(32) for _ in range(3))
    challenge = _b64(hashlib.sha256(verifier.encode()).digest())
    params = {
        "response_type": "code", "client_id": provider.spec.client_id,
        "redirect_uri": redirect_uri, "scope": " ".join(provider.spec.scopes),
        "state": state, "nonce": nonce,
        "code_challenge": challenge, "code_challenge_method": "S256",
    }
    flow = json.dumps({"state": state, "nonce": nonce, "verifier": verifier,
                       "redirect_uri": redirect_uri, "next": next_url})
    cookie = box.seal(flow).decode()
    sep = "&" if "?" in meta["authorization_endpoint"] else "?"
    return meta["authorization_endpoint"] + sep + urlencode(params), cookie


def open_flow(cookie: str | None, *, box: SecretBox) -> dict[str, str]:
    if not cookie:
        raise OidcError("the login took too long or cookies are blocked; start again")
    try:
        value: dict[str, str] = json.loads(box.open(cookie.encode(), ttl=FLOW_TTL))
    except ValueError:
        raise OidcError("the login took too long or was tampered with; start again") from None
    return value


def finish(provider: Provider, *, flow: dict[str, str], code: str, state: str,
           client_secret: str | None, now: datetime) -> Identity:
    """Exchange the code, check the ID token (signature, iss, aud, exp, nonce), return who."""
    if not secrets.compare_digest(state.encode(), flow["state"].encode()):
        raise OidcError("the login response does not belong to this browser; start again")
    meta = provider.metadata()
    form = {"grant_type": "authorization_code", "code": code,
            "redirect_uri": flow["redirect_uri"], "code_verifier": flow["verifier"],
            "client_id": provider.spec.client_id}
    auth: tuple[str | bytes, str | bytes] | None = (
        (provider.spec.client_id, client_secret) if client_secret else None)
    try:
        r = (provider._http.post(meta["token_endpoint"], data=form, auth=auth) if auth
             else provider._http.post(meta["token_endpoint"], data=form))
    except httpx.HTTPError as exc:
        raise OidcError(f"the identity provider did not answer ({type(exc).__name__})") from None
    if r.status_code != 200:
        raise OidcError(f"the identity provider refused the login code (HTTP {r.status_code})")
    try:
        id_token = r.json()["id_token"]
    except (ValueError, KeyError, TypeError):
        raise OidcError("the identity provider's answer has no ID token") from None
    claims = _verify(provider, str(id_token), now)
    if not secrets.compare_digest(str(claims.get("nonce", "")).encode(), flow["nonce"].encode()):
        raise OidcError("the ID token was not issued for this login (nonce)")
    username = claims.get(provider.spec.username_claim)
    if not isinstance(username, str) or not username:
        raise OidcError(f"the ID token has no '{provider.spec.username_claim}' claim")
    raw_groups = claims.get(provider.spec.groups_claim, [])
    groups = [g for g in raw_groups if isinstance(g, str)] if isinstance(raw_groups, list) else []
    return Identity(username=username, subject=str(claims.get("sub", "")), groups=groups,
                    claims=claims)


def _verify(provider: Provider, id_token: str, now: datetime) -> dict[str, Any]:
    try:
        try:
            token = jwt.decode(id_token, provider.keys(), algorithms=ALGORITHMS)
        except JoseError:  # the provider may have rotated its keys since we fetched them
            token = jwt.decode(id_token, provider.keys(refresh=True), algorithms=ALGORITHMS)
    except (JoseError, ValueError) as exc:
        raise OidcError(f"the ID token's signature does not verify ({type(exc).__name__})") \
            from None
    claims = dict(token.claims)
    spec = provider.spec
    ts = now.timestamp()
    aud = claims.get("aud")
    audiences = aud if isinstance(aud, list) else [aud]
    if claims.get("iss") != spec.issuer:
        raise OidcError("the ID token was issued by another provider")
    if spec.client_id not in audiences:
        raise OidcError("the ID token was issued for another application")
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or exp + CLOCK_SKEW < ts:
        raise OidcError("the ID token has expired; log in again")
    iat = claims.get("iat")
    if isinstance(iat, int | float) and iat - CLOCK_SKEW > ts:
        raise OidcError("the ID token is dated in the future; check the clocks")
    return claims
