"""Passwords over the MySQL protocol, both ways.

Clients to the gateway: `caching_sha2_password`, always with *full authentication*. The
gateway keeps only the sha256 of a connection token (`tokens.hash_token`), so it cannot check
a scramble, which needs the password itself; it asks every client for the token itself
instead (AuthMoreData `perform_full_authentication`, as MySQL does when its cache is cold).
Over TLS the client sends it inside the TLS session. Without TLS the client asks for the
gateway's RSA public key and sends the token encrypted with it (RSA-OAEP, XORed with the
handshake's salt, as MySQL's server expects): the token never crosses the network in clear,
whatever the client. The key pair is made when the gateway process starts and never
leaves it. A client that offers `mysql_clear_password` (configured to: it sends the token
as it is) is taken at its word only over TLS.

Upstream, the gateway answers whatever the server asks of its own login:
`mysql_native_password` (MariaDB's default), `caching_sha2_password` (MySQL 8's; fast
authentication, else full authentication over TLS or with the server's RSA key), or
`mysql_clear_password` over TLS only.
"""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

PERFORM_FULL_AUTH = b"\x01\x04"  # AuthMoreData: send the password itself
FAST_AUTH_OK = 3
FULL_AUTH = 4
REQUEST_PUBLIC_KEY = b"\x02"
# RSA-OAEP with SHA-1, the padding MySQL's caching_sha2_password fixes (OAEP's use of SHA-1
# is not the collision-prone one).
_OAEP = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA1()),  # noqa: S303
                     algorithm=hashes.SHA1(), label=None)  # noqa: S303


def native_scramble(password: bytes, salt: bytes) -> bytes:
    """mysql_native_password: SHA1(password) XOR SHA1(salt + SHA1(SHA1(password)))."""
    if not password:
        return b""
    h1 = hashlib.sha1(password, usedforsecurity=False).digest()
    h2 = hashlib.sha1(h1, usedforsecurity=False).digest()
    h3 = hashlib.sha1(salt[:20] + h2, usedforsecurity=False).digest()
    return bytes(a ^ b for a, b in zip(h1, h3, strict=True))


def sha2_scramble(password: bytes, salt: bytes) -> bytes:
    """caching_sha2_password: SHA256(password) XOR SHA256(SHA256(SHA256(password)) + salt)."""
    if not password:
        return b""
    h1 = hashlib.sha256(password).digest()
    h2 = hashlib.sha256(hashlib.sha256(h1).digest() + salt[:20]).digest()
    return bytes(a ^ b for a, b in zip(h1, h2, strict=True))


def _xor_salt(data: bytes, salt: bytes) -> bytes:
    salt = salt[:20] or b"\0"
    return bytes(b ^ salt[i % len(salt)] for i, b in enumerate(data))


def rsa_encrypt(password: bytes, salt: bytes, pem: bytes) -> bytes:
    """The password as caching_sha2_password sends it over plain TCP: NUL-terminated,
    XORed with the salt, RSA-OAEP-encrypted with the server's public key."""
    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("the server's public key is not an RSA key")
    return key.encrypt(_xor_salt(password + b"\0", salt), _OAEP)


class KeyPair:
    """The gateway process's RSA key for clients without TLS (made once per process)."""

    def __init__(self) -> None:
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.size = self._key.key_size // 8
        self.public_pem = self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def decrypt(self, data: bytes, salt: bytes) -> bytes:
        """The password a client encrypted (ValueError when it does not decrypt)."""
        plain = _xor_salt(self._key.decrypt(data, _OAEP), salt)
        return plain[:-1] if plain.endswith(b"\0") else plain
