"""The process's current policy, swapped atomically on reload."""

from __future__ import annotations

import threading
from pathlib import Path

from accord.config import LoadedPolicy, load_policy_file
from accord.policy.engine import Policy


class PolicyStore:
    """Holds the compiled policy; readers take `current` once per unit of work."""

    def __init__(self, path: Path, policy: Policy) -> None:
        self.path = path
        self._policy = policy
        self.lock = threading.Lock()

    @classmethod
    def from_file(cls, path: Path) -> PolicyStore:
        return cls(path, Policy(load_policy_file(path)))

    @property
    def current(self) -> Policy:
        return self._policy

    def read(self) -> LoadedPolicy:
        """Read and validate the file without installing it (raises PolicyError)."""
        return load_policy_file(self.path)

    def install(self, policy: Policy) -> None:
        self._policy = policy
