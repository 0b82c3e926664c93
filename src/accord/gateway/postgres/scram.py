"""Client side of PostgreSQL password authentication: SCRAM-SHA-256 (RFC 5802/7677) and MD5.

Used by the gateway to log in upstream with a resource's credentials. No channel binding
(SCRAM-SHA-256-PLUS) and no SASLprep: passwords are used as their UTF-8 bytes, which is
what SASLprep yields for ASCII passwords.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

MECHANISM = "SCRAM-SHA-256"


class AuthError(Exception):
    """The server's side of the exchange was malformed or did not prove itself."""


def md5_password(user: str, password: str, salt: bytes) -> bytes:
    inner = hashlib.md5((password + user).encode(), usedforsecurity=False).hexdigest()
    outer = hashlib.md5(inner.encode() + salt, usedforsecurity=False).hexdigest()
    return b"md5" + outer.encode()


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


def _attributes(message: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        decoded = message.decode("ascii")
    except UnicodeDecodeError:
        raise AuthError("SCRAM message is not ASCII") from None
    for part in decoded.split(","):
        key, sep, value = part.partition("=")
        if not sep or len(key) != 1:
            raise AuthError("malformed SCRAM message")
        out[key] = value
    return out


class ScramClient:
    """One SCRAM-SHA-256 exchange: first → (server first) → final → (server final) → verify."""

    def __init__(self, password: str, *, user: str = "", nonce: str | None = None) -> None:
        self.password = password.encode()
        self.nonce = nonce or base64.b64encode(secrets.token_bytes(18)).decode()
        self.first_bare = f"n={user},r={self.nonce}".encode()
        self._server_signature = b""

    def first(self) -> bytes:
        return b"n,," + self.first_bare

    def final(self, server_first: bytes) -> bytes:
        attrs = _attributes(server_first)
        nonce, salt_b64, iterations = attrs.get("r", ""), attrs.get("s", ""), attrs.get("i", "")
        if not nonce.startswith(self.nonce) or len(nonce) <= len(self.nonce):
            raise AuthError("SCRAM server nonce does not extend ours")
        if not (iterations.isascii() and iterations.isdigit()) \
                or not 1 <= int(iterations) <= 10_000_000:
            raise AuthError("SCRAM iteration count is invalid")
        try:
            salt = base64.b64decode(salt_b64, validate=True)
        except ValueError:
            raise AuthError("SCRAM salt is not base64") from None
        salted = hashlib.pbkdf2_hmac("sha256", self.password, salt, int(iterations))
        client_key = _hmac(salted, b"Client Key")
        stored_key = hashlib.sha256(client_key).digest()
        without_proof = b"c=biws,r=" + nonce.encode()
        auth_message = self.first_bare + b"," + server_first + b"," + without_proof
        signature = _hmac(stored_key, auth_message)
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        self._server_signature = _hmac(_hmac(salted, b"Server Key"), auth_message)
        return without_proof + b",p=" + base64.b64encode(proof)

    def verify(self, server_final: bytes) -> None:
        attrs = _attributes(server_final)
        if "e" in attrs:
            raise AuthError(f"SCRAM error from the server: {attrs['e']}")
        try:
            received = base64.b64decode(attrs.get("v", ""), validate=True)
        except ValueError:
            raise AuthError("SCRAM server signature is not base64") from None
        if not self._server_signature or not hmac.compare_digest(received,
                                                                  self._server_signature):
            raise AuthError("the server did not prove it knows the password")
