"""The one-time secrets of grants, encrypted at rest until the grantee reveals them once."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken


class SecretBox:
    """Fernet (AES-128-CBC + HMAC-SHA256) with a key kept in the data directory (mode 0600)."""

    def __init__(self, key: bytes) -> None:
        self._fernet = Fernet(key)
        self._key = key

    def derive(self, purpose: str) -> str:
        """A secret for `purpose` (e.g. a login's password): the same in every process that
        shares this key, and unrelated to any other purpose's (HMAC-SHA256 as a PRF)."""
        mac = hmac.new(self._key, b"accord derive\0" + purpose.encode(), hashlib.sha256)
        return base64.urlsafe_b64encode(mac.digest()).decode().rstrip("=")

    @classmethod
    def load_or_create(cls, path: Path) -> SecretBox:
        if path.exists():
            return cls(path.read_bytes().strip())
        path.parent.mkdir(parents=True, exist_ok=True)
        key = Fernet.generate_key()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key + b"\n")
        return cls(key)

    def seal(self, secret: str) -> bytes:
        return self._fernet.encrypt(secret.encode())

    def open(self, box: bytes, *, ttl: int | None = None) -> str:
        """Decrypt; with `ttl`, also refuse a box sealed more than `ttl` seconds ago."""
        try:
            return self._fernet.decrypt(box, ttl=ttl).decode()
        except InvalidToken:
            raise ValueError("the stored secret cannot be decrypted with this key") from None

    def __repr__(self) -> str:
        return "SecretBox(<key hidden>)"
