"""A running Accord's state: settings, database sessions, the policy, the ledger's signing
configuration, the secrets box, the token cache and the provisioning connectors.

Built once per process by `bootstrap.build_state` and handed to the API, the web pages, the
background jobs, the gateway and reports. It sits below the gateway and reports (which need
it) and above the domains it holds together.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from accord.identity.service import TokenCache
from accord.ledger.checkpoints import LedgerConfig
from accord.policy.store import PolicyStore
from accord.provisioning.registry import Connectors
from accord.provisioning.secrets import SecretBox
from accord.settings import Settings


@dataclass
class AppState:
    settings: Settings
    sessions: sessionmaker[Session]
    policies: PolicyStore
    now: Callable[[], datetime]
    ledger: LedgerConfig
    secrets: SecretBox
    tokens: TokenCache = field(default_factory=TokenCache)
    _connectors: Connectors | None = None

    def connectors(self) -> Connectors:
        """Connectors for the current policy (rebuilt when a reload changed the resources)."""
        resources = self.policies.current.resources
        if self._connectors is None or self._connectors.resources is not resources:
            old = self._connectors
            self._connectors = Connectors(resources)
            if old is not None:
                old.close()
        return self._connectors
