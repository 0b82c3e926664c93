"""The process's current policy, swapped atomically on reload."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from accord.people import snapshot
from accord.people.snapshot import Directory
from accord.policy.engine import Policy
from accord.policy.models import PolicyState, PolicyVersion
from accord.spec.load import LoadedPolicy, PolicyError, load_policy_file, parse_policy_text
from accord.spec.policytests import StatementJudge


class PolicyStore:
    """Holds the compiled policy; readers take `current` once per unit of work."""

    def __init__(self, path: Path, policy: Policy) -> None:
        self.path = path
        self._policy = policy
        self.lock = threading.Lock()
        self._checked = 0.0
        # How the policy's statement test cases are decided (the gateway's SQL parser, set
        # by the entry point: this layer does not know it); None: they fail saying so.
        self.statements: StatementJudge | None = None

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

    def directory(self, session: Session) -> Directory:
        """The directory as `session` sees it: the current snapshot caught up with the
        changes committed since (the first call in a process loads it whole)."""
        if not self._policy.directory.loaded:
            return snapshot.load(session)
        return snapshot.refresh(session, self._policy.directory)

    def fresh_install(self, policy: Policy) -> None:
        """Install `policy` (the current one over a directory this process just committed)
        unless a reload replaced the policy meanwhile or a newer directory is in."""
        with self.lock:
            current = self._policy
            if current.version == policy.version \
                    and current.directory.seq <= policy.directory.seq:
                self._policy = policy

    def fresh(self, session: Session) -> Policy:
        """The current policy over the directory as `session` sees it (a decision that must
        not act on a membership the provider just removed), installed if it moved on."""
        directory = self.directory(session)
        policy = self._policy
        if directory is policy.directory:
            return policy
        updated = policy.with_directory(directory)
        with self.lock:
            if self._policy is policy:
                self._policy = updated
        return updated

    def due(self, every: float = 1.0) -> bool:
        return time.monotonic() - self._checked >= every

    def follow(self, session: Session) -> bool:
        """Adopt the version another process announced (server workers, replicas, worker).

        The database's `policy_state` says which version is in force, `directory_changes` what
        the identity provider changed; either reaches every process within a second. Returns
        True if the policy changed.
        """
        self._checked = time.monotonic()
        version = session.execute(
            select(PolicyState.version).where(PolicyState.id == 1)
        ).scalar_one_or_none()
        if version is None or version == self._policy.version:
            before = self._policy
            return self.fresh(session) is not before  # the directory moved on
        with self.lock:
            if version == self._policy.version:
                return False
            try:
                loaded = self.read()
            except PolicyError:
                loaded = None
            if loaded is None or loaded.version != version:
                row = session.get(PolicyVersion, version)
                if row is None:
                    return False
                loaded = parse_policy_text(row.text, row.source)
            self._policy = Policy(loaded, self.directory(session))
            return True
