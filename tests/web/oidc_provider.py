"""A small, real OpenID Connect provider for tests: discovery, JWKS, authorize, token.

It signs RS256 ID tokens with a key it generates, checks PKCE (S256) and the redirect
URI like a real provider, and logs in whoever the test names in `next_user` (there is no
password page: the browser is redirected straight back, as after a remembered login).
Knobs in `tamper` let a test make it misbehave in the ways a client must catch.
`now` (seconds since the epoch) lets a test date ID tokens by the app's clock instead of
the wall clock.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey


@dataclass
class Provider:
    client_id: str = "accord"
    client_secret: str | None = None
    next_user: str = "alice"
    groups: list[str] = field(default_factory=lambda: ["engineering"])
    tamper: dict[str, Any] = field(default_factory=dict)
    codes: dict[str, dict[str, Any]] = field(default_factory=dict)
    token_requests: list[dict[str, str]] = field(default_factory=list)
    token_auth: list[str | None] = field(default_factory=list)  # Authorization headers seen
    key: RSAKey = field(default_factory=lambda: RSAKey.generate_key(2048, parameters={
        "kid": "test-1", "use": "sig", "alg": "RS256"}))
    other_key: RSAKey = field(default_factory=lambda: RSAKey.generate_key(2048, parameters={
        "kid": "test-1", "use": "sig", "alg": "RS256"}))
    url: str = ""
    now: Callable[[], float] = time.time
    _server: ThreadingHTTPServer | None = None

    def start(self) -> Provider:
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def _json(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                q = {k: v[0] for k, v in parse_qs(parts.query).items()}
                if parts.path == "/.well-known/openid-configuration":
                    self._json(200, provider.discovery())
                elif parts.path == "/jwks":
                    self._json(200, KeySet([provider.key]).as_dict(private=False))
                elif parts.path == "/authorize":
                    status, location = provider.authorize(q)
                    self.send_response(status)
                    if location:
                        self.send_header("Location", location)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                else:
                    self._json(404, {"error": "not_found"})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                status, body = provider.token(form, self.headers.get("Authorization"))
                self._json(status, body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.tamper.get("discovery_issuer", self.url),
            "authorization_endpoint": self.url + "/authorize",
            "token_endpoint": self.url + "/token",
            "jwks_uri": self.url + "/jwks",
            "response_types_supported": ["code"],
            "code_challenge_methods_supported": ["S256"],
            "id_token_signing_alg_values_supported": ["RS256"],
        }

    def authorize(self, q: dict[str, str]) -> tuple[int, str | None]:
        if q.get("client_id") != self.client_id or q.get("response_type") != "code":
            return 400, None
        if q.get("code_challenge_method") != "S256" or not q.get("code_challenge"):
            return 400, None
        code = secrets.token_urlsafe(16)
        self.codes[code] = {**q, "user": self.next_user, "groups": list(self.groups)}
        params = {"code": code, "state": self.tamper.get("state", q.get("state", ""))}
        return 302, q["redirect_uri"] + "?" + urlencode(params)

    def token(self, form: dict[str, str], authorization: str | None) -> tuple[int, dict[str, Any]]:
        self.token_requests.append(form)
        self.token_auth.append(authorization)
        grant = self.codes.pop(form.get("code", ""), None)  # single use
        if grant is None or form.get("redirect_uri") != grant["redirect_uri"]:
            return 400, {"error": "invalid_grant"}
        verifier = form.get("code_verifier", "")
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
        if challenge.rstrip(b"=").decode() != grant["code_challenge"]:
            return 400, {"error": "invalid_grant", "error_description": "PKCE check failed"}
        if self.client_secret is not None:
            expected = "Basic " + base64.b64encode(
                f"{self.client_id}:{self.client_secret}".encode()).decode()
            if authorization != expected:
                return 401, {"error": "invalid_client"}
        now = int(self.now())
        claims = {
            "iss": self.tamper.get("iss", self.url), "sub": f"sub-{grant['user']}",
            "aud": self.tamper.get("aud", self.client_id),
            "iat": now + self.tamper.get("iat_offset", 0),
            "exp": now + self.tamper.get("lifetime", 300),
            "nonce": self.tamper.get("nonce", grant.get("nonce")),
            "preferred_username": grant["user"], "groups": grant["groups"],
        }
        key = self.other_key if self.tamper.get("wrong_key") else self.key
        id_token = jwt.encode({"alg": "RS256", "kid": "test-1"}, claims, key)
        return 200, {"access_token": secrets.token_urlsafe(16), "token_type": "Bearer",
                     "expires_in": 300, "id_token": id_token}
