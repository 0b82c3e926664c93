"""Who is acting, and through which channel (`via`): what every command records."""

from __future__ import annotations

from dataclasses import dataclass

from accord.ledger.events import Actor


@dataclass(frozen=True)
class Caller:
    """Who is acting and through which channel."""

    user: str
    via: str

    @property
    def actor(self) -> Actor:
        return Actor.user(self.user, self.via)
