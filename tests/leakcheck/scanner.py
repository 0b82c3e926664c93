"""Find any of many recorded secrets in a lot of text, cheaply.

Every secret at least `2*K - 1` characters long (tokens, cookies, derived and provisioned
passwords: 32 to 50) is indexed by each of its first `K` K-grams; a text is probed only at
every K-th position: an occurrence of a secret starting at p covers a position j that is a
multiple of K in [p, p+K), and the K-gram at j is one of the secret's first K. So the cost is
len(text)/K dictionary probes whatever the number of secrets. Shorter secrets (>= MIN_LEN)
are looked for one by one; shorter still are not recorded (they would match ordinary words).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

K = 8
MIN_LEN = 8


@dataclass(frozen=True)
class Recorded:
    kind: str    # what the secret is: "API token", "password in a database URL", ...
    origin: str  # the test (node id) or process that created it


def fingerprint(secret: str) -> str:
    """A short name for a secret that says nothing about it (to match reports up)."""
    return hashlib.sha256(secret.encode()).hexdigest()[:10]


class Scanner:
    def __init__(self) -> None:
        self.secrets: dict[str, Recorded] = {}
        self._grams: dict[str, list[tuple[str, int]]] = {}
        self._short: list[str] = []

    def __len__(self) -> int:
        return len(self.secrets)

    def add(self, secret: str, kind: str, origin: str) -> bool:
        """Remember `secret`; False when it is too short to look for or already known."""
        if len(secret) < MIN_LEN or secret in self.secrets:
            return False
        self.secrets[secret] = Recorded(kind, origin)
        if len(secret) >= 2 * K - 1:
            for offset in range(K):
                self._grams.setdefault(secret[offset:offset + K], []).append((secret, offset))
        else:
            self._short.append(secret)
        return True

    def find(self, text: str) -> list[str]:
        """The recorded secrets that occur in `text` (each once)."""
        found: dict[str, None] = {}
        grams = self._grams
        if grams:
            for j in range(0, len(text) - K + 1, K):
                hits = grams.get(text[j:j + K])
                if hits is None:
                    continue
                for secret, offset in hits:
                    p = j - offset
                    if p >= 0 and text.startswith(secret, p):
                        found[secret] = None
        for secret in self._short:
            if secret in text:
                found[secret] = None
        return list(found)
